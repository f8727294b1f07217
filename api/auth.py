"""Bearer API keys: stored hashed (sha256 of a 256-bit random key), each with a role and a project."""
from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

from flask import Flask, g, request

from domain.errors import Forbidden, Unauthorized

ROLES = ("admin", "trainer", "viewer")
PUBLIC = {"/", "/healthz", "/metrics", "/openapi.json"}
VIEWER_WRITES = {"/v1/chat/completions", "/api/chat/feedback"}  # what the chat's users may POST


@dataclass(frozen=True)
class Principal:
    key_id: str
    role: str
    project: str


def new_key() -> str:
    return "tl-" + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def key_id_for(key_hash: str) -> str:
    return "key_" + key_hash[:16]


def require(*roles: str) -> Principal:
    p: Principal = g.principal
    if p.role not in roles:
        raise Forbidden(f"this action needs the role {' or '.join(roles)}; your key has {p.role}")
    return p


def register(app: Flask) -> None:
    @app.before_request
    def _authenticate():
        if request.path in PUBLIC or request.path.startswith("/ui/") or request.method == "OPTIONS":
            return None
        header = request.headers.get("Authorization", "")
        if not header.startswith("Bearer ") or not header[7:].strip():
            raise Unauthorized("missing API key: send Authorization: Bearer <key>")
        h = hash_key(header[7:].strip())
        svc = app.extensions["tunelog"]
        with svc.pool.connection() as c:
            row = c.execute("SELECT id, role, project FROM api_keys WHERE key_hash = %s AND NOT revoked",
                            (h,)).fetchone()
        if row is None:
            raise Unauthorized("invalid API key")
        g.principal = Principal(row["id"], row["role"], row["project"])
        if (request.method not in ("GET", "HEAD") and row["role"] == "viewer"
                and request.path not in VIEWER_WRITES):
            raise Forbidden("viewer keys are read-only (they may chat and give feedback)")
        return None
