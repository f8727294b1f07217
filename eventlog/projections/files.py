from __future__ import annotations

from collections.abc import Sequence

import psycopg
from psycopg.types.json import Jsonb

from eventlog.store import RecordedEvent


class FilesProjection:
    name = "files"
    types = frozenset({"FileUploaded", "FileDeleted"})
    tables = ("files",)

    def apply(self, conn: psycopg.Connection, events: Sequence[RecordedEvent]) -> None:
        for e in events:
            if e.type == "FileUploaded":
                d = e.data
                conn.execute(
                    "INSERT INTO files (id, project, filename, purpose, bytes, sha256, created_at, stats) "
                    "VALUES (%s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (id) DO NOTHING",
                    (d["id"], d["project"], d["filename"], d["purpose"], d["bytes"], d["sha256"], d["created_at"],
                     Jsonb(d.get("stats") or {})))
            elif e.type == "FileDeleted":
                conn.execute("DELETE FROM files WHERE id = %s", (e.data["id"],))
