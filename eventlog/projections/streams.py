from __future__ import annotations

from collections.abc import Sequence

import psycopg

from eventlog.projections.base import insert_many
from eventlog.store import RecordedEvent


class StreamProjectsProjection:
    """Which project each stream belongs to: the first event of a stream that names a project (every
    creating event does). `project-<name>` streams are the project's own. Lets a project admin's audit
    log show only its own project's streams."""

    name = "stream_projects"
    types = None  # every event
    tables = ("stream_projects",)

    def apply(self, conn: psycopg.Connection, events: Sequence[RecordedEvent]) -> None:
        rows: dict[str, str] = {}
        later: list[str] = []  # streams first seen here at a version > 1: they may have their row already
        for e in events:
            if e.stream_id in rows:
                continue
            project = e.data.get("project") if isinstance(e.data, dict) else None
            if e.stream_id.startswith("project-"):
                project = e.stream_id[len("project-"):]
            if isinstance(project, str) and project:
                rows[e.stream_id] = project
                if e.stream_version > 1:
                    later.append(e.stream_id)
        if later:  # leave out those known already, so the bulk insert meets no conflict in the usual case
            for r in conn.execute("SELECT stream_id FROM stream_projects WHERE stream_id = ANY(%s)", (later,)):
                rows.pop(r["stream_id"], None)
        # one statement for the batch: a busy log starts a stream per chat answer
        insert_many(conn, "stream_projects", ("stream_id", "project"), list(rows.items()), ("text", "text"),
                    "ON CONFLICT (stream_id) DO NOTHING")
