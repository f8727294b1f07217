"""tunelog benchmarks. Each figure is printed next to a baseline measured in the same run, on the same
embedded Postgres/Redis, as a ratio. Usage: scripts/bench [--quick] [--only NAME ...]"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import re
import shutil
import signal
import statistics
import sys
import tempfile
import time
import uuid
import warnings
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from eventlog.db import pool  # noqa: E402
from eventlog.embedded import EmbeddedPostgres, EmbeddedRedis  # noqa: E402
from eventlog.store import EventStore, NewEvent  # noqa: E402
from tests.helpers import create_database  # noqa: E402

RESULTS: list[dict] = []
warnings.filterwarnings("ignore", message="The Evals API is deprecated")  # tunelog keeps its shapes


def report(name: str, ours: float, base: float, unit: str, baseline: str, target: str, higher_is_better=True):
    ratio = ours / base if higher_is_better else base / ours
    RESULTS.append({"name": name, "ours": round(ours, 4), "baseline": round(base, 4), "unit": unit,
                    "baseline_name": baseline, "ratio": round(ratio, 2), "target": target})
    fmt = ",.3f" if not unit else ",.1f"
    print(f"{name:<42} ours {ours:>12{fmt}} {unit:<7} | {baseline:<34} {base:>12{fmt}} | ratio {ratio:5.2f}x | "
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
                             user=parts.username or "postgres", password=unquote(parts.password or ""), pool_size=1)


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


def _raw_scan(url: str) -> tuple[int, float]:
    """The baseline of the replay benchmarks: every event read through a server-side cursor, nothing done with
    it. (events, events per second)."""
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
        return count, count / (time.perf_counter() - t0)


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
            batch = [NewEvent("JobProgressed", {"step": s, "total_steps": 998, "epoch": s / 333,
                                                "train_loss": 1 / (s + 1),
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
    count, base = _raw_scan(url)
    assert count == n == r["events"]
    report(f"full replay of {n:,} events (5 read models)", ours, base, "ev/s", "raw server-side cursor scan",
           ">= 60,000 ev/s")


def start_stack(server: str, redis_url: str, data: Path, db: str):
    """The service's processes (from the Procfile) on a fresh database, with an admin key."""
    from eventlog.keys import register_key
    from tests.helpers import Stack, free_port

    url = create_database(server, db)
    data.mkdir()
    port = free_port()
    env = {**os.environ, "DATABASE_URL": url, "REDIS_URL": redis_url, "TUNELOG_DATA_DIR": str(data),
           "TUNELOG_MODEL_DIR": str(ROOT / ".data" / "models"), "TUNELOG_PORT": str(port),
           "TUNELOG_TRAINING_QUEUE": "cpu", "PYTHONUNBUFFERED": "1",
           # rate limits measure the read path, not the limiter's refusals (429s are cheaper than reads)
           "TUNELOG_RATE_LIMIT_DEFAULT": "100000000/minute", "TUNELOG_RATE_LIMIT_CHAT": "100000/minute",
           "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}
    stack = Stack(env=env, data_dir=data, port=port)
    stack.admin_key = "tl-bench-" + uuid.uuid4().hex
    register_key(url, stack.admin_key, role="operator", project="bench", name="bench")
    env["TUNELOG_SERVING_PORT"] = str(free_port())
    for name in ("web", "serving", "projector", "dispatcher", "worker-cpu"):
        stack.start(name)
    return stack, url


def _print_log_tails(data: Path) -> None:
    """After a failed benchmark: the end of the worker's and the dispatcher's logs."""
    for name in ("worker-cpu", "dispatcher"):
        print(f"--- {name}.log (tail)\n" + (data / f"{name}.log").read_text()[-3000:])


# ---- submit -> JobStarted ----------------------------------------------------------------------------------
def bench_latency(server: str, redis_url: str, tmp: Path, samples: int) -> None:
    import redis
    from rq import Queue

    data = tmp / "stack"
    stack, url = start_stack(server, redis_url, data, "bench_stack")
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
        _print_log_tails(data)
        raise
    finally:
        stack.stop_all()
    # baseline: plain RQ, the same fork-per-job worker, enqueue -> the job function starts
    r = redis.Redis.from_url(redis_url)
    import subprocess

    log = open(data / "rq-baseline.log", "wb")
    worker = subprocess.Popen([sys.executable, "-m", "rq.cli", "worker", "--url", redis_url, "bench"],
                              cwd=str(ROOT), stdout=log, stderr=subprocess.STDOUT, env=stack.env)
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


# ---- retrieval ----------------------------------------------------------------------------------------------
def bench_retrieval(server: str, n: int, queries: int) -> None:
    """n chunks of 384-d, clustered like real embeddings (random topic centroids plus noise, normalized)."""
    import numpy as np
    import psycopg
    from pgvector.psycopg import register_vector

    from api.chat import search
    from eventlog.settings import psycopg_url

    url = create_database(server, "bench_retrieval")
    rng = np.random.default_rng(42)
    centroids = rng.standard_normal((max(1, n // 100), 384)).astype("<f4")

    def sample(k: int):
        v = centroids[rng.integers(0, len(centroids), k)] + 0.35 * rng.standard_normal((k, 384)).astype("<f4")
        return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype("<f4")

    data = sample(n)
    with psycopg.connect(psycopg_url(url), autocommit=True) as c:
        register_vector(c)
        c.execute("DROP INDEX chunks_embedding_hnsw")  # bulk load first, then build the index once
        docs = n // 100
        with c.cursor().copy("COPY documents (id, project, title, media_type, bytes, sha256, text_sha256, status, "
                             "created_at, seq) FROM STDIN") as cp:
            for d in range(docs):
                cp.write_row((f"doc-{d}", "bench", f"Document {d}", "text/plain", 0, "0", "0", "indexed", 0, d))
        t0 = time.perf_counter()
        with c.cursor().copy("COPY chunks (id, document_id, project, idx, text, char_start, char_end, embedding) "
                             "FROM STDIN WITH (FORMAT BINARY)") as cp:
            cp.set_types(["text", "text", "text", "int4", "text", "int4", "int4", "vector"])
            for i in range(n):
                cp.write_row((f"doc-{i // 100}:{i % 100}", f"doc-{i // 100}", "bench", i % 100, f"chunk {i}", 0, 0,
                              data[i]))
        load = time.perf_counter() - t0
        c.execute("SET maintenance_work_mem = '1GB'")
        t0 = time.perf_counter()
        c.execute("CREATE INDEX chunks_embedding_hnsw ON chunks USING hnsw (embedding vector_cosine_ops)")
        build = time.perf_counter() - t0
        c.execute("VACUUM ANALYZE chunks")
    print(f"  ({n:,} chunks loaded in {load:.1f}s, HNSW index built in {build:.1f}s)", flush=True)
    qs = sample(queries)
    p = pool(url, max_size=2)
    ours_t, hnsw_t, exact_t, ours_r, hnsw_r = [], [], [], [], []
    with p.connection() as conn, psycopg.connect(psycopg_url(url), autocommit=True) as raw:
        register_vector(raw)
        for q in qs[:5]:  # warm up caches on all three paths
            search(conn, "bench", q, 5)
            raw.execute("SELECT id FROM chunks ORDER BY embedding <=> %s LIMIT 5", (q,)).fetchall()
        for q in qs:
            t0 = time.perf_counter()
            with raw.transaction():  # not prepared: a cached plan would keep using the index
                raw.execute("SET LOCAL enable_indexscan = off")
                exact = [r[0] for r in raw.execute("SELECT id FROM chunks /* exact */ ORDER BY embedding <=> %s "
                                                   "LIMIT 5", (q,), prepare=False).fetchall()]
            exact_t.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            bare = [r[0] for r in raw.execute("SELECT id FROM chunks ORDER BY embedding <=> %s LIMIT 5",
                                              (q,)).fetchall()]
            hnsw_t.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            ours = [r["chunk_id"] for r in search(conn, "bench", q, 5)]
            ours_t.append(time.perf_counter() - t0)
            ours_r.append(len(set(ours) & set(exact)) / 5)
            hnsw_r.append(len(set(bare) & set(exact)) / 5)

    def pct(xs, q):
        xs = sorted(xs)
        return xs[min(len(xs) - 1, int(len(xs) * q))] * 1000

    report("retrieval p50 (top-5, 384-d)", pct(ours_t, 0.5), pct(hnsw_t, 0.5), "ms", "bare pgvector HNSW query",
           "p50 <= 2 ms", higher_is_better=False)
    report("retrieval p99", pct(ours_t, 0.99), pct(hnsw_t, 0.99), "ms", "bare pgvector HNSW query", "p99 <= 5 ms",
           higher_is_better=False)
    report("retrieval recall@5", statistics.mean(ours_r), statistics.mean(hnsw_r), "", "bare HNSW (ef_search 40)",
           ">= 0.99")
    report("retrieval p50 vs exact scan", pct(ours_t, 0.5), pct(exact_t, 0.5), "ms", "exact scan (no index)", "-",
           higher_is_better=False)


# ---- ingest -------------------------------------------------------------------------------------------------
def bench_ingest(server: str, redis_url: str, tmp: Path, paragraphs: int) -> None:
    """The whole indexing path of a document (chunk, embed, events, retrieval projection) vs a bare
    sentence-transformers encode of the same chunk texts."""
    from eventlog.embeddings import embedder
    from eventlog.runner import catch_up
    from workers.embed import index_document

    url = create_database(server, "bench_ingest")
    os.environ.update(DATABASE_URL=url, REDIS_URL=redis_url, TUNELOG_DATA_DIR=str(tmp))
    text = "\n\n".join(
        f"Lesson {i}. " + " ".join(f"Students in year {i % 11 + 1} learn idea {j} of topic {i}, with an example "
                                    f"and a short question to check understanding." for j in range(6))
        for i in range(paragraphs))
    emb = embedder()
    emb.encode(["warm up"])
    chunks = emb.chunk(text)
    texts = [c.text for c in chunks]
    t0 = time.perf_counter()
    emb.encode(texts)
    bare = len(texts) / (time.perf_counter() - t0)

    import hashlib

    from eventlog.store import NewEvent

    store = EventStore(pool(url))
    sha = hashlib.sha256(text.encode()).hexdigest()
    with store.pool.connection() as c:
        c.execute("INSERT INTO blobs (sha256, content) VALUES (%s, %s)", (sha, text.encode()))
    store.append("document-doc-bench", 0, [NewEvent("DocumentAdded", {
        "id": "doc-bench", "project": "bench", "title": "Lessons", "filename": None, "media_type": "text/plain",
        "bytes": len(text), "sha256": sha, "text_sha256": sha, "created_at": 0})])
    catch_up(store.pool)
    t0 = time.perf_counter()
    index_document("doc-bench")
    catch_up(store.pool)
    ours = len(texts) / (time.perf_counter() - t0)
    with store.pool.connection() as c:
        n = c.execute("SELECT count(*) AS n FROM chunks WHERE document_id = 'doc-bench'").fetchone()["n"]
    assert n == len(texts), (n, len(texts))
    report(f"ingest {len(texts)} chunks (~200 tokens each)", ours, bare, "chunks/s",
           "bare sentence-transformers encode", ">= 0.8x")


# ---- chat overhead ------------------------------------------------------------------------------------------
def bench_chat(server: str, redis_url: str, tmp: Path, samples: int) -> None:
    """POST /v1/chat/completions (retrieval on, non-streaming) vs model.generate of the same prompt and
    the same number of new tokens, in this process."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from api.chat import build_prompt
    from eventlog.catalog import ensure_base_model

    model_dir = ROOT / ".data" / "models"
    data = tmp / "chat"
    stack, url = start_stack(server, redis_url, data, "bench_chat")
    question = "How do plants use sunlight to make food?"
    try:
        stack.wait_healthy()
        k = stack.admin_key
        doc = stack.http("POST", "/api/documents", k, json={"title": "Photosynthesis", "text": (
            "Photosynthesis is how green plants make food: chlorophyll captures sunlight, and the plant turns "
            "carbon dioxide and water into glucose, releasing oxygen. ") * 8}).json()
        while stack.http("GET", f"/api/documents/{doc['id']}", k).json()["status"] == "processing":
            time.sleep(0.2)
        body = {"model": "tutor", "temperature": 0, "max_tokens": 32,
                "messages": [{"role": "user", "content": question}]}
        first = stack.http("POST", "/v1/chat/completions", k, json=body).json()  # loads the models there
        n_new = first["usage"]["completion_tokens"]
        prompt = build_prompt(body["messages"], first["sources"])
        path = ensure_base_model(model_dir, "smollm2-135m-instruct")
        tok = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        inputs = tok(tok.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True),
                     return_tensors="pt", add_special_tokens=False)
        assert inputs["input_ids"].shape[1] == first["usage"]["prompt_tokens"], "same prompt as the server's"

        def generate(m=model) -> None:
            with torch.inference_mode():
                m.generate(**inputs, max_new_tokens=n_new, min_new_tokens=n_new, do_sample=False,
                           pad_token_id=tok.eos_token_id)

        generate()
        ours, bare = [], []
        for _ in range(samples):  # interleaved, so both run under the same conditions
            t0 = time.perf_counter()
            r = stack.http("POST", "/v1/chat/completions", k, json=body).json()
            ours.append(time.perf_counter() - t0)
            assert r["usage"]["completion_tokens"] == n_new and r["sources"]
            t0 = time.perf_counter()
            generate()
            bare.append(time.perf_counter() - t0)
        concurrent = lambda: _bench_concurrent_chats(stack, model, tok, data)  # noqa: E731 - run after the report
    except BaseException:
        stack.stop_all()
        raise
    o, b = statistics.median(ours) * 1000, statistics.median(bare) * 1000
    report(f"chat over HTTP, {n_new} tokens (p50)", o, b, "ms", "bare generate, another process", "-",
           higher_is_better=False)
    print(f"  over HTTP, from the API process to this one: {o - b:+.1f} ms (this includes the two processes' "
          "different generate speeds, not only our path)", flush=True)

    try:
        concurrent()
    finally:
        stack.stop_all()


def _bench_concurrent_chats(stack, model, tok, data: Path, n: int = 16, new_tokens: int = 64) -> None:
    """16 chats at once through the whole stack (API -> serving replica, streamed), each 64 new tokens, vs the
    same 16 generated one after another with plain `generate` in this process (the pre-serving path); time
    to first token under that load; and a batch of two adapters against a batch of one, on the replica."""
    import threading

    import requests
    import torch

    from eventlog.serving import serving_token
    from tests.helpers import random_adapters as _adapters

    question = "List the numbers from 1 to 1000 separated by commas."  # goes on well past 64 tokens
    messages = [{"role": "user", "content": question}]
    body = {"model": "smollm2-135m-instruct", "temperature": 0, "max_tokens": new_tokens, "retrieval": False,
            "stream": True, "messages": messages, "stream_options": {"include_usage": True}}
    headers = {"Authorization": f"Bearer {stack.admin_key}"}

    def one(url: str, b: dict, h: dict, out: list) -> None:
        t0 = time.perf_counter()
        first = None
        pieces = 0
        with requests.post(url, json=b, headers=h, stream=True, timeout=600) as r:
            r.raise_for_status()
            timing = dict(re.findall(r"(\w+);dur=([\d.]+)", r.headers.get("Server-Timing", "")))
            for line in r.iter_lines():
                if line.startswith(b"data: {"):
                    chunk = json.loads(line[6:])
                    if any((c.get("delta") or {}).get("content") for c in chunk.get("choices") or []):
                        first = first or time.perf_counter() - t0
                    usage = chunk.get("usage")
                    if usage:
                        pieces = usage["completion_tokens"]
        out.append((first, pieces, time.perf_counter() - t0, timing))

    def concurrent(url: str, bodies: list[dict], h: dict | list[dict]) -> tuple[float, list]:
        """All at once (`h`: the headers of every request, or one per request); (wall seconds, results)."""
        out: list = []
        each = h if isinstance(h, list) else [h] * len(bodies)
        threads = [threading.Thread(target=one, args=(url, b, x, out)) for b, x in zip(bodies, each, strict=True)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return time.perf_counter() - t0, out

    chat_url = stack.base_url + "/v1/chat/completions"
    concurrent(chat_url, [{**body, "max_tokens": 4}], headers)  # the replica loads the model
    pupils = [{"Authorization": f"Bearer {stack.new_key('viewer', 'bench')['key']}"} for _ in range(n)]  # a key each
    wall, out = concurrent(chat_url, [body] * n, pupils)
    tokens = sum(o[1] for o in out)
    assert tokens == n * new_tokens, f"{tokens} tokens, expected {n * new_tokens}"
    ttft = statistics.median(o[0] for o in out)
    replica = {k: statistics.median(float(o[3].get(k, "nan")) for o in out) for k in ("queue", "ttft")}
    print(f"  p50 on the replica: waited {replica['queue']:.0f} ms, first token {replica['ttft']:.0f} ms after "
          f"arriving there; at the client {ttft * 1000:.0f} ms", flush=True)

    inputs = tok(tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True),
                 return_tensors="pt", add_special_tokens=False)
    t0 = time.perf_counter()
    for _ in range(n):
        with torch.inference_mode():
            model.generate(**inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                           pad_token_id=tok.eos_token_id)
    seq = time.perf_counter() - t0
    report(f"{n} concurrent chats x {new_tokens} tokens through the stack, aggregate", tokens / wall,
           n * new_tokens / seq, "tok/s", "the same one after another, plain generate", ">= 4x")
    report(f"time to first token, p50 of {n} arriving at once", ttft, 1.0, "s", "target bound", "<= 1 s",
           higher_is_better=False)

    # mixed adapters in one batch vs one adapter, straight to the replica
    replica = f"http://127.0.0.1:{stack.env['TUNELOG_SERVING_PORT']}"
    h = {"Authorization": f"Bearer {serving_token(data)}"}
    names = list(_adapters(data))
    for name, rel in _adapters(data).items():
        requests.post(f"{replica}/v1/load_lora_adapter", headers=h, json={"lora_name": name, "lora_path": rel},
                      timeout=60).raise_for_status()
    base = {"temperature": 0, "max_tokens": new_tokens, "stream": True, "messages": messages,
            "stream_options": {"include_usage": True}}
    concurrent(f"{replica}/v1/chat/completions", [{**base, "model": m, "max_tokens": 2} for m in names], h)
    rates = {}
    for label, models in (("one adapter", [names[0]] * n),
                          ("two adapters and the base", [names[i % 2] if i % 4 else "smollm2-135m-instruct"
                                                         for i in range(n)])):
        wall, out = concurrent(f"{replica}/v1/chat/completions", [{**base, "model": m} for m in models], h)
        rates[label] = sum(o[1] for o in out) / wall
    report(f"a batch of {n}: two adapters and the base", rates["two adapters and the base"], rates["one adapter"],
           "tok/s", "one adapter, same batch size", ">= 0.85x")


# ---- the API under load ---------------------------------------------------------------------------------------
def _wrk(url: str, key: str | None, seconds: int, connections: int = 16) -> dict:
    """wrk (installed with apt when missing) on one URL: requests/s and latency percentiles in ms."""
    import re
    import subprocess

    if not shutil.which("wrk"):
        subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=False, capture_output=True)
    if not shutil.which("wrk"):
        raise SystemExit("bench api needs wrk (apt-get install wrk)")
    cmd = ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency"]
    if key:
        cmd += ["-H", f"Authorization: Bearer {key}"]
    out = subprocess.run(cmd + [url], check=True, capture_output=True, text=True).stdout

    def ms(v: str) -> float:
        n, unit = re.match(r"([\d.]+)(us|ms|s)", v).groups()
        return float(n) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]

    pct = {m.group(1): ms(m.group(2)) for m in re.finditer(r"^\s+(50|90|99)%\s+(\S+)", out, re.M)}
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    return {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)), "p50": pct["50"],
            "p99": pct["99"], "non2xx": int(non2xx.group(1)) if non2xx else 0,
            "socket_errors": errors.group(1) if errors else None}


def bench_api(server: str, redis_url: str, tmp: Path, seconds: int) -> None:
    """GET /v1/fine_tuning/jobs/{id} through the real stack (auth, Postgres read model, JSON, metrics,
    limits) vs a bare Flask route returning a job-sized JSON on the same gunicorn settings; /healthz too;
    then the same while 16 chats stream from the same API process."""
    import subprocess
    import threading

    import requests

    from api.__main__ import gunicorn_args
    from tests.helpers import free_port

    data = tmp / "api-stack"
    stack, url = start_stack(server, redis_url, data, "bench_api")
    try:
        stack.wait_healthy()
        k = stack.admin_key
        tiny = (ROOT / "tests/data/tiny_train.jsonl").read_bytes()
        fid = stack.http("POST", "/v1/files", k, files={"file": ("t.jsonl", tiny)},
                         data={"purpose": "fine-tune"}).json()["id"]
        job = stack.http("POST", "/v1/fine_tuning/jobs", k, json={"model": "smollm2-135m-instruct",
                                                                  "training_file": fid}).json()
        stack.http("POST", f"/v1/fine_tuning/jobs/{job['id']}/cancel", k)
        stack.wait_job(k, job["id"], {"cancelled", "succeeded", "failed"}, timeout=60)
        port = free_port()
        bare = subprocess.Popen([sys.executable, "-m", *gunicorn_args("scripts.bench_bare_app:create_app()",
                                                                      "127.0.0.1", str(port))],
                                cwd=str(ROOT), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=stack.env)
        try:
            for _ in range(100):
                try:
                    if requests.get(f"http://127.0.0.1:{port}/v1/fine_tuning/jobs/x", timeout=1).ok:
                        break
                except requests.RequestException:
                    time.sleep(0.1)
            job_url = f"{stack.base_url}/v1/fine_tuning/jobs/{job['id']}"
            _wrk(job_url, k, 3)  # warm-up
            base = _wrk(f"http://127.0.0.1:{port}/v1/fine_tuning/jobs/{job['id']}", None, seconds)
            ours = _wrk(job_url, k, seconds)
            health = _wrk(stack.base_url + "/healthz", None, seconds)
        finally:
            bare.terminate()
            bare.wait(10)
        report("GET /v1/fine_tuning/jobs/{id}, 16 conns", ours["rps"], base["rps"], "req/s",
               "bare Flask route, same gunicorn", ">= 0.5x")
        report("  p99 of the same", ours["p99"], base["p99"], "ms", "bare Flask route p99", "<= 15 ms",
               higher_is_better=False)
        report("GET /healthz, 16 conns", health["rps"], base["rps"], "req/s", "bare Flask route, same gunicorn", "-")
        report("  p99 of the same", health["p99"], base["p99"], "ms", "bare Flask route p99", "<= 15 ms",
               higher_is_better=False)
        print(f"  non-2xx: job {ours['non2xx']}, healthz {health['non2xx']}; socket errors: {ours['socket_errors']}")
        # the same while 16 chats stream (viewer keys: at most 2 chats at once per key)
        stop = threading.Event()
        chat_status: dict[int, int] = {}

        def chatter(key: str) -> None:
            while not stop.is_set():
                try:
                    with requests.post(stack.base_url + "/v1/chat/completions", stream=True, timeout=120,
                                       headers={"Authorization": f"Bearer {key}"},
                                       json={"model": "tutor", "stream": True, "max_tokens": 200,
                                             "messages": [{"role": "user", "content": "Explain fractions."}]}) as r:
                        chat_status[r.status_code] = chat_status.get(r.status_code, 0) + 1
                        for _ in r.iter_lines():
                            if stop.is_set():
                                break
                        if r.status_code != 200:
                            time.sleep(float(r.headers.get("Retry-After", "1")))
                except requests.RequestException:
                    pass

        viewers = [stack.new_key("viewer", "bench")["key"] for _ in range(8)]
        threads = [threading.Thread(target=chatter, args=(viewers[i // 2],), daemon=True) for i in range(16)]
        for t in threads:
            t.start()
        time.sleep(5)
        busy = _wrk(job_url, k, seconds)
        busy_health = _wrk(stack.base_url + "/healthz", None, seconds)
        stop.set()
        for t in threads:
            t.join(130)
        report("  the same while 16 chats stream", busy["rps"], base["rps"], "req/s", "bare Flask route (idle)",
               ">= 0.5x")
        report("  p99 while 16 chats stream", busy["p99"], base["p99"], "ms", "bare Flask route p99 (idle)",
               "<= 15 ms", higher_is_better=False)
        report("  /healthz p99 while 16 chats stream", busy_health["p99"], base["p99"], "ms",
               "bare Flask route p99 (idle)", "<= 15 ms", higher_is_better=False)
        print(f"  chat responses during the run: {chat_status}")
    finally:
        stack.stop_all()


# ---- local training ------------------------------------------------------------------------------------------
TRAIN_WORDS = ["plant", "leaf", "sunlight", "water", "root", "energy", "sugar", "oxygen", "cell", "seed", "flower",
               "soil", "carbon", "light", "green", "animal", "fraction", "number", "half", "quarter", "whole",
               "divide", "share", "equal", "pizza", "slice", "group", "count", "add", "river", "mountain", "rain",
               "cloud", "ocean", "heat", "cold", "wind", "season", "summer", "winter", "spring", "autumn", "map"]


def _train_examples(n: int) -> bytes:
    """n chat examples of ~80-120 tokens each (SmolLM2's template included), the same bytes every run."""
    import random

    rng = random.Random(1234)
    lines = []
    for i in range(n):
        topic = " ".join(rng.choice(TRAIN_WORDS) for _ in range(3))
        words = " ".join(rng.choice(TRAIN_WORDS) for _ in range(rng.randint(30, 50)))
        lines.append(json.dumps({"messages": [
            {"role": "user", "content": f"Question {i}: can you explain {topic} to a student in year {i % 11 + 1}?"},
            {"role": "assistant", "content": f"Great question! Think of {topic}. {words.capitalize()}. "
                                             "Does that make sense?"}]}))
    return ("\n".join(lines) + "\n").encode()


def _job_events(stack, job_id: str) -> list[dict]:
    return stack.sql("SELECT global_position AS pos, type, data, extract(epoch FROM recorded_at)::float8 AS t "
                     "FROM events WHERE stream_id = %s ORDER BY global_position", (f"job-{job_id}",))


def _span_rate(points: dict[int, tuple[int, float]], first: int) -> tuple[float, int, int]:
    """Tokens/s between step `first` (or the next step with an event: the worker writes at most about one
    progress event a second) and the last step, from {step: (cumulative tokens, clock)}."""
    last = max(points)
    first = min(s for s in points if s >= first)
    (n0, t0), (n1, t1) = points[first], points[last]
    return (n1 - n0) / (t1 - t0), first, last


def _step_rates(points: dict[int, tuple[int, float]], first: int) -> list[float]:
    """Each step's own tokens/s after step `first` (their median shrugs off a burst of load from elsewhere)."""
    steps = sorted(s for s in points if s > first and s - 1 in points)
    return [(points[s][0] - points[s - 1][0]) / (points[s][1] - points[s - 1][1]) for s in steps]


def _watch_rank_cpu(stack, key: str, job_id: str, data: Path, timeout: float) -> tuple[dict, dict[int, float]]:
    """Waits for the job to end; meanwhile samples the training rank's CPU seconds (all its threads) each time a
    new step record appears in the recipe's metrics file (every 0.1 s). The recipe writes step k's record at
    the end of step k+1 (once that step's eval/save are known), so seen[k] is the CPU at the end of step k+1."""
    import psutil

    metrics = data / "work" / job_id / "attempt-1" / "metrics.jsonl"
    seen: dict[int, float] = {}
    rank = None
    deadline, next_status = time.monotonic() + timeout, 0.0
    while time.monotonic() < deadline:
        if rank is None:
            for p in psutil.process_iter(["cmdline"]):
                cmd = p.info["cmdline"] or []
                if "workers.hf.recipe" in cmd and any(job_id in c for c in cmd) and "torch.distributed.run" not in cmd:
                    rank = p
        if rank is not None and metrics.exists():
            try:
                cpu = sum(rank.cpu_times()[:2])
            except psutil.Error:
                cpu = None
            for line in metrics.read_text().split("\n")[:-1]:  # whole lines only: the last may be mid-write
                rec = json.loads(line) if line.strip() else {}
                if cpu is not None and rec.get("kind") == "metrics" and "clock" in rec and rec["step"] not in seen:
                    seen[rec["step"]] = cpu
        if time.monotonic() >= next_status:
            next_status = time.monotonic() + 1.0
            job = stack.http("GET", f"/v1/fine_tuning/jobs/{job_id}", key).json()
            if job["status"] in ("succeeded", "failed", "cancelled"):
                return job, seen
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} did not finish in {timeout} s")


def bench_train(server: str, redis_url: str, tmp: Path, examples: int) -> None:
    """Local training through the service (SmolLM2-135M, LoRA, CPU) vs a plain HF Trainer + peft script on
    the same data, and the cost of a resume: JobResumed -> the new attempt's first progress event vs a
    fresh start's JobCreated -> first progress event."""
    import subprocess

    data = tmp / "train"
    stack, url = start_stack(server, redis_url, data, "bench_train")
    span_from = 2  # the first steps are warm-up (allocator, first backward's graph, lazy inits)
    train = _train_examples(examples)
    (tmp / "train.jsonl").write_bytes(train)

    def create(fid: str, **hp) -> str:
        r = stack.http("POST", "/v1/fine_tuning/jobs", k, json={
            "model": "smollm2-135m-instruct", "training_file": fid, "seed": 7,
            "method": {"type": "supervised", "supervised": {"hyperparameters": {
                "n_epochs": 1, "batch_size": 4, "max_seq_len": 128, **hp}}}})
        assert r.status_code == 200, r.text
        return r.json()["id"]

    try:
        stack.wait_healthy()
        k = stack.admin_key
        fid = stack.http("POST", "/v1/files", k, files={"file": ("bench-train.jsonl", train)},
                         data={"purpose": "fine-tune"}).json()["id"]
        # ---- ours: a job over HTTP; throughput from its JobProgressed events
        job_id = create(fid)
        job, rank_cpu = _watch_rank_cpu(stack, k, job_id, data, 1800)
        assert job["status"] == "succeeded", job.get("error")
        progress = [e["data"] for e in _job_events(stack, job_id)
                    if e["type"] == "JobProgressed" and "tokens_seen" in e["data"]]
        ours_points = {d["step"]: (d["tokens_seen"], d["clock"]) for d in progress}
        ours, first, last = _span_rate(ours_points, span_from)
        load_ours = os.getloadavg()[0]
        config = data / "work" / job_id / "attempt-1" / "config.json"  # what the worker gave the recipe
        cfg = json.loads(config.read_text())

        # ---- baseline: plain Trainer + peft in a subprocess while the stack is idle
        result = tmp / "train-baseline.json"
        env = {**stack.env, "OMP_NUM_THREADS": str(cfg["num_threads"] or os.environ.get("OMP_NUM_THREADS", "") or 1),
               "CUDA_VISIBLE_DEVICES": "", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
        subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_train_baseline.py"), str(config),
                        str(tmp / "train.jsonl"), str(result)], check=True, env=env, cwd=str(ROOT))
        b = json.loads(result.read_text())
        cum, base_points = 0, {}
        for step in range(1, b["steps"] + 1):
            cum += b["batch_tokens"][step - 1]
            base_points[step] = (cum, b["clock"][str(step)])
        base, _, _ = _span_rate(base_points, span_from)
        load_base = os.getloadavg()[0]
        same = ours_points[last][0] == base_points[last][0] and job["trained_tokens"] == base_points[last][0]
        report(f"LoRA training, steps {first}->{last} (CPU)", ours, base, "tok/s", "plain HF Trainer + peft script",
               ">= 0.97x")
        print(f"  SmolLM2-135M LoRA r={cfg['lora_r']}, {b['examples']} examples, batch {cfg['batch_size']}, "
              f"max_seq_len {cfg['max_seq_len']}, {cfg['num_threads']} torch thread(s); {last} steps, "
              f"{job['trained_tokens']:,} tokens; same token counts on both sides: {'yes' if same else 'NO'}; "
              f"mean train loss ours {statistics.mean(d['train_loss'] for d in progress):.4f}, baseline "
              f"{b['training_loss']:.4f}",
              flush=True)
        ro, rb = _step_rates(ours_points, span_from), _step_rates(base_points, span_from)
        print(f"  median of the per-step rates: ours {statistics.median(ro):.1f}, baseline {statistics.median(rb):.1f} "
              f"tok/s ({statistics.median(ro) / statistics.median(rb):.2f}x); 1-min load average at the end of each: "
              f"{load_ours:.1f}, {load_base:.1f} (on {os.cpu_count()} cores)", flush=True)
        # the same comparison in CPU seconds of the training process: what each side computes per token,
        # whatever else the machine runs meanwhile (steps 4..last: seen[k] is the CPU at the end of step k+1)
        a, z = span_from + 1, last
        if span_from in rank_cpu and z - 1 in rank_cpu and a in ours_points and str(a) in b["cpu"]:
            ours_cpu = (ours_points[z][0] - ours_points[a][0]) / (rank_cpu[z - 1] - rank_cpu[span_from])
            base_cpu = (base_points[z][0] - base_points[a][0]) / (b["cpu"][str(z)] - b["cpu"][str(a)])
            report(f"  per CPU-second of the training process, {a + 1}->{z}", ours_cpu, base_cpu, "tok/cpu-s",
                   "the same script", ">= 0.97x")

        # ---- resume overhead: pause after the first checkpoint, resume, time to the first progress event
        job_id = create(fid, checkpoint_interval=2)
        deadline = time.monotonic() + 900
        while not stack.http("GET", f"/v1/fine_tuning/jobs/{job_id}/checkpoints", k).json()["data"]:
            assert time.monotonic() < deadline, "no checkpoint in 900 s"
            time.sleep(0.3)
        assert stack.http("POST", f"/v1/fine_tuning/jobs/{job_id}/pause", k).status_code == 200
        paused = stack.wait_job(k, job_id, {"paused", "succeeded", "failed"}, timeout=600)
        assert paused["status"] == "paused", paused
        assert stack.http("POST", f"/v1/fine_tuning/jobs/{job_id}/resume", k).status_code == 200
        deadline = time.monotonic() + 900
        while True:
            evs = _job_events(stack, job_id)
            resumed = next(e for e in evs if e["type"] == "JobResumed")
            after = [e for e in evs if e["pos"] > resumed["pos"]]
            if any(e["type"] == "JobProgressed" for e in after) or any(
                    e["type"] in ("JobFailed", "JobSucceeded") for e in after):
                break
            assert time.monotonic() < deadline, "no progress after the resume in 900 s"
            time.sleep(0.3)
        stack.http("POST", f"/v1/fine_tuning/jobs/{job_id}/cancel", k)  # the rest of the run measures nothing
        stack.wait_job(k, job_id, {"cancelled", "succeeded", "failed"}, timeout=120)
    except Exception:
        _print_log_tails(data)
        raise
    finally:
        stack.stop_all()

    def first(events, type_):
        return next(e for e in events if e["type"] == type_)

    fresh = [e for e in evs if e["pos"] < resumed["pos"]]
    created, started0, progress0 = first(fresh, "JobCreated"), first(fresh, "JobStarted"), first(fresh, "JobProgressed")
    started1, progress1 = first(after, "JobStarted"), first(after, "JobProgressed")
    resume_s, fresh_s = progress1["t"] - resumed["t"], progress0["t"] - created["t"]
    ckpt = first([e for e in fresh if e["type"] == "JobPaused"], "JobPaused")["data"]["step"]
    report("resume: JobResumed -> first JobProgressed", resume_s, fresh_s, "s", "fresh start: JobCreated -> same",
           "-", higher_is_better=False)
    print(f"  resumed from the checkpoint at step {ckpt} (first record: step {progress1['data']['step']}); "
          f"claim (JobStarted) after {started1['t'] - resumed['t']:.2f} s vs {started0['t'] - created['t']:.2f} s; "
          f"JobStarted -> first JobProgressed {progress1['t'] - started1['t']:.1f} s vs "
          f"{progress0['t'] - started0['t']:.1f} s", flush=True)
    # where the time goes, from the recipe's first message (written once the Trainer exists; events are
    # flushed at most ~1 s late): launch (torchrun, imports, model, tokenized data, Trainer) vs the rest
    # (checkpoint load on the resume, two training steps: a step's record is written at the next step's end)
    ready0 = next((e for e in fresh if "trainable parameters" in str(e["data"].get("message"))), None)
    ready1 = next((e for e in after if "trainable parameters" in str(e["data"].get("message"))), None)
    if ready0 and ready1:
        print(f"  JobStarted -> the recipe's Trainer ready: {ready1['t'] - started1['t']:.1f} s vs "
              f"{ready0['t'] - started0['t']:.1f} s; then -> first JobProgressed: {progress1['t'] - ready1['t']:.1f} s "
              f"vs {progress0['t'] - ready0['t']:.1f} s", flush=True)


# ---- delegated jobs: poll overhead -------------------------------------------------------------------------
def _load(stack, r) -> tuple[float, int]:
    """(CPU seconds of the cpu workers and every work horse they reaped, Redis commands processed so far)."""
    import psutil

    cpu = 0.0
    for key, p in stack.procs.items():
        if key.startswith("worker-cpu") or key == "dispatcher":
            t = psutil.Process(p.pid).cpu_times()
            cpu += t.user + t.system + t.children_user + t.children_system
    return cpu, int(r.info("stats")["total_commands_processed"])


def _window(stack, r, seconds: float) -> tuple[float, float]:
    c0, n0 = _load(stack, r)
    time.sleep(seconds)
    c1, n1 = _load(stack, r)
    return (c1 - c0) / seconds, (n1 - n0) / seconds


def bench_delegate(server: str, redis_url: str, tmp: Path, jobs: int) -> None:
    """Followed delegated jobs cost scheduled polls, not workers: CPU and Redis load with `jobs` jobs running at
    the emulated provider, in two windows after the polls have backed off (flat: the second is not above the
    first), beside the same service idle; then how long a remote status change takes to show in our job."""
    import redis

    from tests.fakes.openai_provider import EmulatedProvider

    key = "sk-bench-" + uuid.uuid4().hex
    provider = EmulatedProvider(key, validation_seconds=0.5, queue_seconds=0.5, steps=3, step_seconds=0.5)
    provider.hold = True
    base_url = provider.start()
    os.environ.update(OPENAI_BASE_URL=base_url, OPENAI_API_KEY=key)
    data = tmp / "delegate"
    stack, _url = start_stack(server, redis_url + "?db=7", data, "bench_delegate")
    stack.start("worker-cpu", "worker-cpu.2")
    r = redis.Redis.from_url(redis_url + "?db=7")
    lo, hi = 2.0, 60.0
    try:
        stack.wait_healthy()
        k = stack.admin_key
        time.sleep(30)  # the workers' start-up imports are not idle load
        idle_cpu, idle_ops = _window(stack, r, 30)
        train = (ROOT / "tests" / "data" / "tiny_train.jsonl").read_bytes()
        fid = stack.http("POST", "/v1/files", k, files={"file": ("t.jsonl", train)},
                         data={"purpose": "fine-tune"}).json()["id"]
        t0 = time.time()
        ids = []
        for _ in range(jobs):
            resp = stack.http("POST", "/v1/fine_tuning/jobs", k, json={
                "model": "openai/gpt-4o-mini-2024-07-18", "training_file": fid})
            assert resp.status_code == 200, resp.text
            ids.append(resp.json()["id"])
        while True:
            n = stack.sql("SELECT count(*) AS n FROM jobs WHERE remote->>'remote_status' = 'running'")[0]["n"]
            if n == jobs:
                break
            if time.time() - t0 > 900:
                raise RuntimeError(f"only {n} of {jobs} delegated jobs reached running at the provider")
            time.sleep(1)
        submitted = time.time() - t0
        print(f"  {jobs} delegated jobs submitted and running at the provider after {submitted:.0f} s", flush=True)
        time.sleep(hi + 10)  # every chain has backed off to the longest interval
        a_cpu, a_ops = _window(stack, r, 60)
        b_cpu, b_ops = _window(stack, r, 60)
        polls = sum(1 for m, path in provider.requests if m == "GET" and path.endswith("/events"))
        released = time.time()
        provider.hold = False
        seen: dict[str, float] = {}
        while len(seen) < jobs and time.time() - released < hi + 60:
            for row in stack.sql("SELECT id FROM jobs WHERE status = 'succeeded'"):
                seen.setdefault(row["id"], time.time() - released)
            time.sleep(0.5)
    except Exception:
        _print_log_tails(data)
        raise
    finally:
        stack.stop_all()
        provider.stop()
    lat = sorted(seen.values())
    print(f"  load with {jobs} followed jobs: window A {a_cpu:.3f} CPU-s/s, {a_ops:.0f} Redis cmd/s; window B "
          f"{b_cpu:.3f} CPU-s/s, {b_ops:.0f} Redis cmd/s; idle {idle_cpu:.3f} CPU-s/s, {idle_ops:.0f} cmd/s; "
          f"{polls} event-list polls in all", flush=True)
    report(f"worker+dispatcher CPU, {jobs} followed jobs (B)", b_cpu, idle_cpu, "CPU-s/s", "same service idle",
           "flat: B <= A x 1.1", higher_is_better=False)
    report(f"Redis commands/s, {jobs} followed jobs (B)", b_ops, idle_ops, "cmd/s", "same service idle",
           "flat: B <= A x 1.1", higher_is_better=False)
    report("flatness: CPU of window B vs window A", b_cpu, a_cpu, "CPU-s/s", "window A (60 s earlier)",
           "<= 1.1x", higher_is_better=False)
    report("remote change -> our status, max", lat[-1] if lat else float("nan"), hi, "s",
           f"longest poll interval ({hi:.0f} s)", f"<= {hi:.0f} s + a poll", higher_is_better=False)
    print(f"  status change seen for {len(lat)}/{jobs} jobs: p50 {statistics.median(lat):.1f} s, max {lat[-1]:.1f} s "
          f"(poll interval {lo:.0f} s doubling to {hi:.0f} s)" if lat else "  no job finished", flush=True)


def bench_dspy(server: str, redis_url: str, tmp: Path, candidates: int) -> None:
    """A DSPy job (random search over the shipped educational set, data/dspy_tutor: 14 training and 6 dev
    examples, on the bundled model) from submission to its registered program, vs plain DSPy running the same
    optimizer on the same examples and model in a script (scripts/bench_dspy_baseline.py), started to finished."""
    import subprocess

    opts = {"optimizer": "bootstrap_few_shot_with_random_search", "metric": "contains", "max_tokens": 48,
            "num_candidate_programs": candidates, "max_bootstrapped_demos": 2, "max_labeled_demos": 2}
    train, valid = ROOT / "data" / "dspy_tutor" / "train.jsonl", ROOT / "data" / "dspy_tutor" / "valid.jsonl"
    threads = os.cpu_count() or 2
    t0 = time.monotonic()
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_dspy_baseline.py"),
                          str(ROOT / ".data" / "models" / "smollm2-135m-instruct"), str(train), str(valid),
                          json.dumps(opts), str(threads)], capture_output=True, text=True, cwd=ROOT,
                         env={**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"})
    plain_seconds = time.monotonic() - t0
    if out.returncode != 0:
        raise RuntimeError(f"the baseline script failed:\n{out.stderr[-3000:]}")
    plain = json.loads(out.stdout.strip().splitlines()[-1])
    data = tmp / "dspy"
    # one worker, with every core for its job (as the script has them)
    os.environ["TUNELOG_CPU_WORKERS"] = "1"
    stack, _url = start_stack(server, redis_url + "?db=8", data, "bench_dspy")
    try:
        stack.wait_healthy()
        k = stack.admin_key
        time.sleep(10)  # the worker's start-up imports are not the job's
        ids = [stack.http("POST", "/v1/files", k, files={"file": (p.name, p.read_bytes())},
                          data={"purpose": "fine-tune"}).json()["id"] for p in (train, valid)]
        t0 = time.monotonic()
        r = stack.http("POST", "/v1/fine_tuning/jobs", k, json={
            "model": "smollm2-135m-instruct", "training_file": ids[0], "validation_file": ids[1], "seed": 0,
            "method": {"type": "dspy", "dspy": opts}})
        assert r.status_code == 200, r.text
        job = stack.wait_job(k, r.json()["id"], {"succeeded", "failed"}, timeout=3600)
        ours_seconds = time.monotonic() - t0
        assert job["status"] == "succeeded", job["error"]
        metrics = stack.http("GET", f"/v1/models/{job['fine_tuned_model']}", k).json()["lineage"]["final_metrics"]
    except Exception:
        _print_log_tails(data)
        raise
    finally:
        stack.stop_all()
        os.environ.pop("TUNELOG_CPU_WORKERS", None)
    print(f"  plain DSPy: {plain_seconds:.1f} s ({plain['lm_calls']} LM calls; dev score {plain['dev_before']:.3f} -> "
          f"{plain['dev_after']:.3f}; {plain['demos']} demos)", flush=True)
    print(f"  tunelog job: {ours_seconds:.1f} s ({metrics['lm_calls']} LM calls, {metrics['new_lm_calls']} generated; "
          f"dev score {metrics['dev_score_before']:.3f} -> {metrics['dev_score_after']:.3f}; {metrics['demos']} demos; "
          f"{metrics['trials']} evaluations)", flush=True)
    report(f"DSPy job, random search x{candidates}, wall time", ours_seconds, plain_seconds, "s",
           "plain dspy script, same optimizer", "<= 1.1x", higher_is_better=False)


def _audit_log(store: EventStore, total: int) -> int:
    """Append about `total` events of the audit benchmark's mix; returns the number of jobs."""
    from eventlog.store import Append

    j = 0
    pending: list = []
    n_events = 0

    def flush():
        nonlocal pending
        if pending:
            store.append_many(pending)
            pending = []

    while n_events < total:
        jid = f"ftjob-audit{j:07d}"
        model = f"ft:smollm2-135m-instruct:bench::{j:08d}"
        job = [NewEvent("JobCreated", {
            "id": jid, "project": "bench", "model": "smollm2-135m-instruct", "backend": "hf-lora", "queue": "cpu",
            "training_file": "file-x", "training_file_sha256": "0" * 64, "validation_file": None,
            "validation_file_sha256": None, "hyperparameters": {"n_epochs": 1}, "method": {"type": "supervised"},
            "suffix": None, "seed": j, "metadata": None, "created_at": 1_700_000_000 + j}),
            NewEvent("JobStarted", {"attempt": 1, "worker": "w", "started_at": 1_700_000_001 + j})]
        job += [NewEvent("JobProgressed", {"step": s, "total_steps": 40, "epoch": s / 40, "train_loss": 1 / (s + 1),
                                           "learning_rate": 1e-4, "at": 1_700_000_002 + j}) for s in range(1, 41)]
        job += [NewEvent("CheckpointSaved", {"id": f"ftckpt-{j}-a1-{s}", "attempt": 1, "job_id": jid,
                                             "project": "bench", "step": s, "path": f"artifacts/{jid}/checkpoints/{s}",
                                             "fine_tuned_model_checkpoint": f"{model}:ckpt-step-{s}", "metrics": {},
                                             "at": 1_700_000_003 + j}) for s in (20, 40)]
        job.append(NewEvent("JobSucceeded", {"fine_tuned_model": model, "trained_tokens": 1000,
                                             "artifact_path": f"artifacts/{jid}/model", "at": 1_700_000_004 + j}))
        pending.append(Append(f"job-{jid}", 0, job))
        pending.append(Append(f"model-{model}", 0, [NewEvent("ModelRegistered", {
            "id": model, "project": "bench", "base_model": "smollm2-135m-instruct", "backend": "hf-lora",
            "job_id": jid, "artifact_path": f"artifacts/{jid}/model", "created_at": 1_700_000_004 + j,
            "lineage": {"job_id": jid, "final_metrics": {"valid_loss": 1.0}}})]))
        for c in range(30):
            cid = f"chatcmpl-{j:08d}{c:04d}"
            pending.append(Append(f"chat-{cid}", 0, [NewEvent("ChatAnswered", {
                "id": cid, "project": "bench", "model": model, "alias": "tutor", "chunk_ids": [], "latency_ms": 900.0,
                "prompt_tokens": 200, "completion_tokens": 60, "created_at": 1_700_000_005 + j})]))
        n_events += len(job) + 1 + 30
        if j % 10 == 0:
            pending.append(Append("alias-bench/tutor", None, [NewEvent("AliasPromoted", {
                "project": "bench", "alias": "tutor", "model": model, "previous": None, "reason": "bench",
                "at": 1_700_000_006 + j})]))
            n_events += 1
        if j % 20 == 0:
            did = f"doc-{j:08d}"
            pending.append(Append(f"document-{did}", 0, [
                NewEvent("DocumentAdded", {"id": did, "project": "bench", "title": f"doc {j}", "filename": None,
                                           "media_type": "text/plain", "bytes": 10, "sha256": "1" * 64,
                                           "text_sha256": "2" * 64, "created_at": 1_700_000_007 + j}),
                NewEvent("DocumentIndexed", {"id": did, "n_chunks": 0, "at": 1_700_000_008 + j})]))
            n_events += 2
        j += 1
        if len(pending) >= 300:
            flush()
    flush()
    return j


def bench_audit(server: str, total: int) -> None:
    """A log of `total` events in a realistic mix (per job: created, started, 40 progress events, 2 checkpoints,
    succeeded, its model; 30 chats answered; every 10th job a promotion, every 20th a document indexed):
    replay (rebuild every read model aside and swap it in) vs a raw server-side cursor scan of the same events,
    and `GET /api/registry?as_of=` (api/audit.registry_at) at points across the log."""
    from api.audit import registry_at
    from eventlog.runner import catch_up, replay

    url = create_database(server, "bench_audit")
    p = pool(url, max_size=2)
    store = EventStore(p)
    t_fill = time.perf_counter()
    j = _audit_log(store, total)
    print(f"  {store.head():,} events written in {time.perf_counter() - t_fill:.0f} s ({j:,} jobs)", flush=True)
    catch_up(p)
    with p.connection() as c:
        c.execute("VACUUM ANALYZE events")
    n = store.head()
    t0 = time.perf_counter()
    r = replay(p)
    ours = r["events"] / (time.perf_counter() - t0)
    count, base = _raw_scan(url)
    print(f"  replay: built aside in {r['build_seconds']:.1f} s, compared and swapped in {r['swap_seconds']:.1f} s",
          flush=True)
    report(f"replay of a {n:,}-event mixed log (12 read models)", ours, base, "ev/s", "raw server-side cursor scan",
           ">= 60,000 ev/s")
    times = []
    with p.connection() as c:
        for frac in (0.1, 0.5, 0.9, 1.0):
            t0 = time.perf_counter()
            reg = registry_at(c, "bench", "position", int(n * frac))
            times.append(time.perf_counter() - t0)
            print(f"  registry as of {frac:.0%} of the log: {len(reg['models']):,} models, tutor -> "
                  f"{next(a['model'] for a in reg['aliases'] if a['alias'] == 'tutor')}, {times[-1]:.2f} s", flush=True)
    report("registry as_of on that log, slowest of 4", max(times), 2.0, "s", "target bound", "<= 2 s",
           higher_is_better=False)


# ---- evaluations: items graded per second ------------------------------------------------------------------
def bench_evals(server: str, redis_url: str, tmp: Path, n_items: int, new_tokens: int = 32) -> None:
    """A completions eval run of `n_items` on the bundled model through the whole stack (API, dispatcher, a cpu
    worker, the serving replica; one EvalItemGraded event per item, string_check and fuzzy_match graders) vs the
    same generations (same prompts, same token counts) made with plain `generate` in a loop in this process.
    Twice: with the worker's default concurrency (8 items in flight, batched by the replica) and with 1 (the
    machinery's own cost, item by item like the baseline)."""
    import torch
    from openai import OpenAI
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from eventlog.catalog import ensure_base_model

    data = tmp / "evals"
    stack, url = start_stack(server, redis_url, data, "bench_evals")
    questions = [f"In one sentence, why is {w} important for a student?" for w in (
        "reading", "sleep", "practice", "curiosity", "maths", "history", "music", "sport", "friendship", "patience")]
    content = [{"item": {"question": f"{questions[i % len(questions)]} (question {i + 1})", "answer": "important"}}
               for i in range(n_items)]
    try:
        stack.wait_healthy()
        c = OpenAI(base_url=stack.base_url + "/v1", api_key=stack.admin_key, max_retries=2)
        ev = c.evals.create(name="bench", data_source_config={"type": "custom", "item_schema": {
            "type": "object", "properties": {"question": {"type": "string"}, "answer": {"type": "string"}},
            "required": ["question", "answer"]}}, testing_criteria=[
            {"type": "string_check", "name": "mentions", "input": "{{sample.output_text}}",
             "reference": "{{item.answer}}", "operation": "ilike"},
            {"type": "text_similarity", "name": "fuzzy", "input": "{{sample.output_text}}",
             "reference": "{{item.answer}}", "evaluation_metric": "fuzzy_match", "pass_threshold": 0.5}])
        ds = {"type": "completions", "model": "smollm2-135m-instruct",
              "source": {"type": "file_content", "content": content},
              "sampling_params": {"temperature": 0, "max_completion_tokens": new_tokens},
              "input_messages": {"type": "template", "template": [{"role": "user", "content": "{{item.question}}"}]}}
        warm = c.evals.runs.create(ev.id, data_source={**ds, "source": {"type": "file_content",
                                                                       "content": content[:2]}})

        def timed_run() -> tuple[float, list]:
            t0 = time.perf_counter()
            run = c.evals.runs.create(ev.id, data_source=ds)
            while run.status not in ("completed", "failed", "canceled"):
                time.sleep(0.2)
                run = c.evals.runs.retrieve(run.id, eval_id=ev.id)
            took = time.perf_counter() - t0
            assert run.status == "completed" and run.result_counts.total == n_items, run
            return took, list(c.evals.runs.output_items.list(run.id, eval_id=ev.id, limit=1000))

        while c.evals.runs.retrieve(warm.id, eval_id=ev.id).status not in ("completed", "failed"):
            time.sleep(0.2)
        ours, out = timed_run()
        tokens = {o.datasource_item_id: o.sample.usage.completion_tokens for o in out}
        for name in [k for k in stack.procs if k.startswith("worker-cpu")]:
            stack.kill(name, signal.SIGTERM)
        stack.start("worker-cpu", "worker-cpu-one", env={"TUNELOG_EVAL_CONCURRENCY": "1"})
        time.sleep(3)
        ours_one, _ = timed_run()
    finally:
        stack.stop_all()
    path = ensure_base_model(ROOT / ".data" / "models", "smollm2-135m-instruct")
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    t0 = time.perf_counter()
    for i, line in enumerate(content):
        inputs = tok(tok.apply_chat_template([{"role": "user", "content": line["item"]["question"]}], tokenize=False,
                                             add_generation_prompt=True), return_tensors="pt", add_special_tokens=False)
        with torch.inference_mode():
            model.generate(**inputs, max_new_tokens=max(1, tokens[i]), min_new_tokens=max(1, tokens[i]),
                           do_sample=False, pad_token_id=tok.eos_token_id)
    bare = time.perf_counter() - t0
    report(f"eval run, {n_items} items (items/s)", n_items / ours, n_items / bare, "items/s",
           "plain generate in a loop", ">= 0.9x (machinery <= 10%)")
    report("eval run, one item at a time (items/s)", n_items / ours_one, n_items / bare, "items/s",
           "plain generate in a loop", ">= 0.9x (machinery <= 10%)")
    print(f"  {sum(tokens.values())} tokens generated in all; ours {ours:.1f} s (8 in flight), {ours_one:.1f} s "
          f"(1 in flight), plain generate {bare:.1f} s", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="smaller sizes (a smoke run)")
    ap.add_argument("--only", nargs="*", default=None,
                    help="appends batched replay latency retrieval ingest chat api train delegate dspy audit evals")
    ap.add_argument("--json", default=None, help="also write the results to this file")
    args = ap.parse_args()
    only = set(args.only or ["appends", "batched", "replay", "latency", "retrieval", "ingest", "chat", "api",
                                    "train", "delegate", "dspy", "audit", "evals"])
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
        if "retrieval" in only:
            bench_retrieval(server, 10_000 if args.quick else 100_000, 50 if args.quick else 300)
        if "ingest" in only:
            bench_ingest(server, redis_url, tmp, 40 if args.quick else 200)
        if "chat" in only:
            bench_chat(server, redis_url, tmp, 3 if args.quick else 10)
        if "api" in only:
            bench_api(server, redis_url, tmp, 5 if args.quick else 15)
        if "train" in only:
            bench_train(server, redis_url, tmp, 24 if args.quick else 48)
        if "delegate" in only:
            bench_delegate(server, redis_url, tmp, 20 if args.quick else 200)
        if "dspy" in only:
            bench_dspy(server, redis_url, tmp, 1 if args.quick else 2)
        if "audit" in only:
            bench_audit(server, 100_000 if args.quick else 1_000_000)
        if "evals" in only:
            bench_evals(server, redis_url, tmp, 10 if args.quick else 100)
    finally:
        rs.stop()
        pg.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        Path(args.json).write_text(json.dumps(RESULTS, indent=2))


if __name__ == "__main__":
    main()
