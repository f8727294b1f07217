"""Idempotency, cancel, files and the ops endpoints over HTTP."""
import uuid

from tests.conftest import DATA

GOOD = (DATA / "tiny_train.jsonl").read_bytes()


def test_an_idempotency_key_retry_returns_the_first_response_and_appends_nothing(stack):
    k = stack.new_key("trainer")["key"]
    idem = {"Idempotency-Key": uuid.uuid4().hex}
    f1 = stack.http("POST", "/v1/files", k, files={"file": ("t.jsonl", GOOD)}, data={"purpose": "fine-tune"},
                    headers=dict(idem))
    count = stack.sql("SELECT count(*) AS n FROM events")[0]["n"]
    f2 = stack.http("POST", "/v1/files", k, files={"file": ("t.jsonl", GOOD)}, data={"purpose": "fine-tune"},
                    headers=dict(idem))
    assert f1.status_code == f2.status_code == 200
    assert f1.json() == f2.json() and f2.headers.get("Idempotent-Replayed") == "true"
    assert stack.sql("SELECT count(*) AS n FROM events")[0]["n"] == count

    body = {"model": "smollm2-135m-instruct", "training_file": f1.json()["id"]}
    jidem = {"Idempotency-Key": uuid.uuid4().hex}
    j1 = stack.http("POST", "/v1/fine_tuning/jobs", k, json=body, headers=dict(jidem))
    j2 = stack.http("POST", "/v1/fine_tuning/jobs", k, json=body, headers=dict(jidem))
    assert j1.json()["id"] == j2.json()["id"]
    assert len(stack.http("GET", "/v1/fine_tuning/jobs", k).json()["data"]) == 1
    reused = stack.http("POST", "/v1/fine_tuning/jobs", k, json={**body, "suffix": "other"}, headers=dict(jidem))
    assert reused.status_code == 422 and reused.json()["error"]["code"] == "idempotency_key_reused"
    stack.http("POST", f"/v1/fine_tuning/jobs/{j1.json()['id']}/cancel", k)


def test_a_queued_job_is_cancelled_at_once_and_cancel_is_repeatable(stack):
    k = stack.new_key("trainer")["key"]
    fid = stack.http("POST", "/v1/files", k, files={"file": ("t.jsonl", GOOD)},
                     data={"purpose": "fine-tune"}).json()["id"]
    stopped = stack.stop_cpu_workers()  # nothing picks the job up
    try:
        job = stack.http("POST", "/v1/fine_tuning/jobs", k, json={"model": "smollm2-135m-instruct",
                                                                  "training_file": fid}).json()
        r = stack.http("POST", f"/v1/fine_tuning/jobs/{job['id']}/cancel", k)
        assert r.status_code == 200 and r.json()["status"] == "cancelled"
        again = stack.http("POST", f"/v1/fine_tuning/jobs/{job['id']}/cancel", k)
        assert again.status_code == 200 and again.json()["status"] == "cancelled"
        assert stack.http("GET", f"/v1/fine_tuning/jobs/{job['id']}", k).json()["status"] == "cancelled"
    finally:
        stack.start_cpu_workers(stopped)


def test_deleting_a_file(stack):
    k = stack.new_key("trainer")["key"]
    fid = stack.http("POST", "/v1/files", k, files={"file": ("t.jsonl", GOOD)},
                     data={"purpose": "fine-tune"}).json()["id"]
    r = stack.http("DELETE", f"/v1/files/{fid}", k)
    assert r.json() == {"id": fid, "object": "file", "deleted": True}
    assert stack.http("GET", f"/v1/files/{fid}", k).status_code == 404
    assert stack.http("DELETE", f"/v1/files/{fid}", k).status_code == 404


def test_health_metrics_and_openapi_need_no_key(stack):
    from tests.helpers import wait_for

    h = stack.http("GET", "/healthz")
    assert h.status_code == 200 and h.json()["postgres"] == "ok" and h.json()["redis"] == "ok"
    # every part of the stack reports in (workers may still be importing their libraries)
    h = wait_for(lambda: (r := stack.http("GET", "/healthz")).json()["status"] == "ok" and r, 60, what="all ok")
    assert set(h.json()["parts"]) == {"projector", "dispatcher", "worker-cpu", "serving"}
    assert [r["status"] for r in h.json()["parts"]["serving"]["replicas"]] == ["ok"]
    # both workers, and no more once any heartbeat of a process gone (a stale row ages out in 15 s) has aged out
    wait_for(lambda: stack.http("GET", "/healthz").json()["parts"]["worker-cpu"]["processes"] == 2, 30,
             what="two cpu worker processes")
    assert "tunelog_http_requests_total" in stack.http("GET", "/metrics").text
    doc = stack.http("GET", "/openapi.json").json()
    assert doc["openapi"].startswith("3.") and "/v1/fine_tuning/jobs" in doc["paths"]


def test_the_audit_log_is_the_projects_own_and_carries_metadata(stack):
    trainer = stack.new_key("trainer")
    r = stack.http("GET", "/api/events?limit=1000", trainer["key"])  # its own project's streams, no key hashes
    assert r.status_code == 200
    assert {e["stream_id"] for e in r.json()["data"]} == {f"key-{trainer['id']}"}
    assert all(e["data"]["key_hash"] is None for e in r.json()["data"])
    r = stack.http("GET", "/api/events?limit=5", stack.admin_key)
    assert r.status_code == 200
    ev = r.json()["data"][0]
    assert {"global_position", "stream_id", "stream_version", "type", "data", "metadata", "recorded_at"} <= set(ev)


def test_keys_are_stored_hashed_never_in_clear(stack):
    key = stack.new_key("trainer")
    rows = stack.sql("SELECT data::text AS d FROM events WHERE type = 'KeyCreated'")
    assert all(key["key"] not in r["d"] for r in rows)
    assert stack.sql("SELECT count(*) AS n FROM api_keys WHERE id = %s", (key["id"],))[0]["n"] == 1


def test_replay_over_http_rebuilds_the_same_read_models(stack):
    tables = ["jobs", "files", "job_checkpoints", "api_keys", "models", "documents", "chunks", "aliases",
              "project_settings", "chat_answers", "chat_feedback"]
    head = "SELECT max(global_position) AS p FROM events"
    for _ in range(5):  # compare at a quiet moment (no job of an earlier test appending meanwhile)
        h0 = stack.sql(head)[0]["p"]
        stack.http("GET", "/v1/models", stack.admin_key)
        before = {t: stack.sql(f"SELECT * FROM {t} ORDER BY 1") for t in tables}
        r = stack.http("POST", "/api/admin/replay", stack.admin_key)
        assert r.status_code == 200 and r.json()["events"] > 0
        after = {t: stack.sql(f"SELECT * FROM {t} ORDER BY 1") for t in tables}
        if stack.sql(head)[0]["p"] == h0:
            break
    assert after == before
    assert stack.http("POST", "/api/admin/replay", stack.new_key("trainer")["key"]).status_code == 403


def test_a_revoked_key_stops_working_at_once(stack):
    admin = stack.new_key("admin")
    trainer = stack.new_key("trainer", project=admin["project"])
    assert stack.http("GET", "/v1/files", trainer["key"]).status_code == 200
    assert stack.http("DELETE", f"/api/keys/{trainer['id']}", trainer["key"]).status_code == 403
    r = stack.http("DELETE", f"/api/keys/{trainer['id']}", admin["key"])
    assert r.status_code == 200 and r.json()["revoked"] is True
    assert stack.http("GET", "/v1/files", trainer["key"]).status_code == 401
    other_admin = stack.new_key("admin")  # another project's admin does not even see it
    assert stack.http("DELETE", f"/api/keys/{trainer['id']}", other_admin["key"]).status_code == 404
    listed = {k["id"]: k for k in stack.http("GET", "/api/keys", admin["key"]).json()["data"]}
    assert listed[trainer["id"]]["revoked"] is True
