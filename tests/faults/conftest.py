"""A stack of its own for fault tests: its own embedded Postgres and Redis (so a test may stop, flush and
restart them without touching the other tests' servers), the API, projector, dispatcher and two cpu
workers from the Procfile."""
from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import pytest
import requests

from eventlog.embedded import EmbeddedPostgres, EmbeddedRedis
from tests.conftest import MODEL_DIR
from tests.helpers import Stack, create_database, free_port


@pytest.fixture(scope="module")
def fault_stack(base_model):
    from eventlog.keys import register_key

    # not under pytest's tmp folder: a concurrent pytest session resets that to 0700, which locks the
    # embedded Postgres (run as an unprivileged user when we are root) out of its own data directory
    root = Path(tempfile.mkdtemp(prefix="tunelog-faults-"))
    pg = EmbeddedPostgres(root / "pg", dbname="postgres")
    rd = EmbeddedRedis(root / "redis")
    db = create_database(pg.start(), "faults")
    redis_url = rd.start()
    data_dir = root / "stack"
    data_dir.mkdir()
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": db, "REDIS_URL": redis_url, "TUNELOG_DATA_DIR": str(data_dir),
        "TUNELOG_MODEL_DIR": str(MODEL_DIR), "TUNELOG_PORT": str(port), "TUNELOG_TRAINING_QUEUE": "cpu",
        "TUNELOG_LEASE_SECONDS": "4", "TUNELOG_MAX_ATTEMPTS": "3", "TUNELOG_WEB_THREADS": "16",
        "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "TUNELOG_PRELOAD_MODELS": "0",
        "PATH": f"{Path(os.sys.executable).parent}:{os.environ.get('PATH', '')}",
    }
    s = Stack(env=env, data_dir=data_dir, port=port)
    s.admin_key = "tl-fault-op-" + os.urandom(8).hex()
    register_key(db, s.admin_key, role="operator", project="default", name="fault operator")
    for name, instance in (("web", None), ("projector", None), ("dispatcher", None),
                           ("worker-cpu", "worker-cpu.1"), ("worker-cpu", "worker-cpu.2")):
        s.start(name, instance)
    s.wait_healthy()
    s.pg, s.redis_server = pg, rd
    yield s
    s.stop_all()
    rd.stop()
    pg.stop()
    shutil.rmtree(root, ignore_errors=True)


def wait_for(predicate, timeout: float, interval: float = 0.3, what: str = "condition"):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
            if last:
                return last
        except (requests.RequestException, ValueError):
            pass
        time.sleep(interval)
    raise AssertionError(f"{what} not met within {timeout}s (last: {last!r})")
