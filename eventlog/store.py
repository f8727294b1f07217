"""The event store: append with expected versions and idempotency, read a stream, read all in order.

Guarantees (DESIGN §2) live in the schema and in `tunelog_append` (migrations/versions/0001):
UNIQUE (stream_id, stream_version), an EXCLUSIVE table lock per append so positions become
visible in order, and the command record written in the same transaction as the events.
"""
from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple

import psycopg
from psycopg.rows import tuple_row
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool, PoolTimeout

from domain.errors import ConcurrencyConflict, IdempotencyMismatch
from domain.events import UPCASTERS, upcast
from eventlog.db import DatabaseUnavailable

CHANNEL = "tunelog_events"


@dataclass(frozen=True)
class NewEvent:
    type: str
    data: dict[str, Any]
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Append:
    """Events for one stream; `expected_version` None means "any" (no concurrency check)."""

    stream_id: str
    expected_version: int | None
    events: Sequence[NewEvent]


@dataclass(frozen=True)
class Command:
    """An idempotent command: its id (scoped to the caller), request fingerprint and response."""

    command_id: str
    request_hash: str
    response: dict[str, Any]


@dataclass(frozen=True)
class AppendResult:
    positions: list[int]
    duplicate: bool = False
    response: dict[str, Any] | None = None


class RecordedEvent(NamedTuple):
    """An event as stored. A named tuple (immutable, and built several times faster than a frozen dataclass:
    a replay builds a million of them)."""

    global_position: int
    stream_id: str
    stream_version: int
    type: str
    data: dict[str, Any]
    metadata: dict[str, Any]
    recorded_at: datetime | None  # None where read for projections (read_all without metadata)


_COLUMNS = "global_position, stream_id, stream_version, type, data, metadata, recorded_at"


def _row(r: dict[str, Any]) -> RecordedEvent:
    type_, data = upcast(r["type"], r["data"])
    return RecordedEvent(r["global_position"], r["stream_id"], r["stream_version"], type_, data,
                         r["metadata"], r["recorded_at"])


def _rows(conn: psycopg.Connection, query: str, params: tuple) -> list[RecordedEvent]:
    """Events from rows of `_COLUMNS`, read as tuples (a replay reads millions: no dict per row)."""
    with conn.cursor(row_factory=tuple_row) as cur:
        rows = cur.execute(query, params).fetchall()
    out = []
    append, make, old = out.append, RecordedEvent, UPCASTERS
    for position, stream_id, version, type_, data, metadata, recorded_at in rows:
        if type_ in old:
            type_, data = upcast(type_, data)
        append(make(position, stream_id, version, type_, data, {} if metadata is None else metadata, recorded_at))
    return out


def _translate(e: psycopg.Error) -> Exception:
    if e.sqlstate == "TL409":
        detail = json.loads(e.diag.message_detail or "{}")
        return ConcurrencyConflict(detail.get("stream", "?"), detail.get("expected"), detail.get("actual"))
    if e.sqlstate == "TL422":
        return IdempotencyMismatch(e.diag.message_primary or "Idempotency-Key reused")
    if isinstance(e, psycopg.OperationalError):
        return DatabaseUnavailable(str(e))
    return e


class EventStore:
    def __init__(self, pool: ConnectionPool):
        self.pool = pool

    @contextmanager
    def _connection(self) -> Iterator[psycopg.Connection]:
        """A pooled connection; an unreachable server becomes DatabaseUnavailable (callers back off)."""
        try:
            with self.pool.connection() as c:
                yield c
        except psycopg.OperationalError as e:
            raise DatabaseUnavailable(str(e)) from e
        except PoolTimeout as e:
            raise DatabaseUnavailable(str(e)) from e

    # ---- writing -------------------------------------------------------------------------------
    def append(self, stream_id: str, expected_version: int | None, events: Sequence[NewEvent],
               command: Command | None = None, conn: psycopg.Connection | None = None) -> AppendResult:
        return self.append_many([Append(stream_id, expected_version, events)], command, conn)

    def append_many(self, appends: Sequence[Append], command: Command | None = None,
                    conn: psycopg.Connection | None = None) -> AppendResult:
        """Append to one or more streams atomically; raises ConcurrencyConflict on a version mismatch."""
        batch = [
            {"stream": a.stream_id, "expected": a.expected_version,
             "events": [{"type": e.type, "data": e.data, "metadata": e.metadata} for e in a.events]}
            for a in appends
        ]
        args = (Jsonb(batch), command.command_id if command else None,
                command.request_hash if command else None, Jsonb(command.response) if command else None)
        try:
            if conn is not None:
                row = conn.execute("SELECT tunelog_append(%s, %s, %s, %s) AS r", args).fetchone()
            else:
                with self._connection() as c:
                    row = c.execute("SELECT tunelog_append(%s, %s, %s, %s) AS r", args).fetchone()
        except psycopg.Error as e:
            raise _translate(e) from e
        r = row["r"] if isinstance(row, dict) else row[0]
        return AppendResult(positions=list(r.get("positions") or []), duplicate=bool(r["duplicate"]),
                            response=r.get("response"))

    def lookup_command(self, command_id: str) -> dict[str, Any] | None:
        with self._connection() as c:
            row = c.execute("SELECT request_hash, response FROM commands WHERE command_id = %s",
                            (command_id,)).fetchone()
        return row

    # ---- reading -------------------------------------------------------------------------------
    def read_stream(self, stream_id: str, after_version: int = 0) -> list[RecordedEvent]:
        with self._connection() as c:
            rows = c.execute(
                f"SELECT {_COLUMNS} FROM events WHERE stream_id = %s AND stream_version > %s "
                "ORDER BY stream_version", (stream_id, after_version)).fetchall()
        return [_row(r) for r in rows]

    def stream_version(self, stream_id: str) -> int:
        with self._connection() as c:
            row = c.execute("SELECT coalesce(max(stream_version), 0) AS v FROM events WHERE stream_id = %s",
                            (stream_id,)).fetchone()
        return int(row["v"])

    def read_all(self, after: int = 0, limit: int = 1000, conn: psycopg.Connection | None = None,
                 with_metadata: bool = True, max_bytes: int | None = None) -> list[RecordedEvent]:
        """Events after a position, in order. Projections skip metadata and the time of recording (neither is
        ever projected, and decoding a timestamp costs a replay more than reading the row does): without
        `with_metadata` events carry `{}` and None for them.
        `max_bytes` bounds a batch by the stored size of its data too (at least one event is returned):
        a run of large events (embedded chunks) must not make a reader hold a gigabyte at once."""
        columns = _COLUMNS if with_metadata else _COLUMNS.replace(
            "metadata, recorded_at", "NULL::jsonb AS metadata, NULL::timestamptz AS recorded_at")
        if max_bytes is None:
            sql = f"SELECT {columns} FROM events WHERE global_position > %s ORDER BY global_position LIMIT %s"
            params: tuple = (after, limit)
        else:
            sql = (f"WITH sized AS (SELECT global_position, sum(pg_column_size(data)) OVER (ORDER BY global_position) "
                   f"AS upto FROM events WHERE global_position > %s ORDER BY global_position LIMIT %s) "
                   f"SELECT {columns} FROM events WHERE global_position > %s AND global_position <= "
                   f"coalesce((SELECT max(global_position) FROM sized WHERE upto <= %s), "
                   f"(SELECT min(global_position) FROM sized)) ORDER BY global_position")
            params = (after, limit, after, max_bytes)
        if conn is not None:
            return _rows(conn, sql, params)
        with self._connection() as c:
            return _rows(c, sql, params)

    def iter_all(self, after: int = 0, batch: int = 5000) -> Iterator[RecordedEvent]:
        pos = after
        while True:
            chunk = self.read_all(pos, batch)
            if not chunk:
                return
            yield from chunk
            pos = chunk[-1].global_position

    def head(self) -> int:
        with self._connection() as c:
            row = c.execute("SELECT coalesce(max(global_position), 0) AS p FROM events").fetchone()
        return int(row["p"])
