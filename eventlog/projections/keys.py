from __future__ import annotations

from collections.abc import Sequence

import psycopg

from eventlog.store import RecordedEvent


class KeysProjection:
    name = "api_keys"
    types = frozenset({"KeyCreated", "KeyRoleChanged", "KeyRevoked"})
    tables = ("api_keys",)

    def apply(self, conn: psycopg.Connection, events: Sequence[RecordedEvent]) -> None:
        for e in events:
            if e.type == "KeyCreated":
                d = e.data
                conn.execute(
                    "INSERT INTO api_keys (id, key_hash, name, role, project, created_at) "
                    "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                    (d["id"], d["key_hash"], d["name"], d["role"], d["project"], d["created_at"]))
            elif e.type == "KeyRoleChanged":
                conn.execute("UPDATE api_keys SET role = %s WHERE id = %s", (e.data["role"], e.data["id"]))
            elif e.type == "KeyRevoked":
                conn.execute("UPDATE api_keys SET revoked = true WHERE id = %s", (e.data["id"],))
