"""Faults: cancel mid-run, a worker killed mid-job, Redis losing everything. Nothing is lost."""
import time

import pytest

from tests.conftest import DATA

pytestmark = pytest.mark.slow
GOOD = (DATA / "tiny_train.jsonl").read_bytes()


def upload(stack, key) -> str:
    r = stack.http("POST", "/v1/files", key, files={"file": ("t.jsonl", GOOD)}, data={"purpose": "fine-tune"})
    assert r.status_code == 200, r.text
    return r.json()["id"]


def create(stack, key, fid, n_epochs=1, batch_size=12):
    r = stack.http("POST", "/v1/fine_tuning/jobs", key, json={
        "model": "smollm2-135m-instruct", "training_file": fid,
        "method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": n_epochs,
                                                                            "batch_size": batch_size}}}})
    assert r.status_code == 200, r.text
    return r.json()["id"]


def wait_metrics(stack, key, job_id, timeout=180):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        events = stack.http("GET", f"/v1/fine_tuning/jobs/{job_id}/events?type=metrics", key).json()["data"]
        if events:
            return events
        time.sleep(0.3)
    raise AssertionError("no metrics event in time")


def test_cancelling_a_running_job_stops_it_within_10_seconds(stack):
    key = stack.new_key("trainer")["key"]
    job_id = create(stack, key, upload(stack, key), n_epochs=20, batch_size=2)
    wait_metrics(stack, key, job_id)
    t0 = time.monotonic()
    r = stack.http("POST", f"/v1/fine_tuning/jobs/{job_id}/cancel", key)
    assert r.status_code == 200
    job = stack.wait_job(key, job_id, {"cancelled", "succeeded", "failed"}, timeout=30)
    assert job["status"] == "cancelled"
    assert time.monotonic() - t0 < 10
    messages = [e["message"] for e in stack.http("GET", f"/v1/fine_tuning/jobs/{job_id}/events", key).json()["data"]]
    assert messages[0].startswith("Fine-tuning job cancelled")
    assert not stack.sql("SELECT 1 FROM leases WHERE job_id = %s", (job_id,))


def test_a_worker_killed_mid_job_is_detected_and_the_job_requeued_then_succeeds(stack):
    key = stack.new_key("trainer")["key"]
    job_id = create(stack, key, upload(stack, key), n_epochs=2, batch_size=4)
    wait_metrics(stack, key, job_id)
    lease = stack.sql("SELECT worker, attempt FROM leases WHERE job_id = %s", (job_id,))
    assert lease and lease[0]["attempt"] == 1
    victim = stack.worker_of_job(job_id)
    killed = stack.kill_tree(victim)  # the worker, its work horse and the training process
    assert len(killed) >= 3
    stack.start("worker-cpu", victim)
    job = stack.wait_job(key, job_id, {"succeeded", "failed"}, timeout=300)
    assert job["status"] == "succeeded", job["error"]
    types = [e["type"] for e in stack.sql("SELECT type FROM events WHERE stream_id = %s ORDER BY stream_version",
                                          (f"job-{job_id}",))]
    assert types.count("JobStarted") == 2 and "JobAttemptLost" in types
    lost = stack.sql("SELECT data FROM events WHERE stream_id = %s AND type = 'JobAttemptLost'", (f"job-{job_id}",))
    assert lost[0]["data"]["attempt"] == 1 and lost[0]["data"]["requeued"] is True


def test_jobs_queued_when_redis_loses_everything_still_finish(stack):
    import redis

    key = stack.new_key("trainer")["key"]
    fid = upload(stack, key)
    stopped = stack.stop_cpu_workers()  # keep the jobs waiting in the queue
    jobs = [create(stack, key, fid) for _ in range(2)]
    time.sleep(1.0)
    r = redis.Redis.from_url(stack.env["REDIS_URL"])
    assert r.llen("rq:queue:cpu") >= 1
    r.flushall()
    assert r.llen("rq:queue:cpu") == 0
    stack.start_cpu_workers(stopped)
    for job_id in jobs:
        assert stack.wait_job(key, job_id, {"succeeded", "failed"}, timeout=300)["status"] == "succeeded"
