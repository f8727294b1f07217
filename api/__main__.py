"""`python -m api`: serve with gunicorn (threads, one process: metrics and caches stay in one place)."""
from __future__ import annotations

import os
import sys


def main() -> None:
    port = os.environ.get("TUNELOG_PORT", "8000")
    host = os.environ.get("TUNELOG_HOST", "127.0.0.1")
    threads = os.environ.get("TUNELOG_WEB_THREADS", "16")
    args = ["gunicorn", "--workers", "1", "--threads", threads, "--worker-class", "gthread",
            "--bind", f"{host}:{port}", "--graceful-timeout", "5", "--timeout", "120",
            "--access-logfile", "-", "--no-control-socket",
            "--access-logformat", '%(h)s "%(r)s" %(s)s %(b)s %(L)ss',
            "api:create_app()"]
    os.execvp(sys.executable, [sys.executable, "-m", *args])


if __name__ == "__main__":
    main()
