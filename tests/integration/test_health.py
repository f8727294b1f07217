"""/healthz tells which dependency is down (503); requests answer 503, not 500, without Postgres."""
from dataclasses import replace

from api import create_app
from eventlog.settings import Settings


def client(settings: Settings):
    return create_app({"settings": settings}).test_client()


def test_healthy_when_postgres_and_redis_answer_and_each_missing_part_is_named(settings):
    r = client(settings).get("/healthz")
    assert r.status_code == 200 and r.json["postgres"] == "ok" and r.json["redis"] == "ok"
    # nothing else runs in this test: every part is reported down, the API itself still answers 200
    assert r.json["status"] == "degraded"
    assert {k: v["status"] for k, v in r.json["parts"].items()} == {
        "projector": "down", "dispatcher": "down", "worker-cpu": "down", "serving": "down"}


def test_every_part_with_a_fresh_heartbeat_and_an_answering_replica_is_ok(settings, monkeypatch):
    import threading

    from werkzeug.serving import make_server

    from eventlog.db import pool
    from eventlog.heartbeat import Heartbeat
    from tests.helpers import free_port
    from workers.batching import Engine
    from workers.serving import create_app as serving_app

    p = pool(settings.database_url)
    for kind in ("projector", "dispatcher", "worker-cpu"):
        Heartbeat(p, kind).beat()
    # a real serving replica (its engine loads a model only for a first chat: /health needs none)
    monkeypatch.setenv("TUNELOG_DATA_DIR", str(settings.data_dir))
    port = free_port()
    engine = Engine(settings.model_dir, settings.data_dir)
    engine.start()
    replica = make_server("127.0.0.1", port, serving_app(engine), threaded=True)
    threading.Thread(target=replica.serve_forever, daemon=True).start()
    monkeypatch.setenv("TUNELOG_SERVING_URLS", f"http://127.0.0.1:{port}")
    try:
        r = client(settings).get("/healthz")
    finally:
        replica.shutdown()
        engine.stop()
    assert r.status_code == 200 and r.json["status"] == "ok", r.json
    assert r.json["parts"]["projector"] == {"status": "ok", "lag_events": 0, "parked_events": 0}
    assert r.json["parts"]["serving"]["replicas"] == [{"replica": 1, "status": "ok", "running": 0, "waiting": 0}]
    assert str(port) not in r.get_data(as_text=True)  # no internal address to anyone who asks


def test_503_naming_redis_when_redis_is_unreachable(settings):
    r = client(replace(settings, redis_url="redis://127.0.0.1:1/0")).get("/healthz")
    assert r.status_code == 503
    assert r.json["postgres"] == "ok" and r.json["redis"].startswith("unreachable")


def test_503_when_postgres_is_unreachable(settings, tmp_path):
    gone = replace(settings, database_url=f"postgresql://postgres@/nowhere?host={tmp_path}&connect_timeout=1")
    c = client(gone)
    r = c.get("/healthz")
    assert r.status_code == 503 and r.json["postgres"].startswith("unreachable")
    assert r.headers["Retry-After"].isdigit()
    r = c.get("/v1/models", headers={"Authorization": "Bearer tl-anything"})
    assert r.status_code == 503 and r.json["error"]["code"] == "database_unavailable"
    assert int(r.headers["Retry-After"]) > 0
