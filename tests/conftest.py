"""Session fixtures: one embedded Postgres (pgvector) and one embedded Redis, started by the tests
themselves under a temporary folder; a fresh migrated database per purpose; the service's processes."""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from eventlog.embedded import EmbeddedPostgres, EmbeddedRedis
from eventlog.settings import ROOT, Settings
from tests.helpers import Stack, create_database, free_port

DATA = Path(__file__).parent / "data"
MODEL_DIR = Path(os.environ.get("TUNELOG_MODEL_DIR") or ROOT / ".data" / "models")


@pytest.fixture(scope="session")
def tmp_root():
    d = Path(tempfile.mkdtemp(prefix="tunelog-test-"))
    yield d
    if not os.environ.get("TUNELOG_KEEP_TEST_DATA"):  # keep the stack's logs to read after a failure
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_server(tmp_root):
    """A Postgres server URL (TEST_DATABASE_URL to use a real one with pgvector; else embedded)."""
    if os.environ.get("TEST_DATABASE_URL"):
        yield os.environ["TEST_DATABASE_URL"]
        return
    pg = EmbeddedPostgres(tmp_root / "pg", dbname="postgres")
    url = pg.start()
    yield url
    pg.stop()


@pytest.fixture(scope="session")
def redis_server(tmp_root):
    if os.environ.get("TEST_REDIS_URL"):
        yield os.environ["TEST_REDIS_URL"]
        return
    r = EmbeddedRedis(tmp_root / "redis")
    url = r.start()
    yield url
    r.stop()


@pytest.fixture(scope="session")
def base_model():
    from eventlog.catalog import ensure_base_model

    return ensure_base_model(MODEL_DIR, "smollm2-135m-instruct")


@pytest.fixture
def db_url(pg_server, request):
    """A fresh migrated database for one integration test."""
    name = "it_" + request.node.name.lower()[:40].replace("[", "_").replace("]", "").replace("-", "_")
    return create_database(pg_server, name)


@pytest.fixture
def settings(db_url, redis_server, tmp_path) -> Settings:
    return Settings(data_dir=tmp_path, database_url=db_url, redis_url=redis_server, model_dir=MODEL_DIR,
                    lease_seconds=3.0, max_attempts=2)


@pytest.fixture(scope="session")
def stack(pg_server, redis_server, tmp_root, base_model):
    """API, projector, dispatcher and one cpu worker, on their own database, from the Procfile."""
    from eventlog.keys import register_key

    db = create_database(pg_server, "e2e")
    data_dir = tmp_root / "stack"
    data_dir.mkdir()
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": db, "REDIS_URL": redis_server, "TUNELOG_DATA_DIR": str(data_dir),
        "TUNELOG_MODEL_DIR": str(MODEL_DIR), "TUNELOG_PORT": str(port), "TUNELOG_TRAINING_QUEUE": "cpu",
        "TUNELOG_LEASE_SECONDS": "4", "TUNELOG_MAX_ATTEMPTS": "3", "TUNELOG_MAX_UPLOAD_BYTES": str(512 * 1024),
        "TUNELOG_WEB_THREADS": "8", "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "TUNELOG_PRELOAD_MODELS": "1",
        "PATH": f"{Path(os.sys.executable).parent}:{os.environ.get('PATH', '')}",
    }
    s = Stack(env=env, data_dir=data_dir, port=port)
    admin = "tl-test-admin-" + os.urandom(8).hex()
    register_key(db, admin, role="operator", project="default", name="test operator")
    s.admin_key = admin
    for name, instance in (("web", None), ("projector", None), ("dispatcher", None),
                           ("worker-cpu", "worker-cpu.1"), ("worker-cpu", "worker-cpu.2")):
        s.start(name, instance)
    s.wait_healthy()
    yield s
    s.stop_all()
