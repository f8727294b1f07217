"""scripts/serve as a new user runs it: embedded servers, a generated admin key, a clean stop, and a
second start that keeps its data. Two instances run side by side from one checkout."""
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import requests

from eventlog.settings import ROOT
from tests.conftest import MODEL_DIR
from tests.helpers import free_port

pytestmark = pytest.mark.slow


def start(data_dir, port):
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "TUNELOG_API_KEY")}
    env.update(TUNELOG_DATA_DIR=str(data_dir), TUNELOG_PORT=str(port), TUNELOG_MODEL_DIR=str(MODEL_DIR))
    log = open(data_dir.parent / f"serve-{port}.log", "wb")
    return subprocess.Popen([str(ROOT / "scripts" / "serve")], env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)


def wait_up(port, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if requests.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.3)
    raise AssertionError("scripts/serve did not come up")


def stop(proc) -> float:
    t0 = time.monotonic()
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(30)
    return time.monotonic() - t0


@pytest.fixture
def root():
    """Under /tmp itself, not pytest's tmp_path: its 0700 pytest-of-<user> folder, which another pytest
    session may close again, would stop the embedded Postgres (its own user when we are root)."""
    d = Path(tempfile.mkdtemp(prefix="tunelog-serve-"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_serve_starts_embedded_everything_stops_cleanly_and_restarts_on_its_data(root):
    a, b = root / "a", root / "b"
    a.mkdir()
    b.mkdir()
    pa, pb = free_port(), free_port()
    sa, sb = start(a, pa), start(b, pb)
    try:
        wait_up(pa)
        wait_up(pb)
        key = (a / "admin_key").read_text().strip()
        assert key != (b / "admin_key").read_text().strip()
        r = requests.post(f"http://127.0.0.1:{pa}/api/keys", json={"role": "trainer"},
                          headers={"Authorization": f"Bearer {key}"}, timeout=10)
        assert r.status_code == 201
        assert requests.get(f"http://127.0.0.1:{pb}/v1/models", timeout=10,
                            headers={"Authorization": f"Bearer {key}"}).status_code == 401  # separate data
    finally:
        took = stop(sa)
        stop(sb)
    assert took < 15
    left = subprocess.run(["pgrep", "-f", str(a)], capture_output=True, text=True).stdout.split()
    assert left == [], "every process of the instance stopped, embedded servers included"
    printed = (root / f"serve-{pa}.log").read_text()
    assert key not in printed and f"kept in {a / 'admin_key'}" in printed  # where the key is, never the key

    sa = start(a, pa)
    try:
        wait_up(pa)
        r = requests.get(f"http://127.0.0.1:{pa}/api/keys", headers={"Authorization": f"Bearer {key}"}, timeout=10)
        assert r.status_code == 200 and len(r.json()["data"]) == 2  # admin + the trainer from the first run
    finally:
        stop(sa)
