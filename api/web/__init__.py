"""The web UI (served by Flask, no CDN: plain JS, bundled here) and the SSE feed of a job's events."""
from __future__ import annotations

import json
import time
from pathlib import Path

from flask import Blueprint, Response, g, send_from_directory, stream_with_context

from api.common import svc
from api.openai_compat import _get_job, event_object
from domain.events import job_stream
from domain.jobs import TERMINAL

STATIC = Path(__file__).parent / "static"
bp = Blueprint("web", __name__)

# Sent on every response of the app (not only the UI's): the UI keeps an API key in localStorage, so no
# script may run but our own file, nothing may frame us, and nothing is sniffed into HTML.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'")
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
}


@bp.after_app_request
def security_headers(resp: Response) -> Response:
    # Headers only: the body (a JSON document or a streamed text/event-stream) is left untouched.
    for name, value in SECURITY_HEADERS.items():
        resp.headers[name] = value
    return resp


@bp.get("/")
def index():
    return send_from_directory(STATIC, "index.html")


@bp.get("/ui/<path:name>")
def static_file(name: str):
    return send_from_directory(STATIC, name)


@bp.get("/api/jobs/<job_id>/stream")
def job_stream_sse(job_id: str):
    """Server-sent events: every event of the job (history first), then new ones as they are appended,
    until the job ends. Each message is a fine_tuning.job.event plus the job's status."""
    _get_job(job_id)  # 404 for another project's job
    project = g.principal.project
    pool = svc().pool

    def events():
        last, last_beat = 0, time.monotonic()
        while True:
            with pool.connection() as c:
                rows = c.execute("SELECT global_position, type, data, recorded_at FROM events WHERE stream_id = %s "
                                 "AND global_position > %s ORDER BY global_position",
                                 (job_stream(job_id), last)).fetchall()
                status = c.execute("SELECT status FROM jobs WHERE id = %s AND project = %s",
                                   (job_id, project)).fetchone()["status"]
            for r in rows:
                last = r["global_position"]
                yield f"id: {last}\nevent: job\ndata: {json.dumps({**event_object(r), 'status': status})}\n\n"
            if status in TERMINAL and not rows:
                yield f"event: end\ndata: {json.dumps({'status': status})}\n\n"
                return
            if time.monotonic() - last_beat > 15:
                last_beat = time.monotonic()
                yield ": keep-alive\n\n"
            time.sleep(0.5)

    return Response(stream_with_context(events()), mimetype="text/event-stream",
                    headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
