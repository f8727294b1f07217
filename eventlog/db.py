"""Connections: one psycopg pool per process, created on first use (never at import, never before fork)."""
from __future__ import annotations

import os
import threading

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from eventlog.settings import psycopg_url


class DatabaseUnavailable(Exception):
    """Postgres cannot be reached; the API answers 503."""


_pools: dict[tuple[int, str], ConnectionPool] = {}
_lock = threading.Lock()


def pool(url: str, max_size: int = 10) -> ConnectionPool:
    """The process's pool for `url` (a forked child gets a fresh one: sockets must not be shared)."""
    key = (os.getpid(), url)
    with _lock:
        p = _pools.get(key)
        if p is None:
            p = ConnectionPool(
                psycopg_url(url), min_size=1, max_size=max_size, open=True, timeout=10,
                kwargs={"row_factory": dict_row, "autocommit": True},
                check=ConnectionPool.check_connection,
            )
            _pools[key] = p
        return p


def connect(url: str, autocommit: bool = True) -> psycopg.Connection:
    return psycopg.connect(psycopg_url(url), autocommit=autocommit, row_factory=dict_row)


def close_all() -> None:
    with _lock:
        for key, p in list(_pools.items()):
            if key[0] == os.getpid():
                p.close()
            _pools.pop(key, None)
