from __future__ import annotations

from collections.abc import Sequence

import psycopg

from eventlog.store import RecordedEvent


class StreamProjectsProjection:
    """Which project each stream belongs to: the first event of a stream that names a project (every
    creating event does). `project-<name>` streams are the project's own. Lets a project admin's audit
    log show only its own project's streams."""

    name = "stream_projects"
    tables = ("stream_projects",)

    def apply(self, conn: psycopg.Connection, events: Sequence[RecordedEvent]) -> None:
        rows: dict[str, str] = {}
        for e in events:
            if e.stream_id in rows:
                continue
            project = e.data.get("project") if isinstance(e.data, dict) else None
            if e.stream_id.startswith("project-"):
                project = e.stream_id[len("project-"):]
            if isinstance(project, str) and project:
                rows[e.stream_id] = project
        if rows:  # one statement for the batch (unnest): a busy log starts a stream per chat answer
            conn.execute("INSERT INTO stream_projects (stream_id, project) "
                         "SELECT * FROM unnest(%s::text[], %s::text[]) ON CONFLICT (stream_id) DO NOTHING",
                         (list(rows), list(rows.values())))
