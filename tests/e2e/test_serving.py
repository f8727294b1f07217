"""The serving tier (issue 11): generation runs in serving replicas (`python -m workers.serving`), batched
continuously (with a shared KV cache for system messages), behind the API's least-loaded routing.

A module fixture runs two replicas and an API process over both (on the session's database and data
directory): replica A as configured by default, replica B small (a batch of 2, one waiting) so that a full
line is easy to reach. Every model is the bundled SmolLM2-135M; the two adapters are real peft LoRA adapters
with random weights (so they answer differently from the base), written into the artifact store."""
from __future__ import annotations

import json
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from tests.helpers import Stack, free_port, random_adapters, wait_for

PROMPTS = ["What is photosynthesis?", "Name three planets.", "Why is the sky blue?"]


@pytest.fixture(scope="module")
def tier(stack):
    """(api stack, {"a": url, "b": url}, token): two replicas and an API routing to both."""
    ports = {"a": free_port(), "b": free_port()}
    urls = {k: f"http://127.0.0.1:{p}" for k, p in ports.items()}
    api_port = free_port()
    env = {**stack.env, "TUNELOG_PORT": str(api_port), "TUNELOG_SERVING_URLS": ",".join(urls.values()),
           "TUNELOG_WEB_THREADS": "64", "TUNELOG_RATE_LIMIT_CHAT": "100000/minute",
           "TUNELOG_CHAT_CONCURRENCY_PER_KEY": "40", "TUNELOG_RATE_LIMIT_DEFAULT": "1000000/minute"}
    s = Stack(env=env, data_dir=stack.data_dir, port=api_port)
    s.admin_key = stack.admin_key
    s.start("serving", "serving-a", {"TUNELOG_SERVING_PORT": str(ports["a"])})
    s.start("serving", "serving-b", {"TUNELOG_SERVING_PORT": str(ports["b"]), "TUNELOG_SERVING_MAX_BATCH": "2",
                                     "TUNELOG_SERVING_MAX_WAITING": "1"})
    s.start("web", "web-tier")
    try:
        s.wait_healthy(120)
        for u in urls.values():
            wait_for(lambda u=u: requests.get(f"{u}/health", timeout=2).ok, 60, what=f"replica {u}")
        yield s, urls, stack.env["TUNELOG_SERVING_TOKEN"], ports
    finally:
        s.stop_all()


SYSTEM = "You are a patient tutor for pupils aged ten to fourteen. Answer in two short sentences."


def _stream(url: str, token: str, model: str, prompt: str, max_tokens: int = 16) -> str:
    # the second prompt comes with a system message: its KV cache is shared between requests (prefix cache)
    messages = ([{"role": "system", "content": SYSTEM}] if prompt == PROMPTS[1] else []) + [
        {"role": "user", "content": prompt}]
    r = requests.post(f"{url}/v1/chat/completions", headers={"Authorization": f"Bearer {token}"}, stream=True,
                      json={"model": model, "messages": messages, "stream": True,
                            "max_tokens": max_tokens, "temperature": 0}, timeout=300)
    assert r.status_code == 200, r.text
    text = []
    for line in r.iter_lines():
        if line.startswith(b"data: ") and line != b"data: [DONE]":
            chunk = json.loads(line[6:])
            assert "error" not in chunk, chunk
            text.extend(c["delta"].get("content") or "" for c in chunk["choices"])
    return "".join(text)


def test_two_adapters_and_the_base_in_one_batch_answer_as_each_alone(tier, stack):
    _, urls, token, _ = tier
    url = urls["a"]
    h = {"Authorization": f"Bearer {token}"}
    for name, rel in random_adapters(stack.data_dir).items():
        r = requests.post(f"{url}/v1/load_lora_adapter", headers=h, json={"lora_name": name, "lora_path": rel})
        assert r.status_code == 200, r.text
    jobs = [(m, p) for m in ("adapter-one", "adapter-two", "smollm2-135m-instruct") for p in PROMPTS[:2]]
    alone = {j: _stream(url, token, *j) for j in jobs}
    assert len({alone[(m, PROMPTS[0])] for m in ("adapter-one", "adapter-two", "smollm2-135m-instruct")}) == 3, \
        "the adapters answer differently from the base and from each other"
    before = requests.get(f"{url}/health").json()
    with ThreadPoolExecutor(len(jobs)) as pool:
        together = dict(zip(jobs, pool.map(lambda j: _stream(url, token, *j), jobs), strict=True))
    after = requests.get(f"{url}/health").json()
    assert together == alone
    steps, tokens = after["steps"] - before["steps"], after["tokens"] - before["tokens"]
    assert steps < tokens / 2, f"batched: {steps} steps for {tokens} tokens"
    assert after["prefix_hits"] >= before["prefix_hits"] + 3  # the system message was prefilled once per adapter


def test_the_replica_checks_its_token_and_confines_adapter_paths(tier):
    _, urls, token, _ = tier
    url = urls["a"]
    body = {"model": "smollm2-135m-instruct", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
    assert requests.post(f"{url}/v1/chat/completions", json=body).status_code == 401
    assert requests.post(f"{url}/v1/chat/completions", json=body,
                         headers={"Authorization": "Bearer nope"}).status_code == 401
    h = {"Authorization": f"Bearer {token}"}
    for path in ("/etc", "../../etc", "artifacts/../../etc", "models/smollm2-135m-instruct", "artifacts/none"):
        r = requests.post(f"{url}/v1/load_lora_adapter", headers=h, json={"lora_name": "x", "lora_path": path})
        assert r.status_code == 400, (path, r.text)
    for name in ("a.b", "", "x" * 101, "smollm2-135m-instruct", None):
        r = requests.post(f"{url}/v1/load_lora_adapter", headers=h,
                          json={"lora_name": name, "lora_path": "artifacts/serving-test/adapter-one"})
        assert r.status_code == 400, (name, r.text)
    r = requests.post(f"{url}/v1/chat/completions", headers=h, json={**body, "model": "x"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    r = requests.post(f"{url}/v1/chat/completions", headers=h, json={**body, "max_tokens": 10**9})
    assert r.status_code == 400


def test_a_full_replica_answers_429_with_retry_after(tier):
    _, urls, token, _ = tier
    url = urls["b"]  # a batch of 2 and one waiting: the fourth at once is refused
    h = {"Authorization": f"Bearer {token}"}
    body = {"model": "smollm2-135m-instruct", "messages": [{"role": "user", "content": "Count to 500."}],
            "max_tokens": 200, "stream": True}
    held = []
    try:
        for _ in range(3):
            held.append(requests.post(f"{url}/v1/chat/completions", headers=h, json=body, stream=True, timeout=60))
            time.sleep(0.5)
        r = requests.post(f"{url}/v1/chat/completions", headers=h, json=body, timeout=60)
        assert r.status_code == 429, r.text
        assert r.headers["Retry-After"] == "1" and r.json()["error"]["code"] == "serving_busy"
    finally:
        for x in held:
            x.close()
    # closed streams leave the batch: the replica is free again within seconds
    wait_for(lambda: requests.get(f"{url}/health").json()["running"] == 0, 30, what="the batch emptied")


def test_24_chats_stream_while_health_and_job_reads_stay_fast(tier):
    api, _, _, _ = tier
    k = api.new_key("trainer")
    key, project = k["key"], k["project"]
    viewer = api.new_key("viewer", project)["key"]
    stop = threading.Event()
    took: dict[str, list[float]] = {"/healthz": [], "/v1/fine_tuning/jobs": []}

    def chat(i: int) -> tuple[int, str]:
        r = requests.post(api.base_url + "/v1/chat/completions", headers={"Authorization": f"Bearer {viewer}"},
                          json={"model": "smollm2-135m-instruct", "stream": True, "max_tokens": 40, "temperature": 0,
                                "retrieval": False, "messages": [{"role": "user", "content": PROMPTS[i % 3]}]},
                          stream=True, timeout=300)
        body = r.text
        return r.status_code, body

    def reads() -> None:
        while not stop.is_set():
            for path, auth in (("/healthz", None), ("/v1/fine_tuning/jobs", key)):
                t0 = time.perf_counter()
                r = api.http("GET", path, auth)
                took[path].append(time.perf_counter() - t0)
                assert r.status_code == 200
            time.sleep(0.05)

    reader = threading.Thread(target=reads)
    with ThreadPoolExecutor(24) as pool:
        futures = [pool.submit(chat, i) for i in range(24)]
        time.sleep(1.0)
        reader.start()
        results = [f.result() for f in futures]
    stop.set()
    reader.join()
    codes = [c for c, _ in results]
    assert codes.count(200) >= 20 and set(codes) <= {200, 429}, codes  # replica B's line may refuse a few
    assert all("[DONE]" in b for c, b in results if c == 200)
    for path, t in took.items():
        p99 = statistics.quantiles(t, n=100)[98] if len(t) >= 20 else max(t)
        print(f"{path}: {len(t)} reads, p50 {statistics.median(t) * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms")
        assert len(t) >= 20 and p99 <= 0.1, (path, sorted(t)[-5:])


def test_a_replica_killed_mid_stream_ends_that_answer_with_an_error_and_the_next_chats_go_to_the_other(tier):
    import openai

    api, urls, _, ports = tier
    k = api.new_key("viewer")
    client = openai.OpenAI(base_url=api.base_url + "/v1", api_key=k["key"], max_retries=0)
    stream = client.chat.completions.create(
        model="smollm2-135m-instruct", stream=True, max_tokens=400, temperature=0,
        messages=[{"role": "user", "content": "List the numbers from 1 to 1000 separated by commas."}],
        extra_body={"retrieval": False})
    it = iter(stream)
    next(it)
    busy = wait_for(lambda: next((n for n, u in urls.items()
                                  if requests.get(f"{u}/health", timeout=2).json()["running"] > 0), None),
                    20, what="the replica answering")
    api.kill_tree(f"serving-{busy}")
    with pytest.raises(openai.APIError) as err:
        for _ in it:
            pass
    assert "serving" in str(err.value)
    for _ in range(4):  # the dead replica is skipped: every chat is answered by the other one
        r = client.chat.completions.create(model="smollm2-135m-instruct", max_tokens=4, temperature=0,
                                           messages=[{"role": "user", "content": "hi"}],
                                           extra_body={"retrieval": False})
        assert r.choices[0].message.content is not None
    wait_for(lambda: sorted(x["status"] == "ok" for x in api.http("GET", "/healthz").json()["parts"]["serving"][
        "replicas"]) == [False, True], 10, what="/healthz naming the dead replica")  # its answer may be 1 s old
    # back as it was for the other tests
    api.start("serving", f"serving-{busy}", {"TUNELOG_SERVING_PORT": str(ports[busy]),
                                             **({"TUNELOG_SERVING_MAX_BATCH": "2", "TUNELOG_SERVING_MAX_WAITING": "1"}
                                                if busy == "b" else {})})
    wait_for(lambda: requests.get(f"{urls[busy]}/health", timeout=2).ok, 60, what="the replica back")
