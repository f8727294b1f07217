"""tunelog benchmarks. Each figure is printed next to a baseline measured in the same run, on the same
embedded Postgres/Redis, as a ratio. Usage: scripts/bench [--quick] [--only NAME ...]"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from eventlog.db import pool  # noqa: E402
from eventlog.embedded import EmbeddedPostgres, EmbeddedRedis  # noqa: E402
from eventlog.store import EventStore, NewEvent  # noqa: E402
from tests.helpers import create_database  # noqa: E402

RESULTS: list[dict] = []


def report(name: str, ours: float, base: float, unit: str, baseline: str, target: str, higher_is_better=True):
    ratio = ours / base if higher_is_better else base / ours
    RESULTS.append({"name": name, "ours": round(ours, 2), "baseline": round(base, 2), "unit": unit,
                    "baseline_name": baseline, "ratio": round(ratio, 2), "target": target})
    print(f"{name:<42} ours {ours:>12,.1f} {unit:<7} | {baseline:<34} {base:>12,.1f} | ratio {ratio:5.2f}x | "
          f"target {target}", flush=True)


# ---- appends ---------------------------------------------------------------------------------------------
def _ours_writer(url: str, n: int, w: int, q) -> None:
    store = EventStore(pool(url, max_size=1))
    store.append("warm", None, [NewEvent("Warm", {})])
    t0 = time.perf_counter()
    version = 0
    stream = None
    for i in range(n):
        if i % 100 == 0:
            stream, version = f"job-bench-{w}-{uuid.uuid4().hex[:8]}", 0
        store.append(stream, version, [NewEvent("JobProgressed", {"step": i, "train_loss": 1.0 / (i + 1)},
                                                {"actor": "bench"})])
        version += 1
    q.put(time.perf_counter() - t0)


def _es_datastore(url: str):
    from eventsourcing.postgres import PostgresDatastore

    parts = urlsplit(url)
    host = parse_qs(parts.query).get("host", ["127.0.0.1"])[0]
    return PostgresDatastore(dbname=parts.path.lstrip("/"), host=host, port=parts.port or 5432,
                             user=parts.username or "postgres", password="", pool_size=1)


def _es_writer(url: str, n: int, w: int, q) -> None:
    from eventsourcing.persistence import StoredEvent
    from eventsourcing.postgres import PostgresApplicationRecorder

    rec = PostgresApplicationRecorder(_es_datastore(url))
    rec.insert_events([StoredEvent(uuid.uuid4(), 1, "warm", b"{}")])
    t0 = time.perf_counter()
    oid = None
    for i in range(n):
        if i % 100 == 0:
            oid = uuid.uuid4()
        rec.insert_events([StoredEvent(oid, i % 100 + 1, "bench:JobProgressed",
                                       json.dumps({"step": i, "train_loss": 1.0 / (i + 1)}).encode())])
    q.put(time.perf_counter() - t0)


def _parallel(target, url: str, writers: int, n: int) -> float:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=target, args=(url, n, w, q)) for w in range(writers)]
    t0 = time.perf_counter()
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    wall = time.perf_counter() - t0
    durations = [q.get() for _ in procs]
    # rate over the slowest writer's timed loop (process start-up excluded)
    return writers * n / max(durations) if durations else writers * n / wall


def bench_appends(server: str, n: int) -> None:
    ours_db = create_database(server, "bench_append")
    es_db = create_database(server, "bench_es")
    from eventsourcing.postgres import PostgresApplicationRecorder

    PostgresApplicationRecorder(_es_datastore(es_db)).create_table()
    for writers, target in ((1, ">= 2,000 ev/s and >= 2x eventsourcing"), (4, ">= 4,000 ev/s")):
        ours = _parallel(_ours_writer, ours_db, writers, n)
        base = _parallel(_es_writer, es_db, writers, n)
        report(f"append, {writers} writer(s), 1 event/append", ours, base, "ev/s", "eventsourcing PG recorder", target)


def bench_batched(server: str, batches: int) -> None:
    url = create_database(server, "bench_batch")
    store = EventStore(pool(url, max_size=2))
    events = [NewEvent("JobProgressed", {"step": i, "train_loss": 0.5}, {"actor": "bench"}) for i in range(100)]
    store.append("warm", None, events)
    t0 = time.perf_counter()
    for b in range(batches):
        store.append(f"job-batch-{b}", 0, events)
    ours = batches * 100 / (time.perf_counter() - t0)
    with pool(url).connection() as c:
        c.execute("CREATE TABLE raw_events (LIKE events INCLUDING DEFAULTS)")
        c.execute("ALTER TABLE raw_events ALTER COLUMN global_position ADD GENERATED ALWAYS AS IDENTITY")
        values = ", ".join(["(%s, %s, %s, %s::jsonb, %s::jsonb)"] * 100)
        sql = f"INSERT INTO raw_events (stream_id, stream_version, type, data, metadata) VALUES {values}"
        t0 = time.perf_counter()
        for b in range(batches):
            params = []
            for i, e in enumerate(events):
                params += [f"raw-{b}", i + 1, e.type, json.dumps(e.data), json.dumps(e.metadata)]
            c.execute(sql, params)
        base = batches * 100 / (time.perf_counter() - t0)
    report("batched progress append, 100 events/append", ours, base, "ev/s", "raw 100-row INSERT", ">= 25,000 ev/s")


def bench_replay(server: str, total: int) -> None:
    from eventlog.runner import catch_up, replay

    url = create_database(server, "bench_replay")
    p = pool(url, max_size=2)
    store = EventStore(p)
    jobs = max(1, total // 1000)
    for j in range(jobs):  # realistic streams: created, started, then progress in batches
        jid = f"ftjob-replay{j:06d}"
        store.append(f"job-{jid}", 0, [NewEvent("JobCreated", {
            "id": jid, "project": "bench", "model": "smollm2-135m-instruct", "backend": "hf-lora", "queue": "cpu",
            "training_file": "file-x", "training_file_sha256": "0" * 64, "validation_file": None,
            "validation_file_sha256": None, "hyperparameters": {"n_epochs": 3}, "method": {"type": "supervised"},
            "suffix": None, "seed": j, "metadata": None, "created_at": 1_700_000_000 + j}),
            NewEvent("JobStarted", {"attempt": 1, "worker": "w", "started_at": 1_700_000_001 + j})])
        version = 2
        for k in range(0, 998, 100):
            batch = [NewEvent("JobProgressed", {"step": s, "total_steps": 998, "epoch": s / 333, "train_loss": 1 / (s + 1),
                                                "learning_rate": 1e-4, "at": 1_700_000_002 + j})
                     for s in range(k, min(k + 100, 998))]
            store.append(f"job-{jid}", version, batch)
            version += len(batch)
    catch_up(p)
    n = store.head()
    with p.connection() as c:
        c.execute("VACUUM ANALYZE events")
    t0 = time.perf_counter()
    r = replay(p)
    ours = r["events"] / (time.perf_counter() - t0)
    import psycopg

    from eventlog.settings import psycopg_url

    with psycopg.connect(psycopg_url(url)) as conn:
        t0 = time.perf_counter()
        count = 0
        with conn.cursor(name="scan") as cur:
            cur.itersize = 5000
            cur.execute("SELECT global_position, stream_id, stream_version, type, data, metadata, recorded_at "
                        "FROM events ORDER BY global_position")
            for _row in cur:
                count += 1
        base = count / (time.perf_counter() - t0)
    assert count == n == r["events"]
    report(f"full replay of {n:,} events (5 read models)", ours, base, "ev/s", "raw server-side cursor scan",
           ">= 60,000 ev/s")


# ---- submit -> JobStarted ----------------------------------------------------------------------------------
def bench_latency(server: str, redis_url: str, tmp: Path, samples: int) -> None:
    import redis
    from rq import Queue

    from eventlog.supervisor import register_key
    from tests.helpers import Stack, free_port

    url = create_database(server, "bench_stack")
    data = tmp / "stack"
    data.mkdir()
    port = free_port()
    env = {**os.environ, "DATABASE_URL": url, "REDIS_URL": redis_url, "TUNELOG_DATA_DIR": str(data),
           "TUNELOG_MODEL_DIR": str(ROOT / ".data" / "models"), "TUNELOG_PORT": str(port),
           "TUNELOG_TRAINING_QUEUE": "cpu", "PYTHONUNBUFFERED": "1",
           "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}
    stack = Stack(env=env, data_dir=data, port=port)
    stack.admin_key = "tl-bench-" + uuid.uuid4().hex
    register_key(url, stack.admin_key, role="admin", project="bench", name="bench")
    for name in ("web", "projector", "dispatcher", "worker-cpu"):
        stack.start(name)
    try:
        stack.wait_healthy()
        k = stack.admin_key
        train = (ROOT / "tests" / "data" / "tiny_train.jsonl").read_bytes()
        fid = stack.http("POST", "/v1/files", k, files={"file": ("t.jsonl", train)},
                         data={"purpose": "fine-tune"}).json()["id"]
        ours = []
        for i in range(samples + 2):
            t0 = time.time()
            job = stack.http("POST", "/v1/fine_tuning/jobs", k, json={"model": "smollm2-135m-instruct",
                                                                      "training_file": fid}).json()
            started = None
            while started is None:
                rows = stack.sql("SELECT extract(epoch FROM recorded_at) AS t FROM events WHERE stream_id = %s "
                                 "AND type = 'JobStarted'", (f"job-{job['id']}",))
                started = rows[0]["t"] if rows else None
                time.sleep(0.002)
            if i >= 2:  # the first two warm up the worker
                ours.append((float(started) - t0) * 1000)
            stack.http("POST", f"/v1/fine_tuning/jobs/{job['id']}/cancel", k)
            stack.wait_job(k, job["id"], {"cancelled", "succeeded", "failed"}, timeout=60)
    except Exception:
        for name in ("worker-cpu", "dispatcher"):
            print(f"--- {name}.log (tail)\n" + (data / f"{name}.log").read_text()[-3000:])
        raise
    finally:
        stack.stop_all()
    # baseline: plain RQ, the same fork-per-job worker, enqueue -> the job function starts
    r = redis.Redis.from_url(redis_url)
    stack2 = Stack(env={**env, "REDIS_URL": redis_url}, data_dir=data, port=port)
    import subprocess

    log = open(data / "rq-baseline.log", "wb")
    worker = subprocess.Popen([sys.executable, "-m", "rq.cli", "worker", "--url", redis_url, "bench"],
                              cwd=str(ROOT), stdout=log, stderr=subprocess.STDOUT, env=stack2.env)
    base = []
    try:
        q = Queue("bench", connection=r)
        time.sleep(2)
        for i in range(samples + 2):
            t0 = time.time()
            job = q.enqueue("time.time")
            while job.get_status(refresh=True) != "finished":
                time.sleep(0.001)
            if i >= 2:
                base.append((job.return_value() - t0) * 1000)
    finally:
        worker.terminate()
        worker.wait(10)
    for label, pick in (("p50", lambda xs: statistics.median(xs)),
                        ("p99", lambda xs: sorted(xs)[max(0, int(len(xs) * 0.99) - 1)])):
        report(f"submit -> JobStarted latency {label}", pick(ours), pick(base), "ms", "raw RQ enqueue -> start",
               "p50 <= 25 ms" if label == "p50" else "-", higher_is_better=False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="smaller sizes (a smoke run)")
    ap.add_argument("--only", nargs="*", default=None, help="appends batched replay latency")
    ap.add_argument("--json", default=None, help="also write the results to this file")
    args = ap.parse_args()
    only = set(args.only or ["appends", "batched", "replay", "latency"])
    tmp = Path(tempfile.mkdtemp(prefix="tunelog-bench-"))
    pg = EmbeddedPostgres(tmp / "pg", dbname="postgres")
    rs = EmbeddedRedis(tmp / "redis")
    server = pg.start()
    redis_url = rs.start()
    print(f"tunelog bench on {os.cpu_count()} cores; embedded Postgres (pgvector wheel) and Redis under {tmp}")
    try:
        if "appends" in only:
            bench_appends(server, 500 if args.quick else 2000)
        if "batched" in only:
            bench_batched(server, 50 if args.quick else 300)
        if "replay" in only:
            bench_replay(server, 10_000 if args.quick else 100_000)
        if "latency" in only:
            bench_latency(server, redis_url, tmp, 5 if args.quick else 30)
    finally:
        rs.stop()
        pg.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        Path(args.json).write_text(json.dumps(RESULTS, indent=2))


if __name__ == "__main__":
    main()
