"""Bearer API keys: stored hashed (sha256 of a 256-bit random key), each with a role and a project."""
from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

from flask import Flask, g, request

from domain.errors import Forbidden, Unauthorized
from eventlog.keys import hash_key, key_id_for, new_key  # noqa: F401 - re-exported for the API

ROLES = ("admin", "trainer", "viewer")  # what a key can be given through the API
# The instance operator's key (the bootstrap TUNELOG_API_KEY, or the one generated into the data
# directory) is the one key that crosses projects: keys for any project, every project's audit log,
# replay and dead letters. It is registered only by scripts/serve itself, never minted over the API.
OPERATOR = "operator"
PUBLIC = {"/", "/healthz", "/metrics", "/openapi.json"}
VIEWER_WRITES = {"/v1/chat/completions", "/api/chat/feedback"}  # what the chat's users may POST


@dataclass(frozen=True)
class Principal:
    key_id: str
    role: str
    project: str

    @property
    def operator(self) -> bool:
        return self.role == OPERATOR


def require(*roles: str) -> Principal:
    """The caller, if its role is one of `roles` (the operator is an admin of its own project too)."""
    p: Principal = g.principal
    if p.role not in roles and not (p.operator and "admin" in roles):
        raise Forbidden(f"this action needs the role {' or '.join(roles)}; your key has {p.role}")
    return p


def require_operator() -> Principal:
    p: Principal = g.principal
    if not p.operator:
        raise Forbidden("this action is for the instance operator's key only (TUNELOG_API_KEY or the key "
                        "generated into the data directory); project admins act on their own project")
    return p


class KeyCache:
    """Valid keys seen in the last `ttl` seconds (by hash), so a read costs no key lookup. Bounded, and
    only valid keys are kept (random keys cannot fill it). Revoking a key through this process drops it
    at once (`forget`); another process's revocation is seen within `ttl`."""

    def __init__(self, ttl: float = 2.0, size: int = 10_000):
        self.ttl, self.size = ttl, size
        self._items: OrderedDict[str, tuple[float, Principal]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key_hash: str) -> Principal | None:
        with self._lock:
            item = self._items.get(key_hash)
            if item is None or time.monotonic() - item[0] > self.ttl:
                return None
            return item[1]

    def put(self, key_hash: str, principal: Principal) -> None:
        with self._lock:
            self._items[key_hash] = (time.monotonic(), principal)
            self._items.move_to_end(key_hash)
            while len(self._items) > self.size:
                self._items.popitem(last=False)

    def forget(self, key_id: str) -> None:
        with self._lock:
            for h in [h for h, (_, p) in self._items.items() if p.key_id == key_id]:
                del self._items[h]


KEYS = KeyCache()


def register(app: Flask) -> None:
    @app.before_request
    def _authenticate():
        if request.path in PUBLIC or request.path.startswith("/ui/") or request.method == "OPTIONS":
            return None
        header = request.headers.get("Authorization", "")
        if not header.startswith("Bearer ") or not header[7:].strip():
            raise Unauthorized("missing API key: send Authorization: Bearer <key>")
        h = hash_key(header[7:].strip())
        principal = KEYS.get(h)
        if principal is None:
            svc = app.extensions["tunelog"]
            with svc.pool.connection() as c:
                row = c.execute("SELECT id, role, project FROM api_keys WHERE key_hash = %s AND NOT revoked",
                                (h,)).fetchone()
            if row is None:
                raise Unauthorized("invalid API key")
            principal = Principal(row["id"], row["role"], row["project"])
            KEYS.put(h, principal)
        g.principal = principal
        if (request.method not in ("GET", "HEAD") and principal.role == "viewer"
                and request.path not in VIEWER_WRITES):
            raise Forbidden("viewer keys are read-only (they may chat and give feedback)")
        return None
