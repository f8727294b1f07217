"""Where the examples find tunelog: TUNELOG_URL (default the local instance) and TUNELOG_API_KEY (default the
local operator key in .data/admin_key)."""
from __future__ import annotations

import os
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
URL = os.environ.get("TUNELOG_URL", "http://127.0.0.1:8000").rstrip("/")


def key() -> str:
    """TUNELOG_API_KEY, or the local operator key (only for a tunelog on this machine)."""
    if os.environ.get("TUNELOG_API_KEY"):
        return os.environ["TUNELOG_API_KEY"]
    if not URL.startswith(("http://127.0.0.1", "http://localhost")):
        raise SystemExit("set TUNELOG_API_KEY: the local operator key is only sent to a tunelog on this machine")
    return (ROOT / ".data" / "admin_key").read_text().strip()


def wait(get, done, timeout: float = 900, every: float = 2.0):
    """Poll `get()` until `done(result)`; the last result."""
    deadline = time.monotonic() + timeout
    while True:
        result = get()
        if done(result):
            return result
        if time.monotonic() > deadline:
            raise SystemExit(f"gave up waiting after {timeout:.0f} s: {result}")
        time.sleep(every)
