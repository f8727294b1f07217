"""The SSE feed of a job's events (GET /api/jobs/<id>/stream), bounded (api/limits.py): a few open
streams per key and a slot among the long requests, a maximum duration after which the stream ends with
a `reconnect` event (EventSource reconnects by itself, resuming after Last-Event-ID), and a re-check of
the key every few seconds, so a revoked key's stream ends at once. A Postgres outage pauses the stream
(keep-alives go on) instead of ending it."""
from __future__ import annotations

import json
import time

import psycopg
from flask import Response, g, request, stream_with_context
from psycopg_pool import PoolTimeout

from api import limits
from api.common import svc
from api.openai_compat import _get_job, event_object
from domain.events import job_stream, upcast
from domain.jobs import TERMINAL

POLL_SECONDS = 0.5
KEEP_ALIVE_SECONDS = 15
OUTAGE_SECONDS = 90  # a stream rides out a Postgres outage this long before asking the client to come back


def _after() -> int:
    """Resume after the Last-Event-ID a reconnecting EventSource sends (event ids are log positions)."""
    raw = request.headers.get("Last-Event-ID", "").strip()
    return int(raw) if raw.isdigit() else 0


def _message(event: str, data: dict, event_id: int | None = None) -> str:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event}\ndata: {json.dumps(data)}\n\n"


def job_events(job_id: str) -> Response:
    """Every event of the job (history first, or after Last-Event-ID), then new ones as they are appended,
    until the job ends (`end`), the key is revoked (`error`), or the stream has been open for its maximum
    duration (`reconnect`). Each `job` message is a fine_tuning.job.event plus the job's status."""
    _get_job(job_id)  # 404 for another project's job
    key_id, project = g.principal.key_id, g.principal.project
    lim = limits.limits()
    pool = svc().pool
    after = _after()
    gone = limits.disconnect_probe()
    lease = limits.acquire("stream")

    def poll(c, last: int, check_key: bool):
        """One look at the log: (key still valid, new events after `last`, the job's status)."""
        if check_key and c.execute("SELECT 1 FROM api_keys WHERE id = %s AND NOT revoked",
                                   (key_id,)).fetchone() is None:
            return False, [], None
        rows = c.execute("SELECT global_position, type, data, recorded_at FROM events "
                         "WHERE stream_id = %s AND global_position > %s ORDER BY global_position",
                         (job_stream(job_id), last)).fetchall()
        job = c.execute("SELECT status FROM jobs WHERE id = %s AND project = %s", (job_id, project)).fetchone()
        return True, rows, job["status"] if job else None

    def events():
        try:
            last, started = after, time.monotonic()
            last_beat, next_key_check = started, started + lim.key_recheck_seconds
            outage_since: float | None = None
            while True:
                now = time.monotonic()
                check_key = now >= next_key_check
                try:
                    with pool.connection() as c:
                        key_valid, rows, status = poll(c, last, check_key)
                except (psycopg.OperationalError, PoolTimeout):
                    # Postgres is away: the stream stays open (keep-alives) and polls again; past the
                    # outage budget it ends with `reconnect`, as at its maximum duration.
                    outage_since = outage_since or now
                    if now - outage_since > OUTAGE_SECONDS:
                        yield "retry: 5000\n" + _message("reconnect", {
                            "last_event_id": last, "reason": "the database is unreachable; reconnect later"})
                        return
                    if now - last_beat > KEEP_ALIVE_SECONDS:
                        last_beat = now
                        yield ": keep-alive (the database is unreachable; retrying)\n\n"
                    time.sleep(1.0)
                    continue
                outage_since = None
                if check_key:
                    next_key_check = now + lim.key_recheck_seconds
                if not key_valid:
                    yield _message("error", {"error": {
                        "code": "invalid_api_key", "message": "this API key was revoked", "param": None,
                        "type": "invalid_request_error"}})
                    return
                for r in rows:
                    last = r["global_position"]
                    type_, data = upcast(r["type"], r["data"])
                    ev = event_object({**r, "type": type_, "data": data})
                    yield _message("job", {**ev, "status": status}, last)
                if (status is None or status in TERMINAL) and not rows:
                    yield _message("end", {"status": status})
                    return
                if now - started >= lim.stream_seconds:
                    # the client reconnects (EventSource does by itself) and resumes after Last-Event-ID
                    yield "retry: 1000\n" + _message("reconnect", {
                        "status": status, "last_event_id": last,
                        "reason": f"streams last at most {lim.stream_seconds:g} s; reconnect to continue"})
                    return
                if now - last_beat > KEEP_ALIVE_SECONDS:
                    last_beat = now
                    yield ": keep-alive\n\n"
                time.sleep(POLL_SECONDS)
                if gone():  # the client left: free its slot now, not at the next failed keep-alive
                    return
        finally:  # also when the client goes away (the generator is closed)
            lease.release()

    try:
        resp = Response(stream_with_context(events()), mimetype="text/event-stream",
                        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        resp.call_on_close(lease.release)  # a stream closed before its first message never ran events()
        return resp
    except BaseException:
        lease.release()
        raise
