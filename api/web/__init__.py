"""The web UI (served by Flask, no CDN: plain JS, bundled here) and the SSE feed of a job's events."""
from __future__ import annotations

from pathlib import Path

from flask import Blueprint, Response, send_from_directory

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
    """Server-sent events of a job's events, bounded per key, in time and by revocation (api/streams.py)."""
    from api.streams import job_events

    return job_events(job_id)
