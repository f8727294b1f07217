"""Webhooks: job, model and alias events delivered to a project's HTTPS endpoints, at least once, in log order,
signed per the Standard Webhooks spec (the `standardwebhooks` library: `webhook-id`, `webhook-timestamp`,
`webhook-signature` headers).

- Each webhook has a stream (`webhook-<id>`): WebhookCreated, WebhookDeleted, and one event per delivery
  attempt (WebhookDelivered with the position delivered, or WebhookDeliveryFailed with the status or error and
  the wait before the next try). The delivery cursor is the last delivered position, read back from that
  stream: nothing is missed across restarts, and an attempt cut short by a crash is made again (the
  `webhook-id` of a message is stable, `msg_<webhook>_<position>`, so receivers can drop repeats).
- Delivery runs in the dispatcher process, on a thread of its own under an advisory lock (one deliverer per
  database). A failing receiver is retried with backoff (1 s doubling to 5 minutes) and holds back only its
  own webhook's later events (in order per webhook, so in order per stream).
- No SSRF: a webhook's host must be in the operator's allowlist (`TUNELOG_WEBHOOK_HOSTS`), redirects are not
  followed, and the URL may not carry credentials.
- No stored secret: each webhook's signing secret is derived from the instance's webhook key and the webhook's
  id (HMAC), shown once when the webhook is created; neither is in the log or any table.
"""
from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from domain.errors import ValidationError

log = logging.getLogger("tunelog.webhooks")

# the events a webhook may subscribe to, as Standard Webhooks names them, and the log's event types
EVENT_TYPES = {
    "job.created": "JobCreated", "job.started": "JobStarted", "job.paused": "JobPaused",
    "job.succeeded": "JobSucceeded", "job.failed": "JobFailed", "job.cancelled": "JobCancelled",
    "model.registered": "ModelRegistered", "model.deleted": "ModelDeleted", "model.exported": "ModelExported",
    "alias.promoted": "AliasPromoted",
}
NAMES = {v: k for k, v in EVENT_TYPES.items()}
ADVISORY_KEY = 0x7475_6E66  # one deliverer per database (beside the dispatcher's own lock, "tune")
MAX_BACKOFF = 300.0
TIMEOUT = 10.0
MAX_ATTEMPTS = 1000  # ~3.5 days of failures at the longest wait: then the webhook is disabled (an event says why)
PER_ROUND = 50  # deliveries of one webhook per round: a backlog does not starve the other webhooks
MIN_KEY_BYTES = 32


def webhook_stream(webhook_id: str) -> str:
    return f"webhook-{webhook_id}"


def allowed_hosts() -> set[str]:
    return {h.strip().lower() for h in os.environ.get("TUNELOG_WEBHOOK_HOSTS", "").split(",") if h.strip()}


def check_url(url: Any) -> str:
    """A webhook URL the operator allows: http(s), no credentials, a host in TUNELOG_WEBHOOK_HOSTS."""
    if not isinstance(url, str) or not url or len(url) > 2000:
        raise ValidationError("url is required: the endpoint events are POSTed to", param="url")
    try:
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        _ = parts.port  # a malformed port raises ValueError
    except ValueError:
        raise ValidationError("url is not a valid URL", param="url") from None
    if parts.scheme not in ("http", "https") or not host:
        raise ValidationError("url must be an http:// or https:// URL", param="url")
    if parts.username or parts.password:
        raise ValidationError("url may not carry credentials (the payload is signed instead)", param="url")
    hosts = allowed_hosts()
    if host not in hosts:
        allowed = ", ".join(sorted(hosts)) or "none: the operator has not set TUNELOG_WEBHOOK_HOSTS"
        raise ValidationError(f"webhooks may only be sent to the hosts this server allows ({allowed}); "
                              f"{host!r} is not one of them", param="url", code="url_not_allowed")
    return url


def check_types(raw: Any) -> list[str]:
    if raw is None:
        return sorted(EVENT_TYPES)
    if not isinstance(raw, list) or not raw or len(raw) > len(EVENT_TYPES):
        raise ValidationError(f"event_types must be a non-empty list of: {', '.join(sorted(EVENT_TYPES))}",
                              param="event_types")
    bad = [t for t in raw if t not in EVENT_TYPES]
    if bad:
        raise ValidationError(f"unknown event type {str(bad[0])[:60]!r}; allowed: {', '.join(sorted(EVENT_TYPES))}",
                              param="event_types")
    return sorted(set(raw))


def _instance_key(data_dir: Path) -> bytes:
    """TUNELOG_WEBHOOK_KEY, or a random key made once in the data directory (mode 0600)."""
    env = os.environ.get("TUNELOG_WEBHOOK_KEY")
    if env:
        return env.encode()
    path = data_dir / "webhook_key"
    if not path.exists():
        # written whole to a temporary file, then linked into place: a crash never leaves an empty key behind
        tmp = data_dir / f".webhook_key.{os.getpid()}.{os.urandom(4).hex()}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(base64.urlsafe_b64encode(os.urandom(32)))
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:  # another process made it first
            pass
        finally:
            tmp.unlink(missing_ok=True)
    key = path.read_bytes().strip()
    if len(key) < MIN_KEY_BYTES:  # never sign with a short or empty key (secrets would be guessable)
        raise RuntimeError(f"the webhook key in {path} is shorter than {MIN_KEY_BYTES} bytes; remove it to have a new "
                           "one made (every webhook's secret changes) or set TUNELOG_WEBHOOK_KEY")
    return key


def secret_for(data_dir: Path, webhook_id: str) -> str:
    """The webhook's signing secret, in Standard Webhooks' form (whsec_ + base64 of the key bytes)."""
    raw = hmac.new(_instance_key(data_dir), webhook_id.encode(), hashlib.sha256).digest()
    return "whsec_" + base64.b64encode(raw).decode()


def payload(e, name: str) -> dict[str, Any]:
    return {"type": name, "timestamp": e.recorded_at.astimezone(datetime.UTC).isoformat(),
            "data": {"position": e.global_position, "stream": e.stream_id, **_public(e.type, e.data)}}


def _public(type_: str, data: dict[str, Any]) -> dict[str, Any]:
    """What a receiver gets: the event's data without paths inside the server."""
    return {k: v for k, v in data.items() if k not in ("artifact_path", "path")}


class Deliverer:
    """Delivers each live webhook's events after its cursor, one at a time, in log order."""

    def __init__(self, svc, poll_seconds: float = 1.0):
        self.svc = svc
        self.poll = poll_seconds
        self.state: dict[str, dict[str, Any]] = {}  # webhook id -> cursor, failures, next try, version
        self.projects: dict[str, str | None] = {}  # stream -> project, from the stream's first event
        self._http = None

    def http(self):
        if self._http is None:
            import httpx

            self._http = httpx.Client(timeout=TIMEOUT, follow_redirects=False)
        return self._http

    def _load(self, webhook: dict[str, Any]) -> dict[str, Any]:
        """A webhook's delivery state, read back from its stream."""
        events = self.svc.store.read_stream(webhook_stream(webhook["id"]))
        cursor = webhook["created_position"]
        failures = 0
        next_at = 0.0
        for e in events:
            if e.type == "WebhookDelivered":
                cursor, failures = max(cursor, e.data["position"]), 0
            elif e.type == "WebhookDisabled":
                next_at = float("inf")
            elif e.type == "WebhookDeliveryFailed":
                failures = e.data["attempt"]
                next_at = e.recorded_at.timestamp() + e.data["retry_in"]
        return {"cursor": cursor, "failures": failures, "next_at": next_at,
                "version": events[-1].stream_version if events else 0, "deleted": any(
                    e.type == "WebhookDeleted" for e in events)}

    def _project(self, stream_id: str) -> str | None:
        if stream_id not in self.projects:
            with self.svc.pool.connection() as c:
                row = c.execute("SELECT data->>'project' AS p FROM events WHERE stream_id = %s "
                                "AND stream_version = 1", (stream_id,)).fetchone()
            self.projects[stream_id] = row["p"] if row else None
        return self.projects[stream_id]

    def round(self) -> int:
        """One pass over every live webhook; the number of attempts made."""
        with self.svc.pool.connection() as c:
            hooks = c.execute("SELECT id, project, url, event_types, created_position FROM webhooks "
                              "WHERE deleted_at IS NULL ORDER BY seq").fetchall()
        live = {h["id"] for h in hooks}
        for gone in set(self.state) - live:
            self.state.pop(gone)
        attempts = 0
        for h in hooks:
            try:  # one webhook's trouble never holds up the others
                st = self.state.get(h["id"]) or self.state.setdefault(h["id"], self._load(h))
                if st["deleted"] or time.time() < st["next_at"]:
                    continue
                attempts += self._deliver_next(h, st)
            except Exception:  # noqa: BLE001 - read back from the log next round
                log.exception("webhook %s: delivery round failed", h["id"])
                self.state.pop(h["id"], None)
        return attempts

    def _deliver_next(self, h: dict[str, Any], st: dict[str, Any]) -> int:
        from standardwebhooks.webhooks import Webhook

        from domain.errors import ConcurrencyConflict
        from eventlog.store import NewEvent

        types = [EVENT_TYPES[t] for t in h["event_types"]]
        made = 0
        while made < PER_ROUND:
            with self.svc.pool.connection() as c:
                rows = c.execute("SELECT global_position FROM events WHERE global_position > %s AND type = ANY(%s) "
                                 "ORDER BY global_position LIMIT 200", (st["cursor"], types)).fetchall()
            if not rows:
                return made
            for row in rows:
                e = self.svc.store.read_all(after=row["global_position"] - 1, limit=1)[0]
                if self._project(e.stream_id) != h["project"]:
                    st["cursor"] = e.global_position  # not this project's: passed over (found again on restart)
                    continue
                msg_id = f"msg_{h['id']}_{e.global_position}"
                body = json.dumps(payload(e, NAMES[e.type]), separators=(",", ":"))
                now = datetime.datetime.now(datetime.UTC)
                signature = Webhook(secret_for(self.svc.settings.data_dir, h["id"])).sign(msg_id, now, body)
                headers = {"content-type": "application/json", "webhook-id": msg_id,
                           "webhook-timestamp": str(int(now.timestamp())), "webhook-signature": signature,
                           "user-agent": "tunelog-webhooks"}
                attempt = st["failures"] + 1
                started = time.monotonic()
                status, error = None, None
                try:
                    check_url(h["url"])  # the allowlist may have changed since it was created
                    # only the status is read: a receiver's body (however long) is never loaded
                    with self.http().stream("POST", h["url"], content=body, headers=headers) as resp:
                        status = resp.status_code
                except ValidationError as ex:
                    error = ex.message
                except Exception as ex:  # noqa: BLE001 - a receiver's failure is recorded, never raised
                    error = f"{type(ex).__name__}: {str(ex)[:200]}"
                ms = round((time.monotonic() - started) * 1000, 1)
                made += 1
                meta = {"actor": "webhooks", "correlation_id": h["id"], "causation_id": str(e.global_position)}
                if status is not None and 200 <= status < 300:
                    new = NewEvent("WebhookDelivered", {"webhook_id": h["id"], "position": e.global_position,
                                                        "event_type": NAMES[e.type], "message_id": msg_id,
                                                        "attempt": attempt, "status": status, "ms": ms,
                                                        "at": int(time.time())}, meta)
                elif attempt >= MAX_ATTEMPTS:  # failing for days: stop, and say so
                    new = NewEvent("WebhookDisabled", {"id": h["id"], "reason": f"{attempt} failed attempts; the last: "
                                                       f"{status or error}", "at": int(time.time())}, meta)
                else:
                    wait = min(MAX_BACKOFF, 2.0 ** min(attempt - 1, 16))
                    new = NewEvent("WebhookDeliveryFailed", {
                        "webhook_id": h["id"], "position": e.global_position, "event_type": NAMES[e.type],
                        "message_id": msg_id, "attempt": attempt, "status": status, "error": error, "ms": ms,
                        "retry_in": wait, "at": int(time.time())}, meta)
                try:
                    self.svc.store.append(webhook_stream(h["id"]), st["version"], [new])
                except ConcurrencyConflict:  # deleted, or another deliverer: read it back
                    self.state.pop(h["id"], None)
                    return made
                st["version"] += 1
                if new.type == "WebhookDisabled":
                    st["deleted"] = True
                    log.error("webhook %s disabled after %s failed attempts", h["id"], attempt)
                    return made
                if new.type == "WebhookDelivered":
                    st["cursor"], st["failures"] = e.global_position, 0
                else:
                    st["failures"], st["next_at"] = attempt, time.time() + new.data["retry_in"]
                    log.warning("webhook %s: delivery of %s failed (attempt %s: %s); retrying in %.0f s", h["id"],
                                msg_id, attempt, status or error, new.data["retry_in"])
                    return made

    def run(self, stop: threading.Event) -> None:
        from eventlog.db import connect

        holder = None
        while not stop.is_set():
            try:
                if holder is None:
                    holder = connect(self.svc.settings.database_url)
                    if not holder.execute("SELECT pg_try_advisory_lock(%s) AS ok", (ADVISORY_KEY,)).fetchone()["ok"]:
                        holder.close()
                        holder = None
                        stop.wait(2.0)
                        continue
                    self.state.clear()  # read every cursor back from the log
                holder.execute("SELECT 1")  # still holding the lock (a dead session would have lost it)
                self.round()
            except Exception:  # noqa: BLE001 - outages and bugs alike: back off and go on
                log.exception("webhook delivery round failed")
                if holder is not None:
                    try:
                        holder.close()
                    except Exception:  # noqa: BLE001
                        pass
                holder = None
                self.state.clear()
                stop.wait(2.0)
                continue
            stop.wait(self.poll)
