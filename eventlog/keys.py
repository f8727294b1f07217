"""API keys as the log knows them: only a key's sha256 is ever stored (events, tables, logs), and
`register_key` adds a key from outside the API (the operator's bootstrap key, the CLI)."""
from __future__ import annotations

import hashlib
import secrets
import time


def new_key() -> str:
    return "tl-" + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def key_id_for(key_hash: str) -> str:
    return "key_" + key_hash[:16]


def register_key(database_url: str, key: str, role: str, project: str, name: str) -> str:
    """Append KeyCreated for this key unless its hash is known (idempotent by command id). A known key
    whose role differs (a bootstrap key registered as `admin` before the operator role existed) gets a
    KeyRoleChanged instead, so upgrading an instance keeps its key working with the intended powers."""
    from domain.events import KeyCreated, key_stream
    from eventlog.db import pool
    from eventlog.runner import catch_up
    from eventlog.store import Command, EventStore, NewEvent

    h = hash_key(key)
    p = pool(database_url, max_size=2)
    store = EventStore(p)
    kid = key_id_for(h)
    stream = key_stream(kid)
    events = store.read_stream(stream)
    if not events:
        ev = KeyCreated(id=kid, key_hash=h, name=name, role=role, project=project, created_at=int(time.time()))
        store.append(stream, 0, [NewEvent(ev.type, ev.to_data(), {"actor": "cli"})],
                     command=Command(f"bootstrap:{kid}", h, {"status": 201, "body": {"id": kid}}))
    else:
        current = events[0].data["role"]
        for e in events:
            if e.type == "KeyRoleChanged":
                current = e.data["role"]
        if current != role:
            store.append(stream, events[-1].stream_version, [NewEvent(
                "KeyRoleChanged", {"id": kid, "role": role, "previous": current, "at": int(time.time())},
                {"actor": "cli"})])
    catch_up(p)
    return kid
