from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from eventlog.store import RecordedEvent


class ModelsProjection:
    """The model registry: every registered model with its lineage, its exports and whether it is deleted.

    Every handler can be applied twice with the same result (a replay rebuilds the rows from position 0)."""

    name = "models"
    types = frozenset({"ModelRegistered", "ModelDeleted", "ModelExportRequested", "ModelExported",
                       "ModelExportFailed"})
    tables = ("models",)

    def apply(self, conn: psycopg.Connection, events: Sequence[RecordedEvent]) -> None:
        registered: list[tuple] = []  # a run of registrations: one pipelined executemany, before what follows

        def flush() -> None:
            if registered:
                with conn.cursor() as cur:
                    cur.executemany(
                        "INSERT INTO models (id, project, base_model, backend, job_id, artifact_path, created_at, "
                        "lineage, seq) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (id) DO NOTHING",
                        registered)
                registered.clear()

        for e in events:
            d = e.data
            if e.type == "ModelRegistered":
                registered.append((d["id"], d["project"], d["base_model"], d["backend"], d.get("job_id"),
                                   d.get("artifact_path"), d["created_at"], Jsonb(d["lineage"]), e.global_position))
                continue
            flush()
            if e.type == "ModelDeleted":  # gone from lists and chat; the stream keeps its history
                conn.execute("UPDATE models SET deleted_at = coalesce(deleted_at, %s) WHERE id = %s",
                             (d["at"], d["id"]))
            elif e.type == "ModelExportRequested":
                _set_export(conn, d["model"], d["id"], {
                    "id": d["id"], "format": d["format"], "status": "queued", "path": None, "files": [],
                    "error": None, "created_at": d["at"], "finished_at": None}, create=True)
            elif e.type == "ModelExported":
                _set_export(conn, d["model"], d["id"], {"status": "succeeded", "path": d["path"],
                                                        "files": d["files"], "finished_at": d["at"]})
            elif e.type == "ModelExportFailed":
                _set_export(conn, d["model"], d["id"], {"status": "failed", "error": d["error"],
                                                        "finished_at": d["at"]})
        flush()


def _set_export(conn: psycopg.Connection, model_id: str, export_id: str, fields: dict[str, Any],
                create: bool = False) -> None:
    """Merge `fields` into the model's export `export_id`; `create` adds it if absent and changes nothing
    if present (a re-applied request must not undo its outcome)."""
    row = conn.execute("SELECT exports FROM models WHERE id = %s FOR UPDATE", (model_id,)).fetchone()
    if row is None:
        return
    exports: list[dict[str, Any]] = row["exports"]
    current = next((x for x in exports if x.get("id") == export_id), None)
    if current is None:
        if not create:
            return
        exports.append(fields)
    elif create:
        return
    else:
        current.update(fields)
    conn.execute("UPDATE models SET exports = %s WHERE id = %s", (Jsonb(exports), model_id))
