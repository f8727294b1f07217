"""Connections: one psycopg pool per process, created on first use (never at import, never before fork)."""
from __future__ import annotations

import os
import select
import threading

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from eventlog.settings import psycopg_url


class DatabaseUnavailable(Exception):
    """Postgres cannot be reached; the API answers 503."""


_pools: dict[tuple[int, str], ConnectionPool] = {}
_lock = threading.Lock()
_json_configured = False


def _configure_json() -> None:
    """jsonb in and out through orjson: several times faster than the stdlib on replay-sized reads."""
    global _json_configured
    if not _json_configured:
        import orjson
        from psycopg.types.json import set_json_dumps, set_json_loads

        set_json_loads(orjson.loads)
        set_json_dumps(lambda obj: orjson.dumps(obj).decode())
        _json_configured = True


def pool(url: str, max_size: int = 10) -> ConnectionPool:
    """The process's pool for `url` (a forked child gets a fresh one: sockets must not be shared)."""
    key = (os.getpid(), url)
    with _lock:
        _configure_json()
        p = _pools.get(key)
        if p is None or p.closed:  # closed by its owner: a new one, not an error on every later use
            p = ConnectionPool(
                psycopg_url(url), min_size=1, max_size=max_size, open=True, timeout=5,
                kwargs={"row_factory": dict_row, "autocommit": True}, configure=_configure_connection,
                check=_check_idle, reconnect_timeout=24 * 3600,
            )
            _pools[key] = p
        return p


def _check_idle(conn: psycopg.Connection) -> None:
    """Checked at every checkout without a round trip: an idle connection whose socket is readable has
    been closed by the server (a restart, an idle timeout) or holds a notice; only then ask the server.
    A dead connection raises here and the pool hands out another (so the first request after a Postgres
    restart succeeds instead of failing on a stale connection)."""
    if conn.closed or conn.broken:
        raise psycopg.OperationalError("connection closed")
    fd = conn.pgconn.socket
    poller = select.poll()
    poller.register(fd, select.POLLIN | select.POLLERR | select.POLLHUP)
    if poller.poll(0):
        conn.execute("SELECT 1")



def _configure_connection(conn: psycopg.Connection) -> None:
    """pgvector's type adapters, once per connection (not a catalog lookup per query)."""
    from pgvector.psycopg import register_vector

    try:
        register_vector(conn)
    except psycopg.ProgrammingError:  # the extension is not there yet (before the first migration)
        pass


def connect(url: str, autocommit: bool = True) -> psycopg.Connection:
    with _lock:
        _configure_json()
    return psycopg.connect(psycopg_url(url), autocommit=autocommit, row_factory=dict_row)


def close_all() -> None:
    with _lock:
        for key, p in list(_pools.items()):
            if key[0] == os.getpid():
                p.close()
            _pools.pop(key, None)
