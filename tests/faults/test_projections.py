"""Projections under faults (real Postgres): a poison event is parked and nothing else stops; a retried
attempt's repeated ids are harmless; a projector SIGKILLed mid-batch ends equal to a fresh replay;
replay builds aside and swaps while reads go on."""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time

import pytest

from eventlog.db import pool
from eventlog.runner import MAX_ATTEMPTS, catch_up, replay, verify
from eventlog.settings import ROOT
from eventlog.store import Append, EventStore, NewEvent
from tests.integration.test_dispatcher import created


@pytest.fixture
def store(settings):
    return EventStore(pool(settings.database_url))


def checkpoint(job: str, step: int, ckpt_id: str | None = None, **bad) -> NewEvent:
    data = {"id": ckpt_id or f"ftckpt-{job}-a1-{step}", "job_id": job, "project": "p", "step": step,
            "path": "/x", "fine_tuned_model_checkpoint": f"ft:m:p::{job}:ckpt-step-{step}", "metrics": {},
            "at": 1}
    data.update(bad)
    return NewEvent("CheckpointSaved", data)


def rows(store, sql, params=None):
    with store.pool.connection() as c:
        return c.execute(sql, params).fetchall()


def test_a_retried_attempts_repeated_checkpoint_id_neither_fails_nor_stops_any_projection(store):
    """The release's freeze: attempt 2 wrote a CheckpointSaved whose id attempt 1 had written."""
    store.append("job-ftjob-r", 0, [created("ftjob-r"), checkpoint("ftjob-r", 5, "ftckpt-r-5")])
    catch_up(store.pool)
    store.append("job-ftjob-r", None, [checkpoint("ftjob-r", 5, "ftckpt-r-5"), NewEvent("JobMessage", {"m": 1})])
    store.append("job-ftjob-s", 0, [created("ftjob-s")])
    catch_up(store.pool)
    assert rows(store, "SELECT count(*) AS n FROM job_checkpoints")[0]["n"] == 1
    assert rows(store, "SELECT count(*) AS n FROM projection_failures")[0]["n"] == 0
    assert {r["id"] for r in rows(store, "SELECT id FROM jobs")} == {"ftjob-r", "ftjob-s"}
    head = store.head()
    assert all(r["position"] == head for r in rows(store, "SELECT position FROM projection_checkpoints"))


def test_a_poison_event_is_retried_then_parked_and_every_other_projection_and_later_event_goes_on(store):
    store.append("job-ftjob-p", 0, [created("ftjob-p")])
    # a CheckpointSaved without its metrics: the checkpoints projection's handler raises KeyError
    bad = NewEvent("CheckpointSaved", {"id": "ftckpt-bad", "job_id": "ftjob-p", "project": "p", "step": 1})
    store.append("job-ftjob-p", None, [bad])
    store.append("job-ftjob-q", 0, [created("ftjob-q"), checkpoint("ftjob-q", 1)])
    catch_up(store.pool)
    failure = rows(store, "SELECT attempts, parked, error, type FROM projection_failures "
                          "WHERE name = 'job_checkpoints'")
    assert failure[0]["attempts"] == MAX_ATTEMPTS and failure[0]["parked"]
    # the jobs projection is never held back by the checkpoints projection's trouble
    assert {r["id"] for r in rows(store, "SELECT id FROM jobs")} == {"ftjob-p", "ftjob-q"}
    assert "KeyError" in failure[0]["error"] and failure[0]["type"] == "CheckpointSaved"
    # parked: the checkpoints projection moved past it and applied the later event
    assert [r["id"] for r in rows(store, "SELECT id FROM job_checkpoints")] == ["ftckpt-ftjob-q-a1-1"]
    head = store.head()
    assert all(r["position"] == head for r in rows(store, "SELECT position FROM projection_checkpoints"))
    # and a rebuild parks it again, identically, without differences
    result = verify(store.pool)
    assert result["differences"] == {}


def test_the_api_answers_writes_while_a_projection_is_failing_and_shows_parked_events_to_the_operator(settings):
    from api import create_app
    from eventlog.keys import register_key

    register_key(settings.database_url, "tl-op", role="operator", project="default", name="op")
    register_key(settings.database_url, "tl-adm", role="admin", project="default", name="adm")
    app = create_app({"settings": settings})
    c = app.test_client()
    s = EventStore(pool(settings.database_url))
    s.append("file-poison", 0, [NewEvent("FileUploaded", {"id": "file-poison"})])  # no project, no bytes...
    op, adm = {"Authorization": "Bearer tl-op"}, {"Authorization": "Bearer tl-adm"}
    for _ in range(MAX_ATTEMPTS + 1):  # each write catches up (read-your-writes) and must still answer 2xx
        r = c.post("/v1/files", headers=adm, data={"purpose": "fine-tune", "file": (
            open(ROOT / "tests/data/tiny_train.jsonl", "rb"), "t.jsonl")})
        assert r.status_code == 200, r.json
        assert c.get(f"/v1/files/{r.json['id']}", headers=adm).status_code == 200
    parked = c.get("/api/admin/dead-letters", headers=op).json["data"]
    assert [(p["projection"], p["stream_id"], p["parked"]) for p in parked] == [("files", "file-poison", True)]
    assert c.get("/api/admin/dead-letters", headers=adm).status_code == 403
    metrics = c.get("/metrics").get_data(as_text=True)
    assert 'tunelog_projection_parked_events{projection="files"} 1.0' in metrics
    health = c.get("/healthz").json
    assert health["parts"]["projector"]["parked_events"] == 1


def _fill(store: EventStore, jobs: int, events_per_job: int) -> None:
    for j in range(jobs):
        job = f"ftjob-k{j}"
        evs = [created(job)] + [NewEvent("JobProgressed", {"step": i}) if i % 7 else checkpoint(job, i)
                                for i in range(1, events_per_job)]
        store.append(f"job-{job}", 0, evs)


@pytest.mark.slow
def test_a_projector_killed_mid_batch_ten_times_ends_equal_to_a_fresh_replay(settings, store):
    _fill(store, jobs=60, events_per_job=400)  # 24k events: several batches per run
    env = {**os.environ, "DATABASE_URL": settings.database_url, "REDIS_URL": settings.redis_url,
           "TUNELOG_DATA_DIR": str(settings.data_dir)}
    rnd = random.Random(7)
    for _ in range(10):
        p = subprocess.Popen([sys.executable, "-m", "eventlog.runner"], env=env, cwd=str(ROOT),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rnd.uniform(0.8, 2.5))
        p.send_signal(signal.SIGKILL)
        p.wait()
        _fill_more = rnd.randint(0, 3)
        for k in range(_fill_more):
            store.append(f"job-ftjob-x{_}-{k}", 0, [created(f"ftjob-x{_}-{k}")])
    catch_up(store.pool)
    assert verify(store.pool)["differences"] == {}
    assert rows(store, "SELECT count(*) AS n FROM projection_failures")[0]["n"] == 0


def test_verify_finds_a_tampered_read_model_and_replay_repairs_it(store):
    _fill(store, jobs=3, events_per_job=20)
    catch_up(store.pool)
    assert verify(store.pool)["differences"] == {}
    with store.pool.connection() as c:
        c.execute("UPDATE jobs SET status = 'succeeded' WHERE id = 'ftjob-k1'")
        c.execute("DELETE FROM job_checkpoints WHERE job_id = 'ftjob-k2'")
    diff = verify(store.pool)["differences"]
    assert set(diff) == {"jobs", "job_checkpoints"}
    assert diff["jobs"]["only_live"] == 1 and diff["job_checkpoints"]["only_rebuilt"] == 2
    result = replay(store.pool)
    assert result["swapped"] and set(result["differences"]) == {"jobs", "job_checkpoints"}
    assert verify(store.pool)["differences"] == {}
    assert rows(store, "SELECT status FROM jobs WHERE id = 'ftjob-k1'")[0]["status"] == "queued"
    # indexes and constraints keep their names (migrations refer to them)
    names = {r["indexname"] for r in rows(store, "SELECT indexname FROM pg_indexes WHERE schemaname = 'public' "
                                                 "AND tablename IN ('jobs', 'job_checkpoints')")}
    assert {"jobs_pkey", "jobs_project_idx", "jobs_status_idx", "job_checkpoints_pkey",
            "job_checkpoints_job_idx"} <= names
    assert not rows(store, "SELECT nspname FROM pg_namespace WHERE nspname LIKE 'tl_%'")


@pytest.mark.slow
def test_replay_under_concurrent_reads_and_writes_answers_every_read_within_two_seconds(settings, store,
                                                                                       monkeypatch):
    from api import create_app
    from eventlog.keys import register_key

    monkeypatch.setenv("TUNELOG_RATE_LIMIT_DEFAULT", "1000000/minute")  # this reader is not to be throttled

    _fill(store, jobs=400, events_per_job=400)  # 160k events: the rebuild takes seconds
    catch_up(store.pool)
    register_key(settings.database_url, "tl-reader", role="admin", project="p", name="reader")
    app = create_app({"settings": settings})
    stop = threading.Event()
    errors: list[str] = []
    slowest = [0.0]
    reads = [0]

    def reader() -> None:
        c = app.test_client()
        h = {"Authorization": "Bearer tl-reader"}
        while not stop.is_set():
            for path in ("/v1/fine_tuning/jobs?limit=5", "/v1/fine_tuning/jobs/ftjob-k3",
                         "/v1/fine_tuning/jobs/ftjob-k3/checkpoints", "/api/keys"):
                t0 = time.perf_counter()
                r = c.get(path, headers=h)
                slowest[0] = max(slowest[0], time.perf_counter() - t0)
                reads[0] += 1
                if r.status_code != 200:
                    errors.append(f"{path}: {r.status_code} {r.get_data(as_text=True)[:200]}")

    def writer() -> None:
        i = 0
        while not stop.is_set():
            store.append(f"job-ftjob-w{i}", 0, [created(f"ftjob-w{i}")])
            i += 1
            time.sleep(0.02)

    threads = [threading.Thread(target=reader) for _ in range(3)] + [threading.Thread(target=writer)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.5)
        result = replay(store.pool)
        time.sleep(0.5)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not errors, errors[:5]
    assert reads[0] > 20
    print(f"slowest read {slowest[0]:.3f}s, {reads[0]} reads, replay {result}")
    assert slowest[0] < 2.0, f"slowest read {slowest[0]:.2f}s during a replay of {result}"
    assert result["differences"] == {}
    catch_up(store.pool)
    assert verify(store.pool)["differences"] == {}


def test_a_batch_of_large_events_is_bounded_by_bytes_and_still_applied_in_full(store, monkeypatch):
    import eventlog.runner as runner

    for j in range(6):  # ~100 kB stored per message (random hex compresses about twofold)
        store.append(f"job-ftjob-b{j}", 0, [created(f"ftjob-b{j}")] + [
            NewEvent("JobMessage", {"blob": os.urandom(100_000).hex()}) for _ in range(5)])
    sizes = []
    real = store.read_all

    def spy(*a, **k):
        out = real(*a, **k)
        sizes.append(len(out))
        return out

    monkeypatch.setattr(runner, "BATCH_BYTES", 1_000_000)
    monkeypatch.setattr(EventStore, "read_all", lambda self, *a, **k: spy(*a, **k))
    catch_up(store.pool)
    assert max(sizes) < 36 and sum(sizes) == 36  # several bounded batches, every event read once
    head = store.head()
    assert all(r["position"] == head for r in rows(store, "SELECT position FROM projection_checkpoints"))


def _answer(cid: str, n: int, project: str = "p") -> NewEvent:
    return NewEvent("ChatAnswered", {"id": cid, "project": project, "model": "m", "alias": None, "chunk_ids": [n],
                                     "latency_ms": 1.0, "prompt_tokens": n, "completion_tokens": 1,
                                     "created_at": n})


def test_bulk_inserts_keep_the_first_of_a_repeated_id_live_and_in_a_replay_and_indexes_come_back_whole(store):
    """Hundreds of chat answers in a batch go through COPY: straight into the table, or, when an id is there
    already or repeated (a bug or a retried write), through a stage with ON CONFLICT DO NOTHING, so the first
    row wins as one at a time would; a replay (its own batching, its plain indexes built after the fill)
    ends equal to the live tables with every index of the migrations, under its name."""
    before = {(r["indexname"], r["indexdef"]) for r in rows(
        store, "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public'")}
    store.append("chat-first", 0, [_answer("chatcmpl-dup", 1)])
    catch_up(store.pool)
    # one batch of 600 answers: one repeats an id already in the table, two repeat each other
    store.append_many([Append(f"chat-b{i}", 0, [_answer(f"chatcmpl-b{i}", 100 + i)]) for i in range(600)])
    store.append("chat-again", 0, [_answer("chatcmpl-dup", 2)])
    store.append("chat-twice-1", 0, [_answer("chatcmpl-twice", 3)])
    store.append("chat-twice-2", 0, [_answer("chatcmpl-twice", 4)])
    store.append_many([Append(f"chat-c{i}", 0, [_answer(f"chatcmpl-c{i}", 1000 + i)]) for i in range(300)])
    # a stream seen again in a later batch (as an alias's promotions are)
    store.append("project-p", None, [NewEvent("ProjectSettingsChanged", {"project": "p", "settings": {}})])
    catch_up(store.pool, batch=5000)
    assert rows(store, "SELECT count(*) AS n FROM chat_answers")[0]["n"] == 1 + 600 + 1 + 300
    firsts = {r["id"]: r["prompt_tokens"] for r in rows(
        store, "SELECT id, prompt_tokens FROM chat_answers WHERE id IN ('chatcmpl-dup', 'chatcmpl-twice')")}
    assert firsts == {"chatcmpl-dup": 1, "chatcmpl-twice": 3}
    store.append("project-p", None, [NewEvent("ProjectSettingsChanged", {"project": "p", "settings": {"a": 1}})])
    catch_up(store.pool)
    assert rows(store, "SELECT count(*) AS n FROM projection_failures")[0]["n"] == 0
    result = replay(store.pool, batch=400)  # batches that split the runs of answers differently
    assert result["differences"] == {}
    assert verify(store.pool, batch=100_000)["differences"] == {}
    after = {(r["indexname"], r["indexdef"]) for r in rows(
        store, "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public'")}
    assert after == before
    assert rows(store, "SELECT count(*) AS n FROM stream_projects WHERE project = 'p'")[0]["n"] == 1 + 600 + 3 + 300 + 1
