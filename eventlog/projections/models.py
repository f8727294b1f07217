from __future__ import annotations

from collections.abc import Sequence

import psycopg
from psycopg.types.json import Jsonb

from eventlog.store import RecordedEvent


class ModelsProjection:
    """The model registry: every registered model with its lineage."""

    name = "models"
    tables = ("models",)

    def apply(self, conn: psycopg.Connection, events: Sequence[RecordedEvent]) -> None:
        for e in events:
            if e.type == "ModelRegistered":
                d = e.data
                conn.execute(
                    "INSERT INTO models (id, project, base_model, backend, job_id, artifact_path, created_at, "
                    "lineage, seq) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (id) DO NOTHING",
                    (d["id"], d["project"], d["base_model"], d["backend"], d.get("job_id"), d.get("artifact_path"),
                     d["created_at"], Jsonb(d["lineage"]), e.global_position))
