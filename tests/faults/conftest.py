"""A stack of its own for fault tests: its own embedded Postgres and Redis (so a test may stop, flush and
restart them without touching the other tests' servers), the API, projector, dispatcher and two cpu
workers from the Procfile."""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest

from eventlog.embedded import EmbeddedPostgres, EmbeddedRedis
from tests.conftest import MODEL_DIR
from tests.helpers import create_database, launch_stack


@pytest.fixture(scope="module")
def fault_stack(base_model):
    # not under pytest's tmp folder: a concurrent pytest session resets that to 0700, which locks the
    # embedded Postgres (run as an unprivileged user when we are root) out of its own data directory
    root = Path(tempfile.mkdtemp(prefix="tunelog-faults-"))
    pg = EmbeddedPostgres(root / "pg", dbname="postgres")
    rd = EmbeddedRedis(root / "redis")
    db = create_database(pg.start(), "faults")
    s = launch_stack(db, rd.start(), root / "stack", MODEL_DIR, TUNELOG_WEB_THREADS="16",
                     TUNELOG_PRELOAD_MODELS="0")
    s.pg, s.redis_server = pg, rd
    yield s
    s.stop_all()
    rd.stop()
    pg.stop()
    shutil.rmtree(root, ignore_errors=True)
