"""Races and edge cases of dispatch (real Postgres and Redis): two workers handed one job, a document
whose indexing keeps killing its work horse, cancel when the worker died, reconcile after a Redis error."""
from __future__ import annotations

import subprocess
import sys
import time

import redis

from eventlog.dispatcher import Dispatcher
from eventlog.runner import catch_up
from eventlog.store import NewEvent
from tests.integration.test_dispatcher import created


def stream_types(svc, stream):
    return [e.type for e in svc.store.read_stream(stream)]


def test_two_workers_handed_the_same_job_one_starts_it_and_the_winners_lease_survives(svc):
    from workers.jobs import Lease, claim

    svc.store.append("job-ftjob-d", 0, [created("ftjob-d")])
    won = claim(svc, "ftjob-d", 1)
    assert not isinstance(won, str)
    lost = claim(svc, "ftjob-d", 1)  # the same RQ job delivered twice (re-enqueue after a Redis flush...)
    assert isinstance(lost, str) and lost.startswith("skipped")
    with svc.pool.connection() as c:
        lease = c.execute("SELECT worker, attempt FROM leases WHERE job_id = 'ftjob-d'").fetchone()
    assert lease == {"worker": won.worker, "attempt": 1}
    # the winner's heartbeat still finds its lease: it is not fenced off by the loser
    beat = Lease(svc, "ftjob-d", 1, won.worker)
    beat.ttl = 2
    beat.start_heartbeat()
    time.sleep(1.0)
    assert not beat.lost.is_set()
    beat.release()
    assert stream_types(svc, "job-ftjob-d").count("JobStarted") == 1


def test_a_document_whose_indexing_keeps_dying_fails_after_the_attempt_limit_instead_of_looping(svc):
    doc = "doc-crashy"
    svc.store.append(f"document-{doc}", 0, [NewEvent("DocumentAdded", {
        "id": doc, "project": "p", "title": "t", "filename": None, "media_type": "text/plain", "bytes": 1,
        "sha256": "0", "text_sha256": "0", "created_at": 1})])
    catch_up(svc.pool)
    d = Dispatcher(svc)
    for attempt in range(1, svc.settings.max_attempts + 1):  # each try dies right after it started
        d.reconcile()
        assert d._rq_alive(f"{doc}-index")
        svc.store.append(f"document-{doc}", None, [NewEvent("DocumentIndexingStarted", {"id": doc,
                                                                                      "attempt": attempt})])
        redis.Redis.from_url(svc.settings.redis_url).delete(f"rq:job:{doc}-index")  # its work horse died
    d.reconcile()
    catch_up(svc.pool)
    assert stream_types(svc, f"document-{doc}")[-1] == "DocumentFailed"
    with svc.pool.connection() as c:
        row = c.execute("SELECT status, error FROM documents WHERE id = %s", (doc,)).fetchone()
    assert row["status"] == "failed" and row["error"]["code"] == "indexing_failed"
    d.reconcile()  # and it is never enqueued again
    assert not d._rq_alive(f"{doc}-index")


def test_cancelling_a_job_whose_local_worker_died_ends_it_within_a_second(svc):
    import socket

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    worker = f"{socket.gethostname()}:{dead.pid}:abc"
    svc.store.append("job-ftjob-c", 0, [created("ftjob-c"), NewEvent("JobStarted", {
        "attempt": 1, "worker": worker, "started_at": 2})])
    with svc.pool.connection() as c:  # the lease is still "alive": the worker died a moment ago
        c.execute("INSERT INTO leases (job_id, attempt, worker, expires_at) "
                  "VALUES ('ftjob-c', 1, %s, now() + interval '30 seconds')", (worker,))
    catch_up(svc.pool)
    d = Dispatcher(svc)
    d.position = svc.store.head()
    svc.store.append("job-ftjob-c", None, [NewEvent("CancelRequested", {"at": 3})])
    t0 = time.monotonic()
    d.tail()
    types = stream_types(svc, "job-ftjob-c")
    assert types[-2:] == ["JobAttemptLost", "JobCancelled"] and time.monotonic() - t0 < 1.0


def test_a_live_local_worker_is_not_declared_lost_by_a_cancel(svc):
    import os
    import socket

    worker = f"{socket.gethostname()}:{os.getpid()}:abc"
    svc.store.append("job-ftjob-l", 0, [created("ftjob-l"), NewEvent("JobStarted", {
        "attempt": 1, "worker": worker, "started_at": 2}), NewEvent("CancelRequested", {"at": 3})])
    with svc.pool.connection() as c:
        c.execute("INSERT INTO leases (job_id, attempt, worker, expires_at) "
                  "VALUES ('ftjob-l', 1, %s, now() + interval '30 seconds')", (worker,))
    catch_up(svc.pool)
    Dispatcher(svc).reconcile()
    assert stream_types(svc, "job-ftjob-l")[-1] == "CancelRequested"  # the worker itself will cancel


def test_one_failing_item_does_not_stop_reconcile_for_the_others(svc, monkeypatch):
    for j in ("ftjob-e1", "ftjob-e2", "ftjob-e3"):
        svc.store.append(f"job-{j}", 0, [created(j)])
    catch_up(svc.pool)
    d = Dispatcher(svc)
    real = d.enqueue

    def flaky(job_id, attempt, queue):
        if job_id == "ftjob-e1":
            raise redis.ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value")
        return real(job_id, attempt, queue)

    monkeypatch.setattr(d, "enqueue", flaky)
    d.reconcile()
    for j in ("ftjob-e2", "ftjob-e3"):
        assert d._rq_alive(f"{j}-a1")


def test_leases_are_not_judged_until_a_whole_lease_period_after_the_dispatcher_reconnects(svc):
    svc.store.append("job-ftjob-g", 0, [created("ftjob-g"), NewEvent("JobStarted", {
        "attempt": 1, "worker": "elsewhere:1:x", "started_at": 2})])
    with svc.pool.connection() as c:  # expired while the database was down: nobody could renew it
        c.execute("INSERT INTO leases (job_id, attempt, worker, expires_at) "
                  "VALUES ('ftjob-g', 1, 'elsewhere:1:x', now() - interval '1 second')")
    catch_up(svc.pool)
    d = Dispatcher(svc)
    d.connected_since = time.monotonic()  # as run() sets it on (re)connecting
    d.reconcile()
    assert stream_types(svc, "job-ftjob-g")[-1] == "JobStarted"
    d.connected_since -= svc.settings.lease_seconds
    d.reconcile()
    assert stream_types(svc, "job-ftjob-g")[-1] == "JobAttemptLost"
