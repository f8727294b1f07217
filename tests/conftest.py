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
from tests.helpers import create_database, launch_stack

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


@pytest.fixture
def svc(settings):
    """The real services (Postgres store, Redis on a database of its own, emptied) for one test."""
    import redis

    from eventlog.bootstrap import Services
    from eventlog.db import pool
    from eventlog.store import EventStore

    s = settings.__class__(**{**settings.__dict__, "redis_url": settings.redis_url + "?db=3"})
    r = redis.Redis.from_url(s.redis_url)
    r.flushdb()
    yield Services(settings=s, store=EventStore(pool(s.database_url)))
    r.flushdb()


@pytest.fixture(scope="session")
def stack(pg_server, redis_server, tmp_root, base_model):
    """API, projector, dispatcher and two cpu workers, on their own database, from the Procfile."""
    s = launch_stack(create_database(pg_server, "e2e"), redis_server, tmp_root / "stack", MODEL_DIR,
                     TUNELOG_MAX_UPLOAD_BYTES=str(512 * 1024), TUNELOG_WEB_THREADS="8", TUNELOG_PRELOAD_MODELS="1",
                     TUNELOG_WEBHOOK_HOSTS="127.0.0.1")
    yield s
    s.stop_all()


def pytest_collection_modifyitems(config, items):
    """Soak variants (more trials, more load) run only with TUNELOG_SOAK=1: CI runs their bounded versions."""
    if os.environ.get("TUNELOG_SOAK"):
        return
    skip = pytest.mark.skip(reason="a soak variant: set TUNELOG_SOAK=1 to run it")
    for item in items:
        if "soak" in item.keywords:
            item.add_marker(skip)
