"""Helpers shared by the blueprints: services, request metadata, idempotent appends."""
from __future__ import annotations

import hashlib
import json
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

from flask import current_app, g, jsonify, request

from domain.errors import IdempotencyMismatch, NotFound, ValidationError
from eventlog.bootstrap import Services
from eventlog.runner import catch_up
from eventlog.store import Command

log = logging.getLogger("tunelog.api")


def svc() -> Services:
    return current_app.extensions["tunelog"]


def now() -> int:
    return int(time.time())


def request_id() -> str:
    rid = getattr(g, "request_id", None)
    if rid is None:
        rid = request.headers.get("X-Request-Id") or uuid.uuid4().hex
        g.request_id = rid
    return rid


def metadata(correlation_id: str | None = None) -> dict[str, Any]:
    rid = request_id()
    return {"actor": g.principal.key_id, "request_id": rid, "correlation_id": correlation_id or rid,
            "causation_id": request.headers.get("Idempotency-Key") or rid}


def json_body() -> dict[str, Any]:
    """The request's JSON object. Anything else (not JSON, too deeply nested to parse, not an object) is
    a 400: Flask's own parser only catches ValueError, and a deep nesting raises RecursionError."""
    try:
        body = request.get_json(silent=True)
    except RecursionError:
        raise ValidationError("the request body is nested too deeply", param=None) from None
    if not isinstance(body, dict):
        raise ValidationError("the request body must be a JSON object", param=None)
    try:  # "\ud800" is valid JSON but no text: it could be neither stored nor compared
        json.dumps(body, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise ValidationError("the request body contains an unpaired surrogate (\\ud800-\\udfff), which is not "
                              "text", param=None, code="invalid_characters") from None
    return body


def fingerprint(parts: Any) -> str:
    return hashlib.sha256(json.dumps([request.method, request.path, parts], sort_keys=True,
                                     default=str).encode()).hexdigest()


class Replayed(Exception):  # noqa: N818 - control flow, not an error
    """This Idempotency-Key was seen before: answer with the first response (api/errors.py)."""

    def __init__(self, response):
        super().__init__("replayed")
        self.response = response


class Idempotent:
    """Idempotency-Key handling: a retry returns the first response and appends nothing.

    Constructing it checks the key: a known key with the same request raises Replayed (answered with
    the stored response), with another request IdempotencyMismatch (422)."""

    def __init__(self, parts: Any):
        key = request.headers.get("Idempotency-Key")
        self.command_id = f"{g.principal.key_id}:{key}" if key else None
        self.request_hash = fingerprint(parts)
        if self.command_id:
            row = svc().store.lookup_command(self.command_id)
            if row is not None:
                if row["request_hash"] != self.request_hash:
                    raise IdempotencyMismatch("this Idempotency-Key was already used with a different request",
                                              param="Idempotency-Key")
                raise Replayed(self.respond(row["response"], replayed=True))

    def command(self, status: int, body: dict[str, Any]) -> Command | None:
        if not self.command_id:
            return None
        return Command(self.command_id, self.request_hash, {"status": status, "body": body})

    @staticmethod
    def respond(stored: dict[str, Any], replayed: bool = False):
        resp = jsonify(stored["body"])
        resp.status_code = stored["status"]
        if replayed:
            resp.headers["Idempotent-Replayed"] = "true"
        return resp


def append_and_respond(idem: Idempotent, status: int, body: dict[str, Any], do_append: Callable[[Command | None], Any],
                       stored: dict[str, Any] | None = None):
    """Append with the idempotency record and answer `body`. `stored` is what a retry gets instead, when
    the first response holds something that must never be kept (a new key's secret)."""
    result = do_append(idem.command(status, body if stored is None else stored))
    if result.duplicate:
        return Idempotent.respond(result.response, replayed=True)
    fresh(svc().pool)  # read-your-writes: the read models include this append before we answer
    resp = jsonify(body)
    resp.status_code = status
    return resp


def fresh(pool) -> None:
    """Bring the read models up to date for read-your-writes. Best effort: the append has committed, so
    a failing projection (it is isolated and parked by the projector) or a lock wait must never turn an
    accepted command into an error; the projector applies it moments later anyway."""
    try:
        catch_up(pool)
    except Exception:  # noqa: BLE001 - logged; the command itself succeeded
        log.warning("read-your-writes catch-up failed; the projector will apply it", exc_info=True)


def owned(table: str, row_id: str, what: str, param: str) -> dict[str, Any]:
    """Row `row_id` of `table` (a read model with `id` and `project`) in the caller's project; 404
    otherwise: another project's objects are invisible, not forbidden."""
    with svc().pool.connection() as c:
        row = c.execute(f"SELECT * FROM {table} WHERE id = %s AND project = %s",
                        (row_id, g.principal.project)).fetchone()
    if row is None:
        raise NotFound(f"no such {what}: {row_id}", param=param)
    return row


def list_page(rows: list[dict[str, Any]], limit: int, shape: Callable[[dict[str, Any]], dict[str, Any]]):
    """OpenAI's list envelope for `limit + 1` rows read: the first `limit`, shaped, with has_more and the ids of
    the first and last (the cursors of the next page)."""
    data = [shape(r) for r in rows[:limit]]
    return jsonify({"object": "list", "data": data, "has_more": len(rows) > limit,
                    "first_id": data[0]["id"] if data else None, "last_id": data[-1]["id"] if data else None})


def page_limit(default: int = 20, maximum: int = 100) -> int:
    raw = request.args.get("limit")
    if raw is None:
        return default
    try:
        n = int(raw)
    except ValueError:
        raise ValidationError(f"limit must be an integer, got {raw!r}", param="limit") from None
    if not 1 <= n <= maximum:
        raise ValidationError(f"limit must be between 1 and {maximum}", param="limit")
    return n
