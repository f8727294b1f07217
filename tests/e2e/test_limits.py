"""One client cannot stall the API: chat input is bounded (size, messages, the model's context), rates
and concurrency are limited per key with 429 + Retry-After, long requests (generation, SSE) hold at
most part of the web threads, streams end on revocation and after a maximum duration, and a chat
retried with the same Idempotency-Key is answered once.

The rate and concurrency limits are exercised on a second API process (its own database, lowered
limits through the environment), so the session's stack keeps its defaults for every other test."""
from __future__ import annotations

import json
import os
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from tests.conftest import DATA
from tests.helpers import Stack, create_database, free_port

THREADS = 12  # -> 6 long requests at most (half the threads), 6 threads always free for the rest
LIMITED_ENV = {
    "TUNELOG_WEB_THREADS": str(THREADS),
    "TUNELOG_RATE_LIMIT_CHAT": "3/minute",
    "TUNELOG_CHAT_CONCURRENCY_PER_KEY": "2",
    "TUNELOG_SSE_STREAMS_PER_KEY": "4",
    "TUNELOG_SSE_MAX_SECONDS": "8",
    "TUNELOG_SSE_KEY_RECHECK_SECONDS": "1",
    "TUNELOG_GENERATION_QUEUE_SECONDS": "5",
    "TUNELOG_GENERATION_MAX_SECONDS": "20",
}
LONG_ANSWER = "List the numbers from 1 to 1000 separated by commas."  # the model goes on for ~2000 tokens


@pytest.fixture(scope="module")
def limited(stack, pg_server, tmp_root):
    """A second API process, lowered limits, its own database and no workers (so jobs stay queued)."""
    from eventlog.keys import register_key

    db = create_database(pg_server, "e2e_limits")
    data_dir = tmp_root / "limited"
    data_dir.mkdir()
    port = free_port()
    env = {**stack.env, **LIMITED_ENV, "DATABASE_URL": db, "TUNELOG_DATA_DIR": str(data_dir),
           "TUNELOG_PORT": str(port)}
    s = Stack(env=env, data_dir=data_dir, port=port)
    s.admin_key = "tl-test-limits-" + os.urandom(8).hex()
    register_key(db, s.admin_key, role="operator", project="default", name="limits operator")
    s.start("web")
    try:
        s.wait_healthy(120)
        yield s
    finally:
        s.stop_all()


def chat_body(content: str = "Say hi.", max_tokens: int = 1, **more) -> dict:
    return {"model": "tutor", "temperature": 0, "max_tokens": max_tokens, "retrieval": False,
            "messages": [{"role": "user", "content": content}], **more}


def chat(s: Stack, key: str, body: dict, timeout: float = 60, **kw) -> requests.Response:
    return requests.post(s.base_url + "/v1/chat/completions", json=body, timeout=timeout,
                         headers={"Authorization": f"Bearer {key}", **kw.pop("headers", {})}, **kw)


def open_stream(s: Stack, key: str, job_id: str, **headers) -> requests.Response:
    return requests.get(f"{s.base_url}/api/jobs/{job_id}/stream", stream=True, timeout=(5, 30),
                        headers={"Authorization": f"Bearer {key}", **headers})


def sse_messages(resp: requests.Response):
    """(event, id, data) of each message of an open text/event-stream response."""
    event, ev_id, data = "message", None, []
    for line in resp.iter_lines(decode_unicode=True):
        if line == "":
            if data:
                yield event, ev_id, "\n".join(data)
            event, ev_id, data = "message", None, []
        elif line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("id:"):
            ev_id = line[3:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].strip())


def assert_429(r: requests.Response, code: str) -> None:
    assert r.status_code == 429, r.text
    err = r.json()["error"]
    assert err["code"] == code and err["type"] == "rate_limit_error" and err["param"] is None, err
    assert err["message"]
    assert int(r.headers["Retry-After"]) >= 1


def queued_job(s: Stack, key: str) -> str:
    """A job that stays queued: this API process has no dispatcher nor workers."""
    fid = s.http("POST", "/v1/files", key, files={"file": ("t.jsonl", (DATA / "tiny_train.jsonl").read_bytes())},
                 data={"purpose": "fine-tune"}).json()["id"]
    r = s.http("POST", "/v1/fine_tuning/jobs", key, json={"model": "smollm2-135m-instruct", "training_file": fid})
    assert r.status_code in (200, 201), r.text
    return r.json()["id"]


# ---- (a) input bounds --------------------------------------------------------------------------------------
def test_oversized_chats_are_refused_at_once_before_any_generation(stack):
    k = stack.new_key("viewer")["key"]
    t0 = time.monotonic()
    r = chat(stack, k, chat_body("x" * 200_000))
    assert time.monotonic() - t0 < 1.0
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages", r.text
    assert "65536" in r.json()["error"]["message"]

    many = [{"role": "user", "content": "hi"}] * 300
    r = chat(stack, k, {**chat_body(), "messages": many})
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages"
    assert "256" in r.json()["error"]["message"]

    assert chat(stack, k, chat_body()).status_code == 200  # the model is loaded (the server may be new)
    # under the byte limit, but ~60k tokens: over the model's 8192-token context (digits are one token each)
    numbers = " ".join(str(i) for i in range(12000))
    t0 = time.monotonic()
    r = chat(stack, k, chat_body(numbers))
    assert time.monotonic() - t0 < 1.0
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["code"] == "context_length_exceeded" and err["param"] == "messages"
    assert "8192" in err["message"]

    # the prompt alone fits; with max_tokens it does not
    fits = " ".join("7" for _ in range(3300))  # ~6600 tokens
    r = chat(stack, k, chat_body(fits, max_tokens=2048))
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded", r.text
    assert "2048 in the completion" in r.json()["error"]["message"]


# ---- (b) rates per key -------------------------------------------------------------------------------------
def test_the_fourth_chat_in_a_minute_gets_429_with_retry_after(limited):
    k = limited.new_key("viewer")["key"]
    for _ in range(3):
        r = chat(limited, k, chat_body())
        assert r.status_code == 200, r.text
    r = chat(limited, k, chat_body())
    assert_429(r, "rate_limit_exceeded")
    assert int(r.headers["Retry-After"]) <= 60
    assert limited.http("GET", "/v1/models", k).status_code == 200  # other routes have their own limit
    other = limited.new_key("viewer")["key"]
    assert chat(limited, other, chat_body()).status_code == 200  # and other keys their own


# ---- (c) long requests never take every thread ------------------------------------------------------------
def test_slow_chats_and_streams_leave_the_rest_of_the_api_answering(limited):
    trainer = limited.new_key("trainer")
    project = trainer["project"]
    job_id = queued_job(limited, trainer["key"])
    watcher = limited.new_key("viewer", project)["key"]
    chatters = [limited.new_key("viewer", project)["key"] for _ in range(10)]
    reader = limited.new_key("viewer", project)["key"]

    streams = [open_stream(limited, watcher, job_id) for _ in range(2)]
    assert all(r.status_code == 200 for r in streams)
    results: list[tuple[float, requests.Response | Exception]] = []

    def slow_chat(key: str):
        t0 = time.monotonic()
        try:
            r = chat(limited, key, chat_body(LONG_ANSWER, max_tokens=2048), timeout=60)
        except requests.RequestException as e:  # a hang shows up as a timeout
            return time.monotonic() - t0, e
        return time.monotonic() - t0, r

    with ThreadPoolExecutor(20) as pool:
        futures = [pool.submit(slow_chat, k) for k in chatters * 2]
        time.sleep(1.0)
        for _ in range(3):
            for path, key in (("/healthz", None), ("/v1/fine_tuning/jobs", reader), ("/v1/models", reader)):
                t0 = time.monotonic()
                r = limited.http("GET", path, key)
                took = time.monotonic() - t0
                assert r.status_code == 200 and took < 2.0, (path, r.status_code, took)
            time.sleep(0.5)
        results = [f.result() for f in futures]
    for s in streams:
        s.close()

    answered = [r for _, r in results if isinstance(r, requests.Response) and r.status_code == 200]
    refused = [(t, r) for t, r in results if isinstance(r, requests.Response) and r.status_code == 429]
    assert not [r for _, r in results if isinstance(r, Exception)]
    assert len(answered) + len(refused) == 20
    # 6 long slots: 2 streams + 4 chats (one generates, until its 20 s cap; three wait for the model 5 s)
    assert len(refused) >= 16 and 1 <= len(answered) <= 4
    busy = [t for t, r in refused if r.json()["error"]["code"] == "server_busy"]
    assert len(busy) >= 14 and max(busy) < 5.0  # refused at once, not after waiting
    for _, r in refused:
        assert_429(r, r.json()["error"]["code"])
        assert r.json()["error"]["code"] in ("server_busy", "model_busy")


def test_a_key_has_two_chats_at_once_and_the_second_is_answered_beside_the_first(limited):
    k = limited.new_key("viewer")
    other = limited.new_key("viewer", k["project"])["key"]
    first = chat(limited, k["key"], chat_body(LONG_ANSWER, max_tokens=2048, stream=True), stream=True)
    assert first.status_code == 200  # generating, streamed
    outcome: dict[str, tuple[float, requests.Response]] = {}

    def second():  # long enough to be in flight when the third comes
        t0 = time.monotonic()
        r = chat(limited, k["key"], chat_body(LONG_ANSWER, max_tokens=48))
        outcome["second"] = (time.monotonic() - t0, r)

    t = threading.Thread(target=second)
    t.start()
    time.sleep(1.0)
    t0 = time.monotonic()
    third = chat(limited, k["key"], chat_body())
    assert time.monotonic() - t0 < 3.0
    assert_429(third, "concurrency_limit_exceeded")
    t.join(30)
    took, r2 = outcome["second"]
    # the serving tier batches: the second joins the first's batch rather than waiting for it to end (20 s cap)
    assert r2.status_code == 200, r2.text
    assert r2.json()["usage"]["completion_tokens"] == 48 and took < 15.0
    first.close()  # a client that goes away frees its slot at once
    r = chat(limited, other, chat_body())
    assert r.status_code == 200, r.text


def test_a_generation_is_stopped_at_its_time_cap(limited):
    k = limited.new_key("viewer")["key"]
    t0 = time.monotonic()
    r = chat(limited, k, chat_body(LONG_ANSWER, max_tokens=2048))
    took = time.monotonic() - t0
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["finish_reason"] == "length"
    assert r.json()["usage"]["completion_tokens"] < 2048 and took < 20 + 10


# ---- (d) event streams ---------------------------------------------------------------------------------------
def test_a_key_may_hold_four_streams_and_a_closed_one_frees_its_slot(limited):
    trainer = limited.new_key("trainer")
    job_id = queued_job(limited, trainer["key"])
    viewer = limited.new_key("viewer", trainer["project"])["key"]
    streams = [open_stream(limited, viewer, job_id) for _ in range(4)]
    try:
        assert [r.status_code for r in streams] == [200] * 4
        fifth = open_stream(limited, viewer, job_id)
        assert_429(fifth, "concurrency_limit_exceeded")
        assert open_stream(limited, trainer["key"], job_id).status_code == 200  # another key is not affected
        streams[0].close()
        deadline = time.monotonic() + 4
        while True:
            again = open_stream(limited, viewer, job_id)
            if again.status_code == 200 or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        assert again.status_code == 200, again.text
        streams.append(again)
    finally:
        for r in streams:
            r.close()


def test_a_revoked_keys_stream_ends_within_seconds(limited):
    admin = limited.new_key("admin")
    job_id = queued_job(limited, admin["key"])
    viewer = limited.new_key("viewer", admin["project"])
    stream = open_stream(limited, viewer["key"], job_id)
    assert stream.status_code == 200
    seen: list[str] = []
    ended = threading.Event()

    def read():
        for event, _, _ in sse_messages(stream):
            seen.append(event)
        ended.set()

    threading.Thread(target=read, daemon=True).start()
    time.sleep(1.0)
    assert not ended.is_set()
    assert limited.http("DELETE", f"/api/keys/{viewer['id']}", admin["key"]).status_code == 200
    t0 = time.monotonic()
    assert ended.wait(5), "the stream of a revoked key is still open"
    assert time.monotonic() - t0 < 5 and seen[-1] == "error"
    stream.close()


def test_a_stream_ends_after_its_maximum_duration_and_resumes_after_last_event_id(limited):
    trainer = limited.new_key("trainer")
    job_id = queued_job(limited, trainer["key"])
    t0 = time.monotonic()
    first = open_stream(limited, trainer["key"], job_id)
    messages = list(sse_messages(first))
    took = time.monotonic() - t0
    assert messages[-1][0] == "reconnect" and 7.5 <= took < 15, (messages, took)
    ids = [int(i) for e, i, _ in messages if e == "job"]
    assert ids, messages  # the job's history came first, each with its log position as the event id
    again = open_stream(limited, trainer["key"], job_id, **{"Last-Event-ID": str(ids[-1])})
    assert again.status_code == 200
    replayed = []

    def read():
        for event, ev_id, _ in sse_messages(again):
            if event == "job":
                replayed.append(int(ev_id))

    threading.Thread(target=read, daemon=True).start()
    time.sleep(2)
    again.close()
    assert all(i > ids[-1] for i in replayed)  # resumed, not replayed from the start


# ---- (e) Idempotency-Key on chat -------------------------------------------------------------------------
def answered(stack, project: str) -> int:
    return stack.sql("SELECT count(*) AS n FROM events WHERE type = 'ChatAnswered' AND data->>'project' = %s",
                     (project,))[0]["n"]


def test_a_chat_retried_with_its_idempotency_key_is_answered_once(stack):
    user = stack.new_key("trainer")
    k, project = user["key"], user["project"]
    admin = stack.new_key("admin", project)["key"]
    body = chat_body("What is a noun?", max_tokens=6)

    # chat text not stored (the default): a retry appends nothing and cannot be replayed
    idem = {"Idempotency-Key": uuid.uuid4().hex}
    r1 = chat(stack, k, body, headers=dict(idem))
    assert r1.status_code == 200, r1.text
    r2 = chat(stack, k, body, headers=dict(idem))
    assert r2.status_code == 409 and r2.json()["error"]["code"] == "idempotent_replay_unavailable", r2.text
    assert r1.json()["id"] in r2.json()["error"]["message"]
    assert answered(stack, project) == 1

    r = stack.http("PUT", "/api/settings", admin, json={"store_chat_text": True})
    assert r.status_code == 200, r.text
    try:
        idem = {"Idempotency-Key": uuid.uuid4().hex}
        r1 = chat(stack, k, body, headers=dict(idem))
        r2 = chat(stack, k, body, headers=dict(idem))
        assert r1.status_code == r2.status_code == 200
        assert r2.json() == r1.json() and r2.headers.get("Idempotent-Replayed") == "true"
        assert answered(stack, project) == 2
        # the same request streamed: the stored answer, re-emitted as chunks
        s = chat(stack, k, {**body, "stream": True}, headers=dict(idem), stream=True)
        assert s.status_code == 200 and s.headers["Content-Type"].startswith("text/event-stream")
        chunks = [json.loads(d) for _, _, d in sse_messages(s) if d != "[DONE]"]
        assert {c["id"] for c in chunks} == {r1.json()["id"]}
        text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
        assert text == r1.json()["choices"][0]["message"]["content"]
        assert answered(stack, project) == 2
        # the same key with another request is refused
        other = chat(stack, k, chat_body("What is a verb?", max_tokens=6), headers=dict(idem))
        assert other.status_code == 422 and other.json()["error"]["code"] == "idempotency_key_reused"

        # a duplicate sent while the first is still generating does not generate again
        idem = {"Idempotency-Key": uuid.uuid4().hex}
        slow = chat_body("Tell me about nouns.", max_tokens=48)
        with ThreadPoolExecutor(2) as pool:
            first = pool.submit(chat, stack, k, slow, headers=dict(idem))
            time.sleep(0.3)
            second = pool.submit(chat, stack, k, slow, headers=dict(idem))
            a, b = first.result(), second.result()
        codes = sorted([a.status_code, b.status_code])
        assert codes in ([200, 200], [200, 409]), (a.text, b.text)
        if codes == [200, 409]:
            dup = a if a.status_code == 409 else b
            assert dup.json()["error"]["code"] == "request_in_progress"
        else:
            assert a.json() == b.json()
        assert answered(stack, project) == 3
    finally:
        stack.http("PUT", "/api/settings", admin, json={"store_chat_text": False})
