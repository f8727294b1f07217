"""`python -m api`: serve with gunicorn (threads, one process: metrics and caches stay in one place)."""
from __future__ import annotations

import os
import sys

from api.limits import web_threads


def gunicorn_args(app: str, host: str, port: str) -> list[str]:
    """gunicorn's command line for `app` (the benchmark's bare baseline runs on exactly these settings)."""
    # Half of the threads at most serve long requests (chat generation, SSE: api/limits.py), so the
    # other half always answer /healthz, auth and reads, whatever the long ones do.
    threads = str(web_threads())
    return ["gunicorn", "--workers", "1", "--threads", threads, "--worker-class", "gthread",
            "--bind", f"{host}:{port}", "--graceful-timeout", "5", "--timeout", "120",
            # idle keep-alive connections stay open a minute (gthread parks them in its poller, no thread):
            # with gunicorn's 2 s default, a client that pauses between polls (the openai SDK does) can
            # send on a connection the server is closing and get "connection reset"
            "--keep-alive", "65",
            "--access-logfile", "-", "--no-control-socket",
            "--access-logformat", '%(h)s "%(r)s" %(s)s %(b)s %(L)ss', app]


def main() -> None:
    port = os.environ.get("TUNELOG_PORT", "8000")
    host = os.environ.get("TUNELOG_HOST", "127.0.0.1")
    os.execvp(sys.executable, [sys.executable, "-m", *gunicorn_args("api:create_app()", host, port)])


if __name__ == "__main__":
    main()
