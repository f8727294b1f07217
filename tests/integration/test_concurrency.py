"""4 writer processes x 2,000 appends while a projector tails: every position is seen exactly once, in
order (no reader ever skips a late-committing lower position), and a replay equals the live tables."""
import multiprocessing as mp
import threading
import time

from eventlog.db import pool
from eventlog.runner import catch_up, replay
from eventlog.store import EventStore, NewEvent

WRITERS, APPENDS = 4, 2000
READ_MODELS = ["jobs", "files", "job_checkpoints", "api_keys", "models", "documents", "chunks", "aliases",
               "project_settings", "chat_answers", "chat_feedback"]


def _writer(db_url: str, w: int, n: int) -> None:
    from eventlog.db import pool as make_pool

    store = EventStore(make_pool(db_url, max_size=1))
    version = 0
    job = None
    for i in range(n):
        if i % 200 == 0:  # a new job every 200 events; then its progress, with expected versions
            job = f"ftjob-w{w}-{i}"
            version = 0
            data = {"id": job, "project": f"p{w}", "model": "smollm2-135m-instruct", "backend": "hf-lora",
                    "queue": "cpu", "training_file": "file-x", "training_file_sha256": "0" * 64,
                    "validation_file": None, "validation_file_sha256": None, "hyperparameters": {"n_epochs": 1},
                    "method": {"type": "supervised"}, "suffix": None, "seed": i, "metadata": {"w": str(w)},
                    "created_at": 1_700_000_000 + i}
            store.append(f"job-{job}", version, [NewEvent("JobCreated", data)])
        elif i % 200 == 1:
            store.append(f"job-{job}", version, [NewEvent("JobStarted", {"attempt": 1, "worker": f"w{w}",
                                                                         "started_at": 1_700_000_000 + i})])
        else:
            store.append(f"job-{job}", version, [NewEvent("JobProgressed", {
                "step": i, "total_steps": n, "epoch": 1.0, "train_loss": 1.0 / (i + 1), "learning_rate": 1e-4,
                "at": 1_700_000_000 + i})])
        version += 1


def snapshot(p) -> dict:
    out = {}
    with p.connection() as c:
        for t in READ_MODELS:
            out[t] = c.execute(f"SELECT * FROM {t} ORDER BY 1").fetchall()
    return out


def test_concurrent_writers_are_seen_in_order_exactly_once_and_replay_equals_live(db_url):
    p = pool(db_url)
    store = EventStore(p)
    seen: list[int] = []
    done = threading.Event()

    def tail() -> None:  # a reader polling by position, as the projector does
        pos = 0
        while True:
            finished = done.is_set()
            for e in store.read_all(pos, 500):
                seen.append(e.global_position)
                pos = e.global_position
            if finished and not store.read_all(pos, 1):
                return
            time.sleep(0.001)

    projected = threading.Event()

    def project() -> None:
        while not done.is_set():
            catch_up(p)
        catch_up(p)
        projected.set()

    reader = threading.Thread(target=tail)
    projector = threading.Thread(target=project)
    reader.start()
    projector.start()
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(db_url, w, APPENDS)) for w in range(WRITERS)]
    for pr in procs:
        pr.start()
    for pr in procs:
        pr.join(300)
        assert pr.exitcode == 0
    done.set()
    reader.join(60)
    projector.join(60)

    all_positions = [e.global_position for e in store.iter_all()]
    assert len(all_positions) == WRITERS * APPENDS
    assert seen == all_positions  # every position, once, in order: nothing skipped, nothing repeated
    assert seen == sorted(set(seen))

    live = snapshot(p)
    assert len(live["jobs"]) == WRITERS * APPENDS // 200
    assert all(j["status"] == "running" for j in live["jobs"])
    result = replay(p)
    assert result["events"] == WRITERS * APPENDS
    assert snapshot(p) == live  # row by row
