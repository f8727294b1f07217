"""The dispatcher re-dispatches what Redis or a dead worker lost (real Postgres and Redis)."""
from rq import Queue
from rq.job import Job

from eventlog.dispatcher import Dispatcher, rq_job_id
from eventlog.runner import catch_up
from eventlog.store import NewEvent


def created(job_id: str) -> NewEvent:
    return NewEvent("JobCreated", {
        "id": job_id, "project": "p", "model": "smollm2-135m-instruct", "backend": "hf-lora", "queue": "cpu",
        "training_file": "file-1", "training_file_sha256": "0", "validation_file": None,
        "validation_file_sha256": None, "hyperparameters": {}, "method": {}, "suffix": None, "seed": 1,
        "metadata": None, "created_at": 1})


def started(attempt: int) -> NewEvent:
    return NewEvent("JobStarted", {"attempt": attempt, "worker": "gone", "started_at": 2})


def test_queued_jobs_lost_by_redis_are_enqueued_again_once(svc):
    svc.store.append("job-ftjob-a", 0, [created("ftjob-a")])
    catch_up(svc.pool)
    d = Dispatcher(svc)
    d.reconcile()
    d.reconcile()  # a second round must not enqueue twice
    q = Queue("cpu", connection=d.redis)
    assert q.job_ids == [rq_job_id("ftjob-a", 1)]
    d.redis.flushdb()  # Redis loses everything
    d.reconcile()
    assert Queue("cpu", connection=d.redis).job_ids == [rq_job_id("ftjob-a", 1)]
    job = Job.fetch(rq_job_id("ftjob-a", 1), connection=d.redis)
    assert job.timeout >= 3600  # explicit job_timeout, not RQ's 180 s default


def test_a_running_job_without_a_live_lease_is_requeued_as_the_next_attempt(svc):
    svc.store.append("job-ftjob-b", 0, [created("ftjob-b"), started(1)])
    catch_up(svc.pool)
    d = Dispatcher(svc)
    d.reconcile()
    events = svc.store.read_stream("job-ftjob-b")
    assert events[-1].type == "JobAttemptLost" and events[-1].data["requeued"] is True
    catch_up(svc.pool)
    d.reconcile()
    assert rq_job_id("ftjob-b", 2) in Queue("cpu", connection=d.redis).job_ids


def test_after_the_retry_limit_a_lost_job_fails_with_a_clear_error(svc):
    # max_attempts is 2 in these settings: attempt 2 lost means failed
    svc.store.append("job-ftjob-c", 0, [created("ftjob-c"), started(1),
                                        NewEvent("JobAttemptLost", {"attempt": 1, "reason": "x", "requeued": True,
                                                                    "at": 3}), started(2)])
    catch_up(svc.pool)
    Dispatcher(svc).reconcile()
    catch_up(svc.pool)
    with svc.pool.connection() as c:
        job = c.execute("SELECT status, error FROM jobs WHERE id = 'ftjob-c'").fetchone()
    assert job["status"] == "failed"
    assert job["error"]["code"] == "worker_lost"
    assert "giving up after 2 attempts" in job["error"]["message"]


def test_a_live_lease_keeps_the_job_running(svc):
    svc.store.append("job-ftjob-d", 0, [created("ftjob-d"), started(1)])
    with svc.pool.connection() as c:
        c.execute("INSERT INTO leases VALUES ('ftjob-d', 1, 'w', now() + interval '1 minute')")
    catch_up(svc.pool)
    Dispatcher(svc).reconcile()
    assert svc.store.read_stream("job-ftjob-d")[-1].type == "JobStarted"
