"""tunelog's own routes: API keys, the audit log, replay."""
from __future__ import annotations

from typing import Any

from flask import Blueprint, g, jsonify, request

from api.auth import ROLES, hash_key, key_id_for, new_key, require
from api.common import Idempotent, append_and_respond, json_body, metadata, now, owned, page_limit, svc
from domain.errors import ValidationError
from domain.events import KeyCreated, KeyRevoked, key_stream
from eventlog.runner import replay
from eventlog.store import NewEvent

bp = Blueprint("admin", __name__, url_prefix="/api")


@bp.post("/keys")
def create_key():
    p = require("admin")
    body = json_body()
    role = body.get("role", "trainer")
    if role not in ROLES:
        raise ValidationError(f"role must be one of {', '.join(ROLES)}", param="role")
    project = body.get("project", p.project)
    if not isinstance(project, str) or not project or len(project) > 64:
        raise ValidationError("project must be a non-empty string of at most 64 characters", param="project")
    name = str(body.get("name") or role)
    idem = Idempotent(body)
    key = new_key()
    h = hash_key(key)
    ev = KeyCreated(id=key_id_for(h), key_hash=h, name=name, role=role, project=project, created_at=now())
    # The key itself is in the response only; the log keeps its hash. (An Idempotency-Key retry gets
    # the key back from the stored response.)
    out = {"object": "api_key", "id": ev.id, "key": key, "name": name, "role": role, "project": project,
           "created_at": ev.created_at}
    return append_and_respond(idem, 201, out, lambda cmd: svc().store.append(
        key_stream(ev.id), 0, [NewEvent(ev.type, ev.to_data(), metadata(ev.id))], command=cmd))


@bp.get("/keys")
def list_keys():
    p = require("admin")
    with svc().pool.connection() as c:
        rows = c.execute("SELECT id, name, role, project, created_at, revoked FROM api_keys WHERE project = %s "
                         "ORDER BY created_at, id", (p.project,)).fetchall()
    return jsonify({"object": "list", "data": rows})


@bp.delete("/keys/<key_id>")
def revoke_key(key_id: str):
    """Revoke a key of this project: it stops working at once (the log keeps that it existed)."""
    require("admin")
    row = owned("api_keys", key_id, "API key", "key_id")
    body = {"object": "api_key", "id": key_id, "revoked": True}
    if row["revoked"]:
        return jsonify(body)
    idem = Idempotent({"revoke": key_id})
    ev = KeyRevoked(id=key_id, revoked_at=now())
    return append_and_respond(idem, 200, body, lambda cmd: svc().store.append(
        key_stream(key_id), None, [NewEvent(ev.type, ev.to_data(), metadata(key_id))], command=cmd))


@bp.get("/events")
def audit_log():
    require("admin")
    try:
        after = int(request.args.get("after", 0))
    except ValueError:
        raise ValidationError("after must be an integer position", param="after") from None
    limit = page_limit(default=100, maximum=1000)
    stream = request.args.get("stream")
    sql = "SELECT * FROM events WHERE global_position > %s"
    params: list[Any] = [after]
    if stream:
        sql += " AND stream_id = %s"
        params.append(stream)
    sql += " ORDER BY global_position LIMIT %s"
    params.append(limit)
    with svc().pool.connection() as c:
        rows = c.execute(sql, params).fetchall()
    data = [{**r, "recorded_at": r["recorded_at"].isoformat()} for r in rows]
    return jsonify({"object": "list", "data": data,
                    "next_after": data[-1]["global_position"] if data else after})


@bp.post("/admin/replay")
def admin_replay():
    require("admin")
    result = replay(svc().pool)
    return jsonify({"object": "replay", **result, "actor": g.principal.key_id})
