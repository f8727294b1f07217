"""Webhooks of a project (admin): create (the signing secret is shown once), list, read with its recent delivery
attempts, delete. Delivery itself is eventlog/webhooks.py's, in the dispatcher process."""
from __future__ import annotations

import uuid

from flask import Blueprint, g, jsonify, request

from api.auth import require
from api.common import Idempotent, append_and_respond, json_body, metadata, now, owned, svc
from api.openai_compat import valid_id
from domain.errors import NotFound, ValidationError
from eventlog import webhooks
from eventlog.store import NewEvent

bp = Blueprint("webhooks", __name__, url_prefix="/api")
KEYS = {"url", "event_types", "description"}
MAX_PER_PROJECT = 20


def webhook_object(row: dict) -> dict:
    return {"object": "webhook", "id": row["id"], "url": row["url"], "event_types": row["event_types"],
            "created_at": row["created_at"], "deleted": row["deleted_at"] is not None,
            "delivered": row["delivered"], "delivered_position": row["delivered_position"],
            "failed_attempts": row["failed_attempts"], "last_error": row["last_error"]}


@bp.post("/webhooks")
def create_webhook():
    p = require("admin")
    body = json_body()
    if "secret" in body:
        raise ValidationError("the server makes each webhook's signing secret (whsec_..., returned once by this "
                              "request) so that no secret is ever stored; leave secret out", param="secret")
    unknown = sorted(set(body) - KEYS)
    if unknown:
        raise ValidationError(f"unknown key(s): {', '.join(unknown[:5])}; allowed: {', '.join(sorted(KEYS))}",
                              param=unknown[0][:200])
    url = webhooks.check_url(body.get("url"))
    types = webhooks.check_types(body.get("event_types"))
    with svc().pool.connection() as c:
        n = c.execute("SELECT count(*) AS n FROM webhooks WHERE project = %s AND deleted_at IS NULL",
                      (p.project,)).fetchone()["n"]
    if n >= MAX_PER_PROJECT:
        raise ValidationError(f"a project has at most {MAX_PER_PROJECT} webhooks; delete one first", param="url")
    idem = Idempotent(body)
    wid = "wh_" + uuid.uuid4().hex[:24]
    data = {"id": wid, "project": p.project, "url": url, "event_types": types, "created_at": now()}
    out = {"object": "webhook", "id": wid, "url": url, "event_types": types, "created_at": data["created_at"],
           "secret": webhooks.secret_for(svc().settings.data_dir, wid)}
    return append_and_respond(idem, 201, out, lambda cmd: svc().store.append(
        webhooks.webhook_stream(wid), 0, [NewEvent("WebhookCreated", data, metadata(wid))], command=cmd),
        stored={**out, "secret": None, "secret_redacted": True})


@bp.get("/webhooks")
def list_webhooks():
    require("admin")
    with svc().pool.connection() as c:
        rows = c.execute("SELECT * FROM webhooks WHERE project = %s AND deleted_at IS NULL ORDER BY seq",
                         (g.principal.project,)).fetchall()
    return jsonify({"object": "list", "data": [webhook_object(r) for r in rows]})


def _get(webhook_id: str) -> dict:
    if not valid_id(webhook_id):
        raise NotFound(f"no webhook {webhook_id!r}", param="webhook_id")
    return owned("webhooks", webhook_id, "webhook", "webhook_id")


@bp.get("/webhooks/<webhook_id>")
def get_webhook(webhook_id: str):
    """The webhook and its latest delivery attempts (newest first; `limit`, at most 200)."""
    require("admin")
    row = _get(webhook_id)
    try:
        limit = max(1, min(200, int(request.args.get("limit", 50))))
    except ValueError:
        raise ValidationError("limit must be an integer", param="limit") from None
    events = svc().store.read_stream(webhooks.webhook_stream(webhook_id))
    attempts = [{"type": "delivered" if e.type == "WebhookDelivered" else "failed", "position": e.data["position"],
                 "event_type": e.data["event_type"], "message_id": e.data["message_id"], "attempt": e.data["attempt"],
                 "status": e.data.get("status"), "error": e.data.get("error"), "ms": e.data.get("ms"),
                 "at": e.data["at"]} for e in events if e.type in ("WebhookDelivered", "WebhookDeliveryFailed")]
    return jsonify({**webhook_object(row), "attempts": attempts[::-1][:limit]})


@bp.delete("/webhooks/<webhook_id>")
def delete_webhook(webhook_id: str):
    require("admin")
    _get(webhook_id)
    idem = Idempotent({"delete": webhook_id})
    stream = webhooks.webhook_stream(webhook_id)
    return append_and_respond(idem, 200, {"object": "webhook", "id": webhook_id, "deleted": True},
                              lambda cmd: svc().store.append(stream, None, [NewEvent(
                                  "WebhookDeleted", {"id": webhook_id, "at": now()}, metadata(webhook_id))],
                                  command=cmd))
