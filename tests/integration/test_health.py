"""/healthz tells which dependency is down (503); requests answer 503, not 500, without Postgres."""
from dataclasses import replace

from api import create_app
from eventlog.settings import Settings


def client(settings: Settings):
    return create_app({"settings": settings}).test_client()


def test_healthy_when_postgres_and_redis_answer(settings):
    r = client(settings).get("/healthz")
    assert r.status_code == 200 and r.json == {"status": "ok", "postgres": "ok", "redis": "ok"}


def test_503_naming_redis_when_redis_is_unreachable(settings):
    r = client(replace(settings, redis_url="redis://127.0.0.1:1/0")).get("/healthz")
    assert r.status_code == 503
    assert r.json["postgres"] == "ok" and r.json["redis"].startswith("unreachable")


def test_503_when_postgres_is_unreachable(settings, tmp_path):
    gone = replace(settings, database_url=f"postgresql://postgres@/nowhere?host={tmp_path}&connect_timeout=1")
    c = client(gone)
    r = c.get("/healthz")
    assert r.status_code == 503 and r.json["postgres"].startswith("unreachable")
    r = c.get("/v1/models", headers={"Authorization": "Bearer tl-anything"})
    assert r.status_code == 503 and r.json["error"]["code"] == "database_unavailable"
