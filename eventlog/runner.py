"""The projector: applies new events to every read model, each projection's rows and checkpoint in one
transaction, each projection isolated from the others.

- One batch of events is read once per round; each projection applies it inside a SAVEPOINT of its own,
  so one projection's failure rolls back only its own work.
- A handler that fails on an event is retried (`MAX_ATTEMPTS` in all, each failure recorded in
  `projection_failures`); then the event is parked (dead letter: `parked = true`, counted in /metrics,
  listed for operators at /api/admin/dead-letters) and that projection moves on. Events before the
  poison one are applied; the other projections never wait on it.
- `catch_up` may run in several processes at once (the projector, and API requests that read their own
  writes): the checkpoint rows are locked FOR UPDATE, so each event is applied exactly once.
- `rebuild` (replay) builds every read model aside in a schema of its own from position 0 while reads go
  on, compares it with the live tables, and swaps it in atomically; `verify` only compares.
Run as `python -m eventlog.runner`: LISTEN/NOTIFY wake-ups, with polling as the fallback.
"""
from __future__ import annotations

import logging
import signal
import threading
import time
import uuid
from contextlib import contextmanager, nullcontext
from itertools import chain

import psycopg
from psycopg import sql
from psycopg_pool import ConnectionPool

from eventlog.projections import all_projections
from eventlog.store import CHANNEL, EventStore, RecordedEvent

log = logging.getLogger("tunelog.projector")
MAX_ATTEMPTS = 3
BATCH_BYTES = 32 * 1024 * 1024  # a batch is at most this much stored event data (and at most `batch` events)
# Bookkeeping tables rebuilt (and swapped) together with the read models.
BOOKKEEPING = ("projection_checkpoints", "projection_failures")


def _ensure_checkpoints(conn: psycopg.Connection, names: list[str]) -> None:
    with conn.cursor() as cur:
        cur.executemany("INSERT INTO projection_checkpoints (name, position) VALUES (%s, 0) "
                        "ON CONFLICT (name) DO NOTHING", [(n,) for n in names])


def _park_or_count(conn: psycopg.Connection, name: str, e: RecordedEvent, error: BaseException) -> bool:
    """Record a failed attempt at applying `e`; True when the event is now parked (skip it)."""
    message = f"{type(error).__name__}: {error}"[:2000]
    row = conn.execute(
        "INSERT INTO projection_failures (name, global_position, stream_id, type, attempts, error) "
        "VALUES (%s, %s, %s, %s, 1, %s) ON CONFLICT (name, global_position) DO UPDATE "
        "SET attempts = projection_failures.attempts + 1, error = EXCLUDED.error, last_failed_at = now() "
        "RETURNING attempts", (name, e.global_position, e.stream_id, e.type, message)).fetchone()
    attempts = row["attempts"] if isinstance(row, dict) else row[0]
    parked = attempts >= MAX_ATTEMPTS
    if parked:
        conn.execute("UPDATE projection_failures SET parked = true WHERE name = %s AND global_position = %s",
                     (name, e.global_position))
        log.error("projection %s: parked event %s (%s on %s) after %s attempts: %s", name, e.global_position,
                  e.type, e.stream_id, attempts, message)
    else:
        log.warning("projection %s: event %s (%s) failed (attempt %s of %s): %s", name, e.global_position,
                    e.type, attempts, MAX_ATTEMPTS, message)
    return parked


def _apply_one_projection(conn: psycopg.Connection, p, events: list[RecordedEvent]) -> None:
    """Apply `events` to projection `p` inside savepoints; afterwards every one of them is applied or parked.

    Fast path: the whole batch in one savepoint. If that fails, the events go one by one to find the
    poison one: those before it are applied, it is retried up to MAX_ATTEMPTS times (each failure
    recorded), then parked and skipped; the projection goes on with the events after it."""
    try:
        with conn.transaction():
            p.apply(conn, events)
        return
    except psycopg.OperationalError:
        raise  # the connection is gone: nothing to isolate, the caller retries the round
    except Exception:  # noqa: BLE001 - isolate it below, event by event
        pass
    for e in events:
        for _attempt in range(MAX_ATTEMPTS):
            try:
                with conn.transaction():
                    p.apply(conn, [e])
                break
            except psycopg.OperationalError:
                raise
            except Exception as error:  # noqa: BLE001 - a handler bug or a bad event: count, then park
                with conn.transaction():
                    parked = _park_or_count(conn, p.name, e, error)
                if parked:
                    break


class _Router:
    """A batch's events for each projection: those of the types it declares (`types`; all of them when it
    declares none), in log order, after its checkpoint. The batch is grouped by type once, so a projection of
    a few rare types does not walk a million events."""

    def __init__(self, events: list[RecordedEvent]):
        self.events = events
        self.by_type: dict[str, list[RecordedEvent]] = {}
        for e in events:
            self.by_type.setdefault(e.type, []).append(e)

    def select(self, types: frozenset[str] | None, after: int) -> list[RecordedEvent]:
        if types is None:
            chosen = self.events
        else:
            runs = [self.by_type[t] for t in types if t in self.by_type]
            if not runs:
                return []
            chosen = runs[0] if len(runs) == 1 else sorted(chain.from_iterable(runs), key=_position)
        if chosen and chosen[0].global_position <= after:
            chosen = [e for e in chosen if e.global_position > after]
        return chosen


def _position(e: RecordedEvent) -> int:
    return e.global_position


def _apply_batch(conn: psycopg.Connection, store: EventStore, projections: list, batch: int,
                 until: int | None = None) -> int:
    """Inside a transaction: lock checkpoints, apply the next batch. Returns events read."""
    names = sorted(p.name for p in projections)
    rows = conn.execute("SELECT name, position FROM projection_checkpoints WHERE name = ANY(%s) "
                        "ORDER BY name FOR UPDATE", (names,)).fetchall()
    positions = {r["name"]: r["position"] for r in rows}
    for n in names:
        positions.setdefault(n, 0)
    low = min(positions.values()) if positions else 0
    if until is not None and low >= until:
        return 0
    events = store.read_all(low, batch, conn=conn, with_metadata=False, max_bytes=BATCH_BYTES)
    if until is not None:
        events = [e for e in events if e.global_position <= until]
    if not events:
        return 0
    last = events[-1].global_position
    moved = []
    routed = _Router(events)
    for p in sorted(projections, key=lambda p: p.name):
        if positions[p.name] >= last:
            continue
        mine = routed.select(getattr(p, "types", None), positions[p.name])
        if mine:
            _apply_one_projection(conn, p, mine)  # every event ends applied or parked
        moved.append((last, p.name))  # past this batch, even when none of it was of the projection's types
    if moved:
        with conn.cursor() as cur:
            cur.executemany("UPDATE projection_checkpoints SET position = %s WHERE name = %s", moved)
    return len(events)


def catch_up(pool: ConnectionPool, batch: int = 2000, projections: list | None = None) -> int:
    """Apply everything appended so far; returns how many events were read."""
    projections = projections or all_projections()
    store = EventStore(pool)
    total = 0
    with pool.connection() as conn:
        _ensure_checkpoints(conn, [p.name for p in projections])
        while True:
            with conn.transaction():
                n = _apply_batch(conn, store, projections, batch)
            total += n
            if n == 0:
                return total


# ---- blue/green rebuild -----------------------------------------------------------------------------------
def _read_model_tables(projections: list) -> list[str]:
    return [t for p in projections for t in p.tables] + list(BOOKKEEPING)


@contextmanager
def _search_path(conn: psycopg.Connection, schema: str):
    conn.execute(sql.SQL("SET search_path TO {}, public").format(sql.Identifier(schema)))
    try:
        yield
    finally:
        conn.execute("SET search_path TO public")


def _index_defs(conn: psycopg.Connection, schema: str, table: str) -> dict[str, str]:
    """index name -> its definition with the index name and schema taken out (to match copies)."""
    rows = conn.execute("SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = %s AND tablename = %s",
                        (schema, table)).fetchall()
    out = {}
    for r in rows:
        d = r["indexdef"].replace(f'INDEX {r["indexname"]} ON', "INDEX ON", 1)
        d = d.replace(f"ON {schema}.", "ON ", 1).replace(f'ON "{schema}".', "ON ", 1)
        out[r["indexname"]] = d
    return out


def _build_aside(conn: psycopg.Connection, pool: ConnectionPool, projections: list, batch: int,
                 progress=None) -> tuple[str, int]:
    """Create a schema with empty copies of every read model and fill it from position 0 (in many short
    transactions: readers of the live tables never wait). Returns (schema, events applied).

    As for any bulk load: the copies get their unique indexes (ON CONFLICT needs them) and the indexes a
    projection looks rows up by (`build_indexes`) at once, the others (listing orders, the HNSW vector index)
    after the fill, built once from sorted data rather than updated row by row; commits do not wait for
    the disk (a crash mid-rebuild loses only the aside copy, which is dropped anyway). (Reading the next
    batch in a thread while one is applied was measured slower: the two contend for the GIL.)"""
    schema = "tl_rebuild_" + uuid.uuid4().hex[:10]
    tables = _read_model_tables(projections)
    keep = {i for p in projections for i in getattr(p, "build_indexes", ())}
    conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    deferred: list[str] = []
    for t in tables:
        conn.execute(sql.SQL("CREATE TABLE {}.{} (LIKE public.{} INCLUDING ALL)").format(
            sql.Identifier(schema), sql.Identifier(t), sql.Identifier(t)))
        live = {d: name for name, d in _index_defs(conn, "public", t).items()}
        for name, d in _index_defs(conn, schema, t).items():
            if live.get(d) in keep or not _deferrable(conn, schema, name):
                continue
            deferred.append(conn.execute("SELECT indexdef FROM pg_indexes WHERE schemaname = %s AND indexname = %s",
                                         (schema, name)).fetchone()["indexdef"])
            conn.execute(sql.SQL("DROP INDEX {}.{}").format(sql.Identifier(schema), sql.Identifier(name)))
    head = conn.execute("SELECT coalesce(max(global_position), 0) AS p FROM events").fetchone()["p"]
    conn.execute("SET synchronous_commit TO off")
    try:
        with _search_path(conn, schema):
            _ensure_checkpoints(conn, [p.name for p in projections])
            n = _drain(conn, EventStore(pool), projections, batch, head, own_transactions=True,
                       progress=(lambda done: progress(done, head)) if progress else None)
        for d in deferred:
            conn.execute(d)
    finally:
        try:
            conn.execute("RESET synchronous_commit")
        except psycopg.Error:  # the connection is gone: the pool discards it; the first error is the one to see
            pass
    return schema, n


def _deferrable(conn: psycopg.Connection, schema: str, index: str) -> bool:
    """A plain index: not unique, not backing a constraint (those the fill itself relies on)."""
    row = conn.execute(
        "SELECT i.indisunique OR i.indisprimary OR i.indisexclusion "
        "OR EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid) AS fixed "
        "FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid JOIN pg_namespace n ON n.oid = ic.relnamespace "
        "WHERE n.nspname = %s AND ic.relname = %s", (schema, index)).fetchone()
    return row is not None and not row["fixed"]


def _drain(conn: psycopg.Connection, store: EventStore, projections: list, batch: int, until: int,
           own_transactions: bool = False, progress=None) -> int:
    """Apply every event up to `until` (batch by batch, each in its own transaction if asked); `progress(n)`
    is told the events applied after each batch."""
    n = 0
    while True:
        with conn.transaction() if own_transactions else nullcontext():
            got = _apply_batch(conn, store, projections, batch, until=until)
        if not got:
            return n
        n += got
        if progress is not None:
            progress(n)


def _catch_up_in(conn: psycopg.Connection, pool: ConnectionPool, schema: str | None, projections: list,
                 until: int, batch: int = 10000) -> None:
    with _search_path(conn, schema) if schema else nullcontext():
        _drain(conn, EventStore(pool), projections, batch, until)


def _differences(conn: psycopg.Connection, schema: str, tables: list[str], sample: int = 3) -> dict:
    """Rows in the live table and not in the rebuilt one, and the other way round, per table.

    Each table is first summed up on both sides (row count and the sum of a 64-bit hash of every row's text:
    one scan, no sort); only a table whose sums differ is compared row by row (EXCEPT both ways, with samples).
    The live tables are locked meanwhile, so this is most of what a replay keeps readers waiting for."""
    out = {}
    for t in tables:
        if t in BOOKKEEPING:
            continue
        sums = [conn.execute(sql.SQL("SELECT count(*) AS n, coalesce(sum(hashtextextended(r::text, 0)), 0) AS h "
                                     "FROM {}.{} r").format(sql.Identifier(side), sql.Identifier(t))).fetchone()
                for side in ("public", schema)]
        if sums[0] == sums[1]:
            continue
        counts = {}
        for label, a, b in (("only_live", "public", schema), ("only_rebuilt", schema, "public")):
            q = sql.SQL("SELECT * FROM {}.{} EXCEPT SELECT * FROM {}.{}").format(
                sql.Identifier(a), sql.Identifier(t), sql.Identifier(b), sql.Identifier(t))
            rows = conn.execute(sql.SQL("SELECT count(*) AS n FROM ({}) d").format(q)).fetchone()
            counts[label] = rows["n"]
            if rows["n"]:
                ids = conn.execute(sql.SQL("SELECT * FROM ({}) d LIMIT %s").format(q), (sample,)).fetchall()
                counts[label + "_sample"] = [
                    {k: v for k, v in r.items() if k in ("id", "project", "name", "alias", "stream_id", "status")}
                    for r in ids]
        if counts["only_live"] or counts["only_rebuilt"]:
            out[t] = counts
    return out


def rebuild(pool: ConnectionPool, batch: int = 10000, swap: bool = True, progress=None) -> dict:
    """Replay: build every read model aside from position 0, compare it with the live tables at the same
    position, and (swap=True) put it in their place in one short transaction. Reads go on meanwhile:
    the live tables are locked only for the final catch-up and the renames (milliseconds), and a query
    waiting on that lock then reads the new table (Postgres resolves the name again after the wait)."""
    projections = all_projections()
    tables = _read_model_tables(projections)
    started = time.perf_counter()
    with pool.connection() as conn:
        _ensure_checkpoints(conn, [p.name for p in projections])
        schema, n = _build_aside(conn, pool, projections, batch, progress)
        built = time.perf_counter()
        try:
            with conn.transaction():
                # checkpoints first: the order every projector transaction takes its locks in
                lock = "ACCESS EXCLUSIVE" if swap else "EXCLUSIVE"
                for t in ["projection_checkpoints"] + [t for t in tables if t != "projection_checkpoints"]:
                    conn.execute(sql.SQL(f"LOCK TABLE public.{{}} IN {lock} MODE").format(sql.Identifier(t)))
                head = conn.execute("SELECT coalesce(max(global_position), 0) AS p FROM events").fetchone()["p"]
                _catch_up_in(conn, pool, None, projections, head)  # live, to the same position
                _catch_up_in(conn, pool, schema, projections, head)  # rebuilt, to the same position
                diff = _differences(conn, schema, tables)
                if swap:
                    old = "tl_old_" + uuid.uuid4().hex[:10]
                    conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(old)))
                    for t in tables:
                        names = _index_defs(conn, "public", t)
                        conn.execute(sql.SQL("ALTER TABLE public.{} SET SCHEMA {}").format(
                            sql.Identifier(t), sql.Identifier(old)))
                        conn.execute(sql.SQL("ALTER TABLE {}.{} SET SCHEMA public").format(
                            sql.Identifier(schema), sql.Identifier(t)))
                        # keep the live index and constraint names (migrations refer to them)
                        new = {d: i for i, d in _index_defs(conn, "public", t).items()}
                        for live_name, d in names.items():
                            current = new.get(d)
                            if current and current != live_name:
                                conn.execute(sql.SQL("ALTER INDEX {}.{} RENAME TO {}").format(
                                    sql.Identifier(old), sql.Identifier(live_name),
                                    sql.Identifier(live_name + "_old")))
                                conn.execute(sql.SQL("ALTER INDEX public.{} RENAME TO {}").format(
                                    sql.Identifier(current), sql.Identifier(live_name)))
                    conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(old)))
        finally:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
    took = time.perf_counter() - started
    return {"events": n, "seconds": round(took, 3), "events_per_second": round(n / took) if took else None,
            "build_seconds": round(built - started, 3), "swap_seconds": round(time.perf_counter() - built, 3),
            "swapped": swap, "differences": diff, "position": head}


def replay(pool: ConnectionPool, batch: int = 10000, progress=None) -> dict:
    """Rebuild every read model from the log (blue/green) and swap it in. `progress(done, total)` is told how
    far the build has come after each batch."""
    return rebuild(pool, batch, swap=True, progress=progress)


def verify(pool: ConnectionPool, batch: int = 10000, progress=None) -> dict:
    """Rebuild aside and report how the live read models differ from a fresh replay (should be none)."""
    return rebuild(pool, batch, swap=False, progress=progress)


# ---- the long-lived process --------------------------------------------------------------------------------
def run_forever(database_url: str, stop: threading.Event | None = None, poll_seconds: float = 1.0) -> None:
    from eventlog.db import connect
    from eventlog.db import pool as get_pool
    from eventlog.heartbeat import Heartbeat

    stop = stop or threading.Event()
    p = get_pool(database_url, max_size=2)
    beat = Heartbeat(p, "projector")
    listener = None
    backoff = 0.5
    while not stop.is_set():
        try:
            if listener is None:
                listener = connect(database_url)
                listener.execute(f"LISTEN {CHANNEL}")
            catch_up(p)
            beat.beat()
            backoff = 0.5
            # wake on NOTIFY, or after poll_seconds anyway (a missed notification is never fatal)
            for _ in listener.notifies(timeout=poll_seconds, stop_after=1):
                pass
        except Exception as e:  # noqa: BLE001 - the projector outlives any outage; handlers are isolated above
            if isinstance(e, psycopg.OperationalError) or type(e).__name__ == "PoolTimeout":
                log.warning("database unavailable (%s); retrying in %.1fs", e, backoff)
            else:
                log.exception("projection round failed; retrying in %.1fs", backoff)
            if listener is not None:
                try:
                    listener.close()
                except Exception:  # noqa: BLE001
                    pass
            listener = None
            p.check()  # drop pooled connections the outage broke
            stop.wait(backoff)
            backoff = min(backoff * 2, 10.0)


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
