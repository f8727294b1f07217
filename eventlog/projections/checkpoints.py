from __future__ import annotations

from collections.abc import Sequence

import psycopg
from psycopg.types.json import Jsonb

from eventlog.store import RecordedEvent


class CheckpointsProjection:
    name = "job_checkpoints"
    types = frozenset({"CheckpointSaved", "CheckpointDeleted"})
    tables = ("job_checkpoints",)

    def apply(self, conn: psycopg.Connection, events: Sequence[RecordedEvent]) -> None:
        rows = [
            (d["id"], d["job_id"], d["project"], d["step"], Jsonb(d["metrics"]), d["fine_tuned_model_checkpoint"],
             d["path"], d["at"], e.global_position)
            for e in events if e.type == "CheckpointSaved" for d in (e.data,)
        ]
        gone = [e.data["id"] for e in events if e.type == "CheckpointDeleted"]
        if rows:
            with conn.cursor() as cur:
                cur.executemany(
                    "INSERT INTO job_checkpoints (id, job_id, project, step, metrics, fine_tuned_model_checkpoint, "
                    "path, created_at, seq) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) "
                    # a retried attempt may repeat an id from before the attempt-safe ids: keep the first
                    "ON CONFLICT (id) DO NOTHING", rows)
        if gone:  # rotated away (the last 3 are kept, as OpenAI does); the log keeps its history
            conn.execute("DELETE FROM job_checkpoints WHERE id = ANY(%s)", (gone,))
