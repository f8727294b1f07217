from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import psycopg
from psycopg import sql

from eventlog.store import RecordedEvent


class Projection(Protocol):
    name: str
    tables: tuple[str, ...]  # rows owned by this projection (truncated on replay)
    # the event types `apply` acts on (it is given only those, in log order); None: every event
    types: frozenset[str] | None
    # optional `build_indexes`: the (live) names of the non-unique indexes `apply` looks rows up by; a rebuild
    # builds the other plain indexes only after filling its copies

    # `events` carry no metadata ({}) and no recorded_at (None): a read model is a function of types and data

    def apply(self, conn: psycopg.Connection, events: Sequence[RecordedEvent]) -> None: ...


STAGE_MIN_ROWS = 256  # from this many rows a batch insert goes through COPY (a replay's batches; not a live one's)


def insert_many(conn: psycopg.Connection, table: str, columns: Sequence[str], rows: Sequence[tuple],
                casts: Sequence[str], conflict: str) -> None:
    """INSERT rows (tuples in `columns` order) with `conflict` (an ON CONFLICT clause) in one statement.

    A few rows: `unnest` of one array per column (cast to `casts`, the columns' types). Many (a replay builds
    hundreds of thousands of chat answers): COPY straight into the table, in a savepoint; if any key is there
    already (or twice in `rows`), COPY into a temporary table instead, then one INSERT ... SELECT with the
    same ON CONFLICT, so a repeated key still keeps the first row. Either way the server parses the rows:
    Python does not build an array literal per column. `conflict` must be an ON CONFLICT DO NOTHING."""
    if not rows:
        return
    cols = sql.SQL(", ").join(map(sql.Identifier, columns))
    if len(rows) < STAGE_MIN_ROWS:
        arrays = sql.SQL(", ").join(sql.SQL("%s::{}[]").format(sql.SQL(c)) for c in casts)
        query = sql.SQL("INSERT INTO {} ({}) SELECT * FROM unnest({}) ").format(sql.Identifier(table), cols, arrays)
        conn.execute(query + sql.SQL(conflict), [list(column) for column in zip(*rows, strict=True)])
        return
    try:  # straight into the table (a rebuild's tables are empty): a key already there fails it as a whole
        with conn.transaction(), conn.cursor() as cur, cur.copy(
                sql.SQL("COPY {} ({}) FROM STDIN").format(sql.Identifier(table), cols)) as copy:
            for r in rows:
                copy.write_row(r)
        return
    except psycopg.errors.UniqueViolation:
        pass  # then as ON CONFLICT says, through a stage
    stage = sql.Identifier(f"tl_stage_{table}")
    conn.execute(sql.SQL("CREATE TEMPORARY TABLE {} ({}) ON COMMIT DROP").format(stage, sql.SQL(", ").join(
        sql.SQL("{} {}").format(sql.Identifier(c), sql.SQL(t)) for c, t in zip(columns, casts, strict=True))))
    with conn.cursor() as cur, cur.copy(sql.SQL("COPY {} ({}) FROM STDIN").format(stage, cols)) as copy:
        for r in rows:
            copy.write_row(r)
    # in the stage's order (the log's): with a repeated key the first row wins, as with the unnest insert
    conn.execute(sql.SQL("INSERT INTO {} ({}) SELECT {} FROM {} ").format(sql.Identifier(table), cols, cols, stage)
                 + sql.SQL(conflict))
    conn.execute(sql.SQL("DROP TABLE {}").format(stage))
