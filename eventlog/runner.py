"""The projector: applies new events to every read model, checkpoint and rows in one transaction.

`catch_up` may run in several processes at once (the projector, and API requests that want to read
their own writes): the checkpoint rows are locked FOR UPDATE, so each event is applied exactly once.
Run as `python -m eventlog.runner`: LISTEN/NOTIFY wake-ups, with polling as the fallback.
"""
from __future__ import annotations

import logging
import signal
import threading
import time

import psycopg
from psycopg_pool import ConnectionPool

from eventlog.projections import all_projections
from eventlog.store import CHANNEL, EventStore

log = logging.getLogger("tunelog.projector")


def _ensure_checkpoints(conn: psycopg.Connection, names: list[str]) -> None:
    with conn.cursor() as cur:
        cur.executemany("INSERT INTO projection_checkpoints (name, position) VALUES (%s, 0) "
                        "ON CONFLICT (name) DO NOTHING", [(n,) for n in names])


def _apply_batch(conn: psycopg.Connection, store: EventStore, projections: list, batch: int) -> int:
    """Inside a transaction: lock checkpoints, apply the next batch. Returns events read."""
    names = sorted(p.name for p in projections)
    rows = conn.execute("SELECT name, position FROM projection_checkpoints WHERE name = ANY(%s) "
                        "ORDER BY name FOR UPDATE", (names,)).fetchall()
    positions = {r["name"]: r["position"] for r in rows}
    low = min(positions.values()) if positions else 0
    events = store.read_all(low, batch, conn=conn, with_metadata=False)
    if not events:
        return 0
    last = events[-1].global_position
    for p in projections:
        mine = [e for e in events if e.global_position > positions[p.name]]
        if mine:
            p.apply(conn, mine)
    with conn.cursor() as cur:
        cur.executemany("UPDATE projection_checkpoints SET position = %s WHERE name = %s",
                        [(last, n) for n in names if positions[n] < last])
    return len(events)


def catch_up(pool: ConnectionPool, batch: int = 2000, projections: list | None = None) -> int:
    """Apply everything appended so far; returns how many events were applied."""
    projections = projections or all_projections()
    store = EventStore(pool)
    total = 0
    with pool.connection() as conn:
        _ensure_checkpoints(conn, [p.name for p in projections])
        while True:
            with conn.transaction():
                n = _apply_batch(conn, store, projections, batch)
            total += n
            if n < batch:
                return total


def replay(pool: ConnectionPool, batch: int = 10000) -> dict:
    """Drop every read model and rebuild it from position 0, in one transaction (readers see the old
    tables until it commits, then the new ones; never a half-built state)."""
    projections = all_projections()
    store = EventStore(pool)
    started = time.perf_counter()
    n = 0
    with pool.connection() as conn:
        _ensure_checkpoints(conn, [p.name for p in projections])
        with conn.transaction():
            conn.execute("SELECT name FROM projection_checkpoints ORDER BY name FOR UPDATE")
            tables = [t for p in projections for t in p.tables]
            conn.execute(f"TRUNCATE {', '.join(tables)}")
            conn.execute("UPDATE projection_checkpoints SET position = 0")
            while True:
                got = _apply_batch(conn, store, projections, batch)
                n += got
                if got < batch:
                    break
    took = time.perf_counter() - started
    return {"events": n, "seconds": round(took, 3), "events_per_second": round(n / took) if took else None}


def run_forever(database_url: str, stop: threading.Event | None = None, poll_seconds: float = 1.0) -> None:
    from eventlog.db import connect
    from eventlog.db import pool as get_pool

    stop = stop or threading.Event()
    p = get_pool(database_url, max_size=2)
    listener = None
    while not stop.is_set():
        try:
            if listener is None:
                listener = connect(database_url)
                listener.execute(f"LISTEN {CHANNEL}")
            catch_up(p)
            # wake on NOTIFY, or after poll_seconds anyway (a missed notification is never fatal)
            for _ in listener.notifies(timeout=poll_seconds, stop_after=1):
                pass
        except psycopg.OperationalError as e:
            log.warning("database unavailable (%s); retrying", e)
            if listener is not None:
                listener.close()
            listener = None
            stop.wait(1.0)
        except Exception:  # keep projecting; the failing batch is retried (its transaction rolled back)
            log.exception("projection batch failed; retrying")
            stop.wait(1.0)


def main() -> None:
    from eventlog import settings

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    s = settings.load()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    log.info("projector started")
    run_forever(s.database_url, stop)
    log.info("projector stopped")


if __name__ == "__main__":
    main()
