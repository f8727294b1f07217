"""tunelog's own routes: API keys, the audit log, replay."""
from __future__ import annotations

import json
import logging
import re
from typing import Any

from flask import Blueprint, Response, g, jsonify, request

from api.auth import KEYS, OPERATOR, ROLES, hash_key, key_id_for, new_key, require, require_operator
from api.common import Idempotent, append_and_respond, json_body, metadata, now, owned, page_limit, svc
from domain.errors import Forbidden, NotFound, ValidationError
from domain.events import KeyCreated, KeyRevoked, key_stream, upcast
from eventlog.runner import replay, verify
from eventlog.store import NewEvent

log = logging.getLogger("tunelog.api")
bp = Blueprint("admin", __name__, url_prefix="/api")
PROJECT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@bp.post("/keys")
def create_key():
    p = require("admin")
    body = json_body()
    role = body.get("role", "trainer")
    if role not in ROLES:
        raise ValidationError(f"role must be one of {', '.join(ROLES)}", param="role")
    project = body.get("project", p.project)
    if not isinstance(project, str) or not PROJECT_RE.match(project):
        raise ValidationError("project must be 1-64 characters of letters, digits, '.', '_' or '-'", param="project")
    if project != p.project and not p.operator:
        raise Forbidden("a project admin creates keys for its own project only", param="project")
    name = body.get("name") or role
    if not isinstance(name, str) or len(name) > 200:
        raise ValidationError("name must be text of at most 200 characters", param="name")
    idem = Idempotent(body)
    key = new_key()
    h = hash_key(key)
    ev = KeyCreated(id=key_id_for(h), key_hash=h, name=name, role=role, project=project, created_at=now())
    # The key itself is in this response only: the log keeps its hash, and the idempotency record keeps
    # the response without it (a retry with the same Idempotency-Key learns the key's id, not the key:
    # if the first response was lost, revoke that id and create another).
    out = {"object": "api_key", "id": ev.id, "key": key, "name": name, "role": role, "project": project,
           "created_at": ev.created_at}
    return append_and_respond(idem, 201, out, lambda cmd: svc().store.append(
        key_stream(ev.id), 0, [NewEvent(ev.type, ev.to_data(), metadata(ev.id))], command=cmd),
        stored={**out, "key": None, "key_redacted": True})


@bp.get("/keys")
def list_keys():
    """This project's keys (the operator may pass ?project=NAME, or ?project=* for every project)."""
    p = require("admin")
    project = request.args.get("project", p.project) if p.operator else p.project
    sql = "SELECT id, name, role, project, created_at, revoked FROM api_keys"
    params: list[Any] = []
    if project != "*":
        sql += " WHERE project = %s"
        params.append(project)
    with svc().pool.connection() as c:
        rows = c.execute(sql + " ORDER BY created_at, id LIMIT 10000", params).fetchall()
    return jsonify({"object": "list", "data": rows})


@bp.delete("/keys/<key_id>")
def revoke_key(key_id: str):
    """Revoke a key of this project: it stops working at once (the log keeps that it existed)."""
    p = require("admin")
    if p.operator:  # the operator revokes any project's key
        with svc().pool.connection() as c:
            row = c.execute("SELECT * FROM api_keys WHERE id = %s", (key_id,)).fetchone()
        if row is None:
            raise NotFound(f"no such API key: {key_id}", param="key_id")
    else:
        row = owned("api_keys", key_id, "API key", "key_id")
    if row["role"] == OPERATOR and not p.operator:
        raise NotFound(f"no such API key: {key_id}", param="key_id")
    body = {"object": "api_key", "id": key_id, "revoked": True}
    if row["revoked"]:
        return jsonify(body)
    idem = Idempotent({"revoke": key_id})
    ev = KeyRevoked(id=key_id, revoked_at=now())
    KEYS.forget(key_id)  # before and after the append: no request in between may use a cached entry
    resp = append_and_respond(idem, 200, body, lambda cmd: svc().store.append(
        key_stream(key_id), None, [NewEvent(ev.type, ev.to_data(), metadata(key_id))], command=cmd))
    KEYS.forget(key_id)
    return resp


@bp.get("/events")
def audit_log():
    """The log, in order, cursor-paged (`after` a position; `limit`), filtered by `stream`, `type` (one or a
    comma-separated list) and a time window (`since`, `until`: ISO times). Every key of a project reads its own
    project's streams (readers other than its admin without chat text, key hashes or names); the operator
    reads all."""
    from api.audit import _reader_view

    p = require("admin", "trainer", "viewer")
    try:
        after = int(request.args.get("after", 0))
    except ValueError:
        raise ValidationError("after must be an integer position", param="after") from None
    if not 0 <= after < 2**63:
        raise ValidationError("after must be a position (a non-negative integer)", param="after")
    limit = page_limit(default=100, maximum=1000)
    stream = request.args.get("stream")
    cols = "e.global_position, e.stream_id, e.stream_version, e.type, e.data, e.metadata, e.recorded_at"
    if p.operator:
        sql = f"SELECT {cols} FROM events e WHERE e.global_position > %s"
        params: list[Any] = [after]
    else:
        # only up to what the stream owners' read model has applied: a later event whose stream it does not know
        # yet would be missing from this page, and a client paging on would never be shown it
        sql = (f"SELECT {cols} FROM events e JOIN stream_projects sp ON sp.stream_id = e.stream_id "
               "WHERE sp.project = %s AND e.global_position > %s AND e.global_position <= "
               "(SELECT position FROM projection_checkpoints WHERE name = 'stream_projects')")
        params = [p.project, after]
    if stream:
        sql += " AND e.stream_id = %s"
        params.append(stream)
    types = [t for t in (request.args.get("type") or "").split(",") if t.strip()]
    if types:
        if len(types) > 50 or any(len(t) > 100 or not t.strip().isidentifier() for t in types):
            raise ValidationError("type is an event type (e.g. JobCreated) or a comma-separated list of at most 50",
                                  param="type")
        sql += " AND e.type = ANY(%s)"
        params.append([t.strip() for t in types])
    for name, op in (("since", ">="), ("until", "<=")):
        if request.args.get(name):
            sql += f" AND e.recorded_at {op} %s"
            params.append(_iso(name))
    sql += " ORDER BY e.global_position LIMIT %s"
    params.append(limit)
    with svc().pool.connection() as c:
        rows = c.execute(sql, params).fetchall()
    data = []
    for r in rows:
        type_, payload = upcast(r["type"], r["data"])  # readers see today's shapes, like every reader
        data.append({**r, "type": type_, "data": _reader_view(type_, payload),
                     "recorded_at": r["recorded_at"].isoformat()})
    return jsonify({"object": "list", "data": data,
                    "next_after": data[-1]["global_position"] if data else after})


def _iso(name: str):
    from api.audit import iso_time

    return iso_time(request.args[name].strip(), name)


def _rebuild_response(kind: str, run):
    """The result as JSON; with `?progress=true`, newline-delimited JSON instead: `{"object": "progress",
    "done", "total"}` after each batch while the rebuild runs, then the result."""
    actor = g.principal.key_id
    pool = svc().pool
    if request.args.get("progress") not in ("1", "true"):
        return jsonify({"object": kind, **run(pool), "actor": actor})
    import queue
    import threading

    updates: queue.Queue = queue.Queue()

    def work() -> None:
        try:
            updates.put({"object": kind, **run(pool, progress=lambda done, total: updates.put(
                {"object": "progress", "done": done, "total": total})), "actor": actor})
        except Exception as e:  # noqa: BLE001 - said in the stream (its status is already 200)
            log.exception("%s failed", kind)
            updates.put({"object": "error", "error": {"code": "internal_error", "message": type(e).__name__}})

    threading.Thread(target=work, name=kind, daemon=True).start()

    def lines():
        while True:
            item = updates.get()
            yield json.dumps(item, default=str) + "\n"
            if item["object"] != "progress":
                return

    return Response(lines(), mimetype="application/x-ndjson")


@bp.post("/admin/replay")
def admin_replay():
    """Rebuild every read model from the log aside and swap it in (reads go on meanwhile); the response
    lists how the live read models differed from the rebuilt ones (normally: not at all)."""
    require_operator()
    return _rebuild_response("replay", replay)


@bp.post("/admin/verify")
def admin_verify():
    """Rebuild aside and compare with the live read models, without swapping: the differences found."""
    require_operator()
    return _rebuild_response("verify", verify)


@bp.get("/admin/dead-letters")
def dead_letters():
    """Events a projection could not apply: retried, then parked (the projection went on without them)."""
    require_operator()
    with svc().pool.connection() as c:
        rows = c.execute("SELECT name AS projection, global_position, stream_id, type, attempts, error, parked, "
                         "first_failed_at, last_failed_at FROM projection_failures "
                         "ORDER BY global_position LIMIT 1000").fetchall()
    data = [{**r, "first_failed_at": r["first_failed_at"].isoformat(),
             "last_failed_at": r["last_failed_at"].isoformat()} for r in rows]
    return jsonify({"object": "list", "data": data})
