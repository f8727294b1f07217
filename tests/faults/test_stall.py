"""A hung recipe does not keep its job (and a worker) for a day: with no output for `stall_seconds`, the
worker stops it and fails the job with `training_stalled` (real Postgres; the recipe is a stand-in that
hangs after its first step, tests/fakes/hung_recipe.py)."""
from __future__ import annotations

import hashlib
import time
from dataclasses import replace

import psutil

from eventlog.bootstrap import Services
from eventlog.db import pool
from eventlog.runner import catch_up
from eventlog.store import EventStore, NewEvent
from tests.conftest import DATA
from tests.integration.test_dispatcher import created


def test_a_recipe_that_stops_reporting_is_stopped_and_the_job_fails_as_stalled(settings, monkeypatch):
    import workers.jobs as jobs

    s = replace(settings, stall_seconds=3.0)
    svc = Services(settings=s, store=EventStore(pool(s.database_url)))
    monkeypatch.setattr(jobs, "bootstrap", lambda *a, **k: svc)
    monkeypatch.setattr(jobs, "RECIPE_MODULE", "tests.fakes.hung_recipe")
    content = (DATA / "tiny_train.jsonl").read_bytes()
    sha = hashlib.sha256(content).hexdigest()
    with svc.pool.connection() as c:
        c.execute("INSERT INTO blobs (sha256, content) VALUES (%s, %s) ON CONFLICT DO NOTHING", (sha, content))
    svc.store.append("file-file-1", 0, [NewEvent("FileUploaded", {
        "id": "file-1", "project": "p", "filename": "t.jsonl", "purpose": "fine-tune", "bytes": len(content),
        "sha256": sha, "created_at": 1})])
    job_id = "ftjob-" + "ab" * 12  # a real job id's shape: the artifact store refuses any other
    job = created(job_id)
    job.data["hyperparameters"] = {"n_epochs": 1, "batch_size": 4, "learning_rate_multiplier": 1.0}
    svc.store.append(f"job-{job_id}", 0, [job])
    t0 = time.monotonic()
    assert jobs.run_training(job_id, 1) == "failed"
    took = time.monotonic() - t0
    events = svc.store.read_stream(f"job-{job_id}")
    assert events[-1].type == "JobFailed" and events[-1].data["error"]["code"] == "training_stalled"
    assert 3.0 <= took < 30, took
    # the hung process is gone and so is the lease
    assert not [p for p in psutil.process_iter(["cmdline"]) if "tests.fakes.hung_recipe" in " ".join(
        p.info["cmdline"] or [])]
    with svc.pool.connection() as c:
        assert c.execute("SELECT count(*) AS n FROM leases").fetchone()["n"] == 0
    catch_up(svc.pool)
