"""Issue 9: DSPy optimization jobs over HTTP against the running service, on the bundled SmolLM2-135M through
tunelog's own generation path (no network): bootstrap_few_shot finishes and its program answers in chat,
random search reports each candidate, a worker killed mid-run resumes from DSPy's cache to the same program,
cancel within 10 s, and bad input (optimizer, files, imported programs) is refused with nothing appended.

Kept small for CI's two cores: 4-8 training examples, 2-3 dev examples, at most 24-32 new tokens a call."""
from __future__ import annotations

import json
import time

import psutil
import pytest

from tests.conftest import ROOT
from tests.helpers import program_state, wait_for

pytestmark = pytest.mark.slow

BASE = "smollm2-135m-instruct"
TRAIN = (ROOT / "data" / "dspy_tutor" / "train.jsonl").read_bytes().splitlines(keepends=True)
VALID = (ROOT / "data" / "dspy_tutor" / "valid.jsonl").read_bytes().splitlines(keepends=True)


def upload(stack, key: str, content: bytes, name: str = "qa.jsonl"):
    return stack.http("POST", "/v1/files", key, files={"file": (name, content)}, data={"purpose": "fine-tune"})


def file_id(stack, key: str, content: bytes) -> str:
    r = upload(stack, key, content)
    assert r.status_code == 200, r.text
    return r.json()["id"]


def create(stack, key: str, train: str, valid: str | None, seed: int = 7, model: str = BASE, **options):
    body = {"model": model, "training_file": train, "seed": seed,
            "method": {"type": "dspy", "dspy": {"max_tokens": 32, **options}}}
    if valid:
        body["validation_file"] = valid
    return stack.http("POST", "/v1/fine_tuning/jobs", key, json=body)


def created(stack, key: str, *args, **kw) -> dict:
    r = create(stack, key, *args, **kw)
    assert r.status_code == 200, r.text
    return r.json()


def events(stack, key: str, job_id: str) -> list[dict]:
    r = stack.http("GET", f"/v1/fine_tuning/jobs/{job_id}/events?limit=100", key)
    assert r.status_code == 200, r.text
    return r.json()["data"][::-1]


def trials(stack, key: str, job_id: str) -> list[dict]:
    return [e["data"] for e in events(stack, key, job_id) if e["type"] == "metrics"]


def child_processes(job_id: str) -> list[psutil.Process]:
    out = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if any("dspy_opt" in part for part in p.info["cmdline"] or []) and \
                    any(job_id in part for part in p.info["cmdline"] or []):
                out.append(p)
        except psutil.Error:
            pass
    return out


def last_position(stack) -> int:
    return stack.sql("SELECT coalesce(max(global_position), 0) AS n FROM events")[0]["n"]


def appended_since(stack, position: int) -> list[str]:
    """Jobs, models and files appended after `position` (other tests' progress events do not count)."""
    return [r["type"] for r in stack.sql(
        "SELECT type FROM events WHERE global_position > %s AND type IN ('JobCreated', 'ModelRegistered', "
        "'FileUploaded') ORDER BY global_position", (position,))]


@pytest.fixture(scope="module")
def trainer(stack):
    return stack.new_key("trainer")


@pytest.fixture(scope="module")
def files(stack, trainer):
    k = trainer["key"]
    return {"train8": file_id(stack, k, b"".join(TRAIN[:8])), "valid3": file_id(stack, k, b"".join(VALID[:3])),
            "train4": file_id(stack, k, b"".join(TRAIN[8:12])), "valid2": file_id(stack, k, b"".join(VALID[3:5]))}


BOOTSTRAP = {"optimizer": "bootstrap_few_shot", "metric": "contains", "max_bootstrapped_demos": 2,
             "max_labeled_demos": 2}


@pytest.fixture(scope="module")
def bootstrap_jobs(stack, trainer, files):
    """Two identical bootstrap_few_shot jobs (seed 7): one runs undisturbed, the other loses its worker (SIGKILL
    of the whole tree) after its first evaluation and is re-queued."""
    k = trainer["key"]
    reference = created(stack, k, files["train8"], files["valid3"], **BOOTSTRAP)
    killed = created(stack, k, files["train8"], files["valid3"], **BOOTSTRAP)
    wait_for(lambda: trials(stack, k, killed["id"]), 600, 0.3, "the killed job's first evaluation")
    running = stack.sql("SELECT worker FROM leases WHERE job_id = %s", (killed["id"],))
    assert running, "the job finished before it could be killed"
    pid = int(running[0]["worker"].split(":")[1])
    victim = next(name for name, p in list(stack.procs.items()) if name.startswith("worker-cpu") and (
        p.pid == pid or pid in [c.pid for c in psutil.Process(p.pid).children(recursive=True)]))
    stack.kill_tree(victim)
    wait_for(lambda: not child_processes(killed["id"]), 15, what="the optimization process to die")
    stack.start("worker-cpu", victim)
    ref = stack.wait_job(k, reference["id"], {"succeeded", "failed"}, timeout=600)
    assert ref["status"] == "succeeded", ref["error"]
    return {"reference": ref, "killed": killed}


@pytest.fixture(scope="module")
def program(stack, trainer, bootstrap_jobs):
    model = bootstrap_jobs["reference"]["fine_tuned_model"]
    r = stack.http("GET", f"/api/models/{model}/program", trainer["key"])
    assert r.status_code == 200, r.text
    return {"id": model, "state": r.json(), "bytes": r.content}


def test_bootstrap_few_shot_reports_the_dev_score_before_and_after_and_registers_a_program(
        stack, trainer, bootstrap_jobs, program):
    k = trainer["key"]
    job = bootstrap_jobs["reference"]
    assert job["model"] == BASE and job["method"]["type"] == "dspy"
    assert job["method"]["dspy"]["optimizer"] == "bootstrap_few_shot" and job["method"]["dspy"]["seed"] == 7
    assert program["id"].startswith("dspy:")
    ts = trials(stack, k, job["id"])
    assert [t["phase"] for t in ts] == ["baseline", "final"], ts
    assert [t["trial"] for t in ts] == [1, 2]
    assert all(0 <= t["score"] <= 1 for t in ts) and ts[-1]["lm_calls"] > ts[0]["lm_calls"] >= 3
    model = stack.http("GET", f"/v1/models/{program['id']}", k).json()
    assert model["kind"] == "dspy-program" and model["root"] == BASE and model["job_id"] == job["id"]
    lineage = model["lineage"]
    assert lineage["optimizer"] == "bootstrap_few_shot" and lineage["metric"] == "contains"
    assert lineage["scores"]["dev_before"] == ts[0]["score"] and lineage["scores"]["dev_after"] == ts[-1]["score"]
    assert lineage["training_file_sha256"] and len(lineage["program_sha256"]) == 64
    messages = [e["message"] for e in events(stack, k, job["id"])]
    assert any(m.startswith("LM calls:") for m in messages), messages


def test_the_saved_program_is_dspy_json_state_with_its_demos(program):
    state = program["state"]
    assert set(state) == {"respond"} and state["respond"]["lm"] is None
    demos = state["respond"]["demos"]
    assert 1 <= len(demos) <= 4 and all(d["question"] and d["answer"] for d in demos)
    questions = {json.loads(line)["question"] for line in TRAIN[:8]}
    assert {d["question"] for d in demos} <= questions
    assert "tutor" in state["respond"]["signature"]["instructions"]


def test_the_program_answers_in_chat_with_its_demos_streamed_or_not(stack, trainer, program):
    k = trainer["key"]
    body = {"model": program["id"], "max_tokens": 16, "temperature": 0, "retrieval": False,
            "messages": [{"role": "user", "content": "What is the capital of Spain?"}]}
    r = stack.http("POST", "/v1/chat/completions", k, json=body)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["model"] == program["id"] and out["choices"][0]["message"]["content"].strip()
    assert "[[ ##" not in out["choices"][0]["message"]["content"]
    assert out["tunelog"]["program"] == {"runs_on": BASE, "demos": len(program["state"]["respond"]["demos"])}
    assert out["usage"]["prompt_tokens"] > 100  # the program's prompt: instructions, fields and demos
    wait_for(lambda: stack.sql("SELECT model FROM chat_answers WHERE id = %s", (out["id"],)), 30,
             what="the ChatAnswered event projected")
    assert stack.sql("SELECT model FROM chat_answers WHERE id = %s", (out["id"],))[0]["model"] == program["id"]
    r = stack.http("POST", "/v1/chat/completions", k, json={**body, "stream": True}, stream=True)
    assert r.status_code == 200
    chunks = [json.loads(line[6:]) for line in r.iter_lines(decode_unicode=True)
              if line.startswith("data: ") and line != "data: [DONE]"]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == out["choices"][0]["message"]["content"]  # temperature 0: the same answer, streamed


def test_a_worker_killed_mid_run_resumes_from_the_cache_to_the_same_program(stack, trainer, bootstrap_jobs, program):
    k = trainer["key"]
    killed = stack.wait_job(k, bootstrap_jobs["killed"]["id"], {"succeeded", "failed"}, timeout=600)
    assert killed["status"] == "succeeded", killed["error"]
    messages = [e["message"] for e in events(stack, k, killed["id"])]
    assert any("lost" in m and "re-queued" in m for m in messages), messages
    calls = [m for m in messages if m.startswith("LM calls:")]
    assert len(calls) == 1, calls  # the attempt that finished; its first evaluation came from the cache
    answered = int(calls[0].split("(")[1].split(" answered")[0])
    assert answered >= 3, calls
    ts = trials(stack, k, killed["id"])
    assert [t["trial"] for t in ts] == [1, 2], ts  # the replayed evaluation is not reported twice
    r = stack.http("GET", f"/api/models/{killed['fine_tuned_model']}/program", k)
    assert r.status_code == 200
    assert r.content == program["bytes"]  # byte for byte the uninterrupted run's program
    ref_trials = trials(stack, k, bootstrap_jobs["reference"]["id"])
    assert [t["score"] for t in ts] == [t["score"] for t in ref_trials]


def test_random_search_reports_every_candidate_with_the_best_so_far(stack, trainer, files):
    k = trainer["key"]
    job = created(stack, k, files["train4"], files["valid2"], optimizer="bootstrap_few_shot_with_random_search",
                  num_candidate_programs=2, max_bootstrapped_demos=1, max_labeled_demos=1, max_tokens=24)
    done = stack.wait_job(k, job["id"], {"succeeded", "failed"}, timeout=900)
    assert done["status"] == "succeeded", done["error"]
    ts = trials(stack, k, job["id"])
    # DSPy evaluates the zero-shot, labeled-only and unshuffled candidates, then the 2 random ones
    assert [t["phase"] for t in ts] == ["baseline"] + ["search"] * 5 + ["final"], ts
    assert [t["trial"] for t in ts] == list(range(1, 8)) and all(t["total_steps"] == 7 for t in ts)
    best = None
    for t in ts[1:-1]:
        best = t["score"] if best is None else max(best, t["score"])
        assert t["best_score"] == best
    assert [t["lm_calls"] for t in ts] == sorted(t["lm_calls"] for t in ts)
    assert any(t["estimated_finish"] for t in ts[:-1])
    assert done["fine_tuned_model"].startswith("dspy:")


def test_pause_resume_replays_the_cache_and_cancel_stops_within_ten_seconds(stack, trainer, files):
    k = trainer["key"]
    job = created(stack, k, files["train8"], files["valid3"], seed=99,
                  optimizer="bootstrap_few_shot_with_random_search", num_candidate_programs=8, max_tokens=64)
    wait_for(lambda: trials(stack, k, job["id"]), 300, 0.3, "a first evaluation")
    assert stack.http("POST", f"/v1/fine_tuning/jobs/{job['id']}/pause", k).status_code == 200
    paused = stack.wait_job(k, job["id"], {"paused", "failed", "succeeded"}, timeout=60)
    assert paused["status"] == "paused", paused
    wait_for(lambda: not child_processes(job["id"]), 15, what="the paused optimization to exit")
    seen = len(trials(stack, k, job["id"]))
    assert stack.http("POST", f"/v1/fine_tuning/jobs/{job['id']}/resume", k).status_code == 200
    wait_for(lambda: len(trials(stack, k, job["id"])) > seen, 300, 0.3, "an evaluation after the resume")
    ts = trials(stack, k, job["id"])
    assert [t["trial"] for t in ts] == list(range(1, len(ts) + 1)), ts  # replayed ones not reported twice
    started = time.monotonic()
    assert stack.http("POST", f"/v1/fine_tuning/jobs/{job['id']}/cancel", k).status_code == 200
    stack.wait_job(k, job["id"], {"cancelled"}, timeout=10)
    wait_for(lambda: not child_processes(job["id"]), 10, what="the optimization process to exit")
    assert time.monotonic() - started < 10
    assert not (stack.data_dir / "work" / job["id"] / "dspy-cache").exists()


def test_bad_dspy_requests_are_refused_and_append_nothing(stack, trainer, files, program):
    k = trainer["key"]
    before = last_position(stack)
    r = create(stack, k, files["train8"], None, optimizer="simulated_annealing")
    assert r.status_code == 400 and r.json()["error"]["param"] == "method.dspy.optimizer"
    assert "bootstrap_few_shot" in r.json()["error"]["message"]
    r = create(stack, k, files["train8"], None, metric="llm_judge")
    assert r.status_code == 400 and "judge_model" in r.json()["error"]["message"]
    r = create(stack, k, files["train8"], None, model=program["id"])
    assert r.status_code == 400 and r.json()["error"]["param"] == "model"
    r = create(stack, k, files["train8"], None, model="no-such-model")
    assert r.status_code == 400 and r.json()["error"]["code"] == "model_not_available"
    r = create(stack, k, files["valid2"], None)  # 2 examples
    assert r.status_code == 400 and "too_few_examples" in r.json()["error"]["message"]
    r = create(stack, k, files["train8"], None, unknown_option=1)
    assert r.status_code == 400 and r.json()["error"]["param"] == "method.dspy.unknown_option"
    # a chat file whose 2nd example has no question: named with its line
    chat = (b'{"messages": [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."}]}\n'
            b'{"messages": [{"role": "system", "content": "Be kind."}, {"role": "assistant", "content": "Hi."}]}\n') * 2
    r = create(stack, k, file_id(stack, k, chat), None)
    assert r.status_code == 400 and "no_question" in r.json()["error"]["message"], r.text
    assert "2, 4" in r.json()["error"]["message"]
    long = [{"question": "Q?", "answer": "A"}] * 3 + [{"question": "Q?", "answer": "word" * 4500}]
    r = create(stack, k, file_id(stack, k, "".join(json.dumps(x) + "\n" for x in long).encode()), None)
    assert r.status_code == 400 and "example_too_long" in r.json()["error"]["message"], r.text
    assert "line(s) 4" in r.json()["error"]["message"]
    many = file_id(stack, k, b'{"question": "What is it?", "answer": "It"}\n' * 2000)
    r = create(stack, k, many, None, optimizer="bootstrap_few_shot_with_random_search", num_candidate_programs=32)
    assert r.status_code == 400 and r.json()["error"]["code"] == "job_too_large", r.text
    assert appended_since(stack, before) == ["FileUploaded"] * 3  # only the three uploads
    # files: empty, and DSPy examples with problems on lines 2 and 3
    r = upload(stack, k, b"")
    assert r.status_code == 400
    bad = b'{"question": "Q?", "answer": "A"}\n{"question": "", "answer": "A"}\n{"question": "Q?", "context": 5}\n'
    r = upload(stack, k, bad)
    assert r.status_code == 400, r.text
    message = r.json()["error"]["message"]
    assert "missing_question" in message and "line(s) 2" in message and "missing_answer" in message
    assert "invalid_context" in message and "line(s) 3" in message
    # imported programs: unexpected keys, the wrong fields, an LM of its own, oversized
    before = last_position(stack)
    for state, param in (
            ({**program_state(), "evil": {"__reduce__": "os.system"}}, "program.evil"),
            ({"respond": {**program_state()["respond"], "callbacks": []}}, "program.respond.callbacks"),
            ({"respond": {**program_state()["respond"], "lm": {"model": "openai/gpt-4o",
                                                              "api_base": "http://attacker"}}}, "program.respond.lm"),
    ):
        r = stack.http("POST", "/api/programs", k, json={"model": BASE, "program": state})
        assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text
        assert r.json()["error"]["code"] == "invalid_program"
    wrong = program_state()
    wrong["respond"]["signature"]["fields"][1]["prefix"] = "Reasoning:"
    r = stack.http("POST", "/api/programs", k, json={"model": BASE, "program": wrong})
    assert r.status_code == 400 and "Question:" in r.json()["error"]["message"]
    huge = program_state(demos=[{"question": "q" * 9000, "answer": "a" * 9000}] * 20)
    r = stack.http("POST", "/api/programs", k, json={"model": BASE, "program": huge})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_program"
    r = stack.http("POST", "/api/programs", k, json={"model": BASE, "program": program_state(), "extra": 1})
    assert r.status_code == 400 and r.json()["error"]["param"] == "extra"
    assert appended_since(stack, before) == []


def test_an_exported_program_imports_as_a_new_model_that_answers(stack, trainer, program):
    k = trainer["key"]
    r = stack.http("POST", "/api/programs", k, json={"model": BASE, "program": program["state"], "suffix": "copy"})
    assert r.status_code == 201, r.text
    imported = r.json()
    assert imported["kind"] == "dspy-program" and imported["lineage"]["imported"] is True
    assert imported["lineage"]["program_sha256"] == stack.http(
        "GET", f"/v1/models/{program['id']}", k).json()["lineage"]["program_sha256"]
    wait_for(lambda: stack.http("GET", f"/api/models/{imported['id']}/program", k).status_code == 200, 30,
             what="the imported program projected")
    assert stack.http("GET", f"/api/models/{imported['id']}/program", k).content == program["bytes"]
    other = stack.new_key("trainer", project="dspy-other")
    assert stack.http("GET", f"/api/models/{imported['id']}/program", other["key"]).status_code == 404
    r = stack.http("POST", "/v1/chat/completions", k, json={
        "model": imported["id"], "max_tokens": 4, "temperature": 0, "retrieval": False,
        "messages": [{"role": "user", "content": "What is 2 + 2?"}]})
    assert r.status_code == 200 and r.json()["model"] == imported["id"], r.text
