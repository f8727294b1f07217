from __future__ import annotations

from collections.abc import Sequence

import psycopg
from psycopg.types.json import Jsonb

from eventlog.store import RecordedEvent


class AliasesProjection:
    name = "aliases"
    types = frozenset({"AliasPromoted"})
    tables = ("aliases",)

    def apply(self, conn: psycopg.Connection, events: Sequence[RecordedEvent]) -> None:
        for e in events:
            if e.type == "AliasPromoted":
                d = e.data
                conn.execute(
                    "INSERT INTO aliases (project, alias, model, updated_at) VALUES (%s, %s, %s, %s) "
                    "ON CONFLICT (project, alias) DO UPDATE SET model = EXCLUDED.model, "
                    "updated_at = EXCLUDED.updated_at",
                    (d["project"], d["alias"], d["model"], d["at"]))


class SettingsProjection:
    name = "project_settings"
    types = frozenset({"ProjectSettingsChanged"})
    tables = ("project_settings",)

    def apply(self, conn: psycopg.Connection, events: Sequence[RecordedEvent]) -> None:
        for e in events:
            if e.type == "ProjectSettingsChanged":
                conn.execute(
                    "INSERT INTO project_settings (project, settings) VALUES (%s, %s) "
                    "ON CONFLICT (project) DO UPDATE SET settings = EXCLUDED.settings",
                    (e.data["project"], Jsonb(e.data["settings"])))
