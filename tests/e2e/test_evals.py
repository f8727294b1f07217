"""Issue 12: evaluations in OpenAI's Evals shapes, through the unmodified openai SDK, against the real stack (API,
projector, dispatcher, cpu workers, the serving replica with the bundled SmolLM2-135M), and the eval-gated
promotion. Runs are durable jobs: one is killed mid-run and resumes without regrading, one is canceled."""
from __future__ import annotations

import json
import signal
import time

import psutil
import pytest
from openai import BadRequestError, ConflictError, OpenAI

from tests.helpers import random_adapters, register_model, wait_for

pytestmark = pytest.mark.slow
BASE = "smollm2-135m-instruct"
QA_SCHEMA = {"type": "object", "properties": {"question": {"type": "string"}, "answer": {"type": "string"}},
             "required": ["question", "answer"]}


def client(stack, role: str = "trainer", project: str | None = None) -> tuple[OpenAI, dict]:
    key = stack.new_key(role, project)
    return OpenAI(base_url=stack.base_url + "/v1", api_key=key["key"], max_retries=0), key


def wait_run(c: OpenAI, eval_id: str, run_id: str, timeout: float = 240, statuses=("completed", "failed", "canceled")):
    deadline = time.monotonic() + timeout
    while True:
        run = c.evals.runs.retrieve(run_id, eval_id=eval_id)
        if run.status in statuses:
            return run
        assert time.monotonic() < deadline, f"run {run_id} still {run.status}"
        time.sleep(0.5)


def items(c: OpenAI, eval_id: str, run_id: str) -> list:
    return list(c.evals.runs.output_items.list(run_id, eval_id=eval_id, limit=100))


def head(stack) -> int:
    return stack.sql("SELECT coalesce(max(global_position), 0) AS p FROM events")[0]["p"]


def test_every_deterministic_grader_type_gives_exact_counts_on_fixed_samples(stack):
    c, _ = client(stack)
    ev = c.evals.create(
        name="graders", data_source_config={"type": "custom", "item_schema": QA_SCHEMA, "include_sample_schema": True},
        testing_criteria=[
            {"type": "string_check", "name": "eq", "input": "{{sample.output_text}}", "reference": "{{item.answer}}",
             "operation": "eq"},
            {"type": "string_check", "name": "ne", "input": "{{sample.output_text}}", "reference": "{{item.answer}}",
             "operation": "ne"},
            {"type": "string_check", "name": "like", "input": "{{sample.output_text}}",
             "reference": "{{item.answer}}", "operation": "like"},
            {"type": "string_check", "name": "ilike", "input": "{{sample.output_text}}",
             "reference": "{{item.answer}}", "operation": "ilike"},
            {"type": "text_similarity", "name": "fuzzy", "input": "{{sample.output_text}}",
             "reference": "{{item.answer}}", "evaluation_metric": "fuzzy_match", "pass_threshold": 0.9},
            {"type": "text_similarity", "name": "rouge", "input": "{{sample.output_text}}",
             "reference": "{{item.answer}}", "evaluation_metric": "rouge_l", "pass_threshold": 0.5},
            {"type": "text_similarity", "name": "bleu", "input": "{{sample.output_text}}",
             "reference": "{{item.answer}}", "evaluation_metric": "bleu", "pass_threshold": 0.5},
            {"type": "text_similarity", "name": "cosine", "input": "{{sample.output_text}}",
             "reference": "{{item.answer}}", "evaluation_metric": "cosine", "pass_threshold": 0.8},
        ])
    assert ev.object == "eval" and ev.data_source_config.type == "custom"
    assert [t.name for t in ev.testing_criteria] == ["eq", "ne", "like", "ilike", "fuzzy", "rouge", "bleu", "cosine"]
    rows = [  # (answer, sample): exact; a different case; contains; unrelated
        ({"question": "Capital of France?", "answer": "Paris"}, "Paris"),
        ({"question": "Capital of Italy?", "answer": "Rome"}, "rome"),
        ({"question": "What is 2+2?", "answer": "four"}, "The answer is four"),
        ({"question": "Largest planet?", "answer": "the planet jupiter is largest"}, "bananas grow on trees in warm"),
    ]
    run = c.evals.runs.create(ev.id, name="fixed", data_source={"type": "jsonl", "source": {
        "type": "file_content", "content": [{"item": i, "sample": {"output_text": s}} for i, s in rows]}})
    assert run.status == "queued" and run.object == "eval.run"
    run = wait_run(c, ev.id, run.id)
    assert run.status == "completed", run.error
    per = {r.testing_criteria: (r.passed, r.failed) for r in run.per_testing_criteria_results}
    assert per["eq"] == (1, 3) and per["ne"] == (3, 1) and per["like"] == (2, 2) and per["ilike"] == (3, 1)
    # fuzzy_match (rapidfuzz WRatio) is case-sensitive: "rome" vs "Rome" 0.75, a contained answer 0.9
    assert per["fuzzy"] == (2, 2)
    assert per["rouge"] == (2, 2)  # rouge_l is case-blind: "rome" passes, "The answer is four" is 0.4
    assert per["bleu"] == (0, 4)  # sentence BLEU of one or two words is low even for an exact match
    assert per["cosine"][0] >= 2 and per["cosine"][1] >= 1
    assert run.result_counts.total == 4 and run.result_counts.errored == 0
    assert run.result_counts.passed == 0 and run.result_counts.failed == 4  # no sample passes eq and ne at once
    out = items(c, ev.id, run.id)
    assert [o.datasource_item_id for o in out] == [0, 1, 2, 3]
    first = out[0]
    assert first.datasource_item["answer"] == "Paris" and first.sample.output[0].content == "Paris"
    assert {r.name: r.passed for r in first.results}["eq"] is True
    assert all(0.0 <= r.score <= 1.0 for o in out for r in o.results)
    # filters and paging as OpenAI's
    assert [o.status for o in c.evals.runs.output_items.list(run.id, eval_id=ev.id, status="pass")] == []
    page = c.evals.runs.output_items.list(run.id, eval_id=ev.id, limit=2)
    assert len(page.data) == 2 and page.has_more


def test_a_completions_run_samples_the_bundled_model_and_model_graders_judge(stack):
    c, key = client(stack)
    f = c.files.create(file=("qa.jsonl", "\n".join(json.dumps({"item": i}) for i in [
        {"question": "What is 2 + 3?", "answer": "5"}, {"question": "Name a primary colour.", "answer": "red"},
        {"question": "What do bees make?", "answer": "honey"}]).encode()), purpose="evals")
    assert f.purpose == "evals"
    ev = c.evals.create(
        name="tutor", data_source_config={"type": "custom", "item_schema": QA_SCHEMA, "include_sample_schema": True},
        testing_criteria=[
            {"type": "string_check", "name": "mentions", "input": "{{sample.output_text}}",
             "reference": "{{item.answer}}", "operation": "ilike"},
            {"type": "label_model", "name": "judge", "model": BASE, "labels": ["correct", "incorrect"],
             "passing_labels": ["correct"], "input": [
                 {"role": "system", "content": "Label the answer as correct or incorrect."},
                 {"role": "user", "content": "Q: {{item.question}} Expected: {{item.answer}} "
                                             "Answer: {{sample.output_text}}"}]},
            {"type": "score_model", "name": "score", "model": BASE, "range": [0, 10], "pass_threshold": 5,
             "input": [{"role": "user", "content": "Score 0-10: {{sample.output_text}}"}]},
        ])
    run = c.evals.runs.create(ev.id, name="base", data_source={
        "type": "completions", "model": BASE, "source": {"type": "file_id", "id": f.id},
        "input_messages": {"type": "template", "template": [
            {"role": "system", "content": "Answer in a few words."},
            {"role": "user", "content": "{{item.question}}"}]},
        "sampling_params": {"temperature": 0, "max_completion_tokens": 12, "seed": 1}})
    run = wait_run(c, ev.id, run.id)
    assert run.status == "completed", run.error
    assert run.model == BASE and run.result_counts.total == 3
    rc = run.result_counts
    assert rc.passed + rc.failed + rc.errored == 3
    out = items(c, ev.id, run.id)
    for o in out:
        assert o.sample.model == BASE and o.sample.output[0].content.strip()
        assert o.sample.usage.completion_tokens > 0 and o.sample.input[-1].content == o.datasource_item["question"]
        byname = {r.name: r for r in o.results}
        assert set(byname) == {"mentions", "judge", "score"}
        assert byname["mentions"].passed == (o.datasource_item["answer"].lower()
                                             in o.sample.output[0].content.lower())
        judge = byname["judge"]
        assert judge.passed == (judge.score == 1.0) and judge.score in (0.0, 1.0)
        assert 0 <= byname["score"].score <= 10
        counted = o.status == "pass"
        assert counted == all(r.passed for r in o.results) or o.status == "error"
    usage = {u.run_model_name: u for u in run.per_model_usage}
    assert usage[BASE].invocation_count == 3
    # the same run again gives the same samples (temperature 0): a run is reproducible
    again = wait_run(c, ev.id, c.evals.runs.create(ev.id, data_source=run.data_source.model_dump()).id)
    assert [o.sample.output[0].content for o in items(c, ev.id, again.id)] == \
        [o.sample.output[0].content for o in out]
    # listing: newest first on request; another project sees nothing
    runs = list(c.evals.runs.list(ev.id, order="desc"))
    assert [r.id for r in runs][:2] == [again.id, run.id]
    other, _ = client(stack, project="evals-other")
    with pytest.raises(Exception) as e:
        other.evals.retrieve(ev.id)
    assert getattr(e.value, "status_code", None) == 404
    assert ev.id not in {x.id for x in other.evals.list()}


def test_bad_eval_files_schemas_and_templates_are_400_and_append_nothing(stack):
    c, key = client(stack)
    before = head(stack)
    with pytest.raises(BadRequestError) as e:  # a bad eval file: every problem with its line
        c.files.create(file=("bad.jsonl", b'{"item": {"question": "a", "answer": "b"}}\nnot json\n[1]\n'
                             b'{"question": "no item"}\n'), purpose="evals")
    msg = e.value.body["message"]
    assert "line 2" in msg and "line 3" in msg and "line 4" in msg and "line 1" not in msg
    with pytest.raises(BadRequestError) as e:  # a template naming an unknown namespace
        c.evals.create(data_source_config={"type": "custom", "item_schema": QA_SCHEMA}, testing_criteria=[
            {"type": "string_check", "name": "x", "input": "{{answer.text}}", "reference": "a", "operation": "eq"}])
    assert e.value.body["code"] == "invalid_template" and e.value.body["param"] == "testing_criteria[0].input"
    with pytest.raises(BadRequestError) as e:  # an unbalanced template
        c.evals.create(data_source_config={"type": "custom", "item_schema": QA_SCHEMA}, testing_criteria=[
            {"type": "string_check", "name": "x", "input": "{{sample.output_text", "reference": "a",
             "operation": "eq"}])
    assert e.value.body["code"] == "invalid_template"
    with pytest.raises(BadRequestError) as e:  # python graders run user code: refused
        c.evals.create(data_source_config={"type": "custom", "item_schema": QA_SCHEMA}, testing_criteria=[
            {"type": "python", "name": "x", "source": "def grade(s, i): return 1"}])
    assert e.value.body["code"] == "unsupported_grader"
    with pytest.raises(BadRequestError) as e:  # not a JSON Schema
        c.evals.create(data_source_config={"type": "custom", "item_schema": {"type": "nonsense"}}, testing_criteria=[
            {"type": "string_check", "name": "x", "input": "a", "reference": "a", "operation": "eq"}])
    assert e.value.body["code"] == "invalid_item_schema"
    with pytest.raises(BadRequestError) as e:  # a judge that does not exist
        c.evals.create(data_source_config={"type": "custom", "item_schema": QA_SCHEMA}, testing_criteria=[
            {"type": "label_model", "name": "j", "model": "no-such-model", "labels": ["a", "b"],
             "passing_labels": ["a"], "input": [{"role": "user", "content": "{{sample.output_text}}"}]}])
    assert e.value.body["param"] == "testing_criteria[0].model"
    assert head(stack) == before, "a refused request appended to the log"

    ev = c.evals.create(data_source_config={"type": "custom", "item_schema": QA_SCHEMA}, testing_criteria=[
        {"type": "string_check", "name": "x", "input": "{{sample.output_text}}", "reference": "{{item.answer}}",
         "operation": "eq"}])
    f = c.files.create(file=("schema.jsonl", b'{"item": {"question": "a", "answer": "b"}}\n'
                             b'{"item": {"question": 3, "answer": "b"}}\n\n{"item": {"question": "c"}}\n'),
                       purpose="evals")
    before = head(stack)
    with pytest.raises(BadRequestError) as e:  # items against the eval's schema, by line (blank lines counted)
        c.evals.runs.create(ev.id, data_source={"type": "completions", "model": BASE,
                                                "source": {"type": "file_id", "id": f.id},
                                                "input_messages": {"type": "template", "template": [
                                                    {"role": "user", "content": "{{item.question}}"}]}})
    msg = e.value.body["message"]
    assert "line 2: does not match the eval's item_schema: item.question: 3 is not of type 'string'" in msg
    assert "line 4" in msg and "'answer' is a required property" in msg
    with pytest.raises(BadRequestError) as e:  # a sample reference where no sample exists yet
        c.evals.runs.create(ev.id, data_source={"type": "completions", "model": BASE, "source": {
            "type": "file_content", "content": [{"item": {"question": "a", "answer": "b"}}]},
            "input_messages": {"type": "template", "template": [
                {"role": "user", "content": "{{sample.output_text}}"}]}})
    assert e.value.body["code"] == "invalid_template"
    with pytest.raises(BadRequestError) as e:  # a jsonl run without samples
        c.evals.runs.create(ev.id, data_source={"type": "jsonl", "source": {
            "type": "file_content", "content": [{"item": {"question": "a", "answer": "b"}}]}})
    assert "line 1" in e.value.body["message"]
    with pytest.raises(BadRequestError) as e:  # a training file is not eval data
        train = c.files.create(file=("t.jsonl", json.dumps({"messages": [{"role": "user", "content": "hi"}, {
            "role": "assistant", "content": "hello"}]}).encode()), purpose="fine-tune")
        before = head(stack)
        c.evals.runs.create(ev.id, data_source={"type": "jsonl", "source": {"type": "file_id", "id": train.id}})
    assert "purpose" in e.value.body["message"]
    assert head(stack) == before


def _horse_and_worker(stack, run_id: str) -> tuple[int, str]:
    row = stack.sql("SELECT worker FROM leases WHERE job_id = %s", (run_id,))
    pid = int(row[0]["worker"].split(":")[1])
    for k, p in stack.procs.items():
        if k.startswith("worker-cpu") and (p.pid == pid or pid in {c.pid for c in psutil.Process(p.pid).children(
                recursive=True)}):
            return pid, k
    raise AssertionError(f"no cpu worker runs pid {pid}")


def _slow_run(c: OpenAI, n: int, tokens: int = 24):
    ev = c.evals.create(data_source_config={"type": "custom", "item_schema": QA_SCHEMA}, testing_criteria=[
        {"type": "string_check", "name": "x", "input": "{{sample.output_text}}", "reference": "{{item.answer}}",
         "operation": "ilike"}])
    run = c.evals.runs.create(ev.id, data_source={
        "type": "completions", "model": BASE, "sampling_params": {"temperature": 0, "max_completion_tokens": tokens},
        "source": {"type": "file_content", "content": [
            {"item": {"question": f"Count from {i} to {i + 20}, one number a line.", "answer": str(i)}}
            for i in range(n)]},
        "input_messages": {"type": "template", "template": [{"role": "user", "content": "{{item.question}}"}]}})
    return ev, run


def test_a_run_resumes_after_its_worker_is_killed_without_regrading(stack):
    c, _ = client(stack)
    ev, run = _slow_run(c, 24)
    wait_for(lambda: stack.sql("SELECT total FROM eval_runs WHERE id = %s", (run.id,))[0]["total"] >= 3, 120,
             what="a few items graded")
    _pid, worker = _horse_and_worker(stack, run.id)
    stack.kill_tree(worker)  # the worker and its work horse, mid-item
    graded_before = stack.sql("SELECT total FROM eval_runs WHERE id = %s", (run.id,))[0]["total"]
    stack.start("worker-cpu", worker)
    run = wait_run(c, ev.id, run.id, timeout=300)
    assert run.status == "completed", run.error
    assert run.result_counts.total == 24
    events = stack.sql("SELECT type, data FROM events WHERE stream_id = %s ORDER BY stream_version",
                       (f"evalrun-{run.id}",))
    graded = [e["data"]["index"] for e in events if e["type"] == "EvalItemGraded"]
    assert sorted(graded) == list(range(24)), "an item was graded twice or not at all"
    lost = [e for e in events if e["type"] == "EvalRunAttemptLost"]
    assert len(lost) == 1 and lost[0]["data"]["requeued"]
    started = [e["data"]["attempt"] for e in events if e["type"] == "EvalRunStarted"]
    assert started == [1, 2]
    first = [e for e in events if e["type"] == "EvalItemGraded" and e["data"]["attempt"] == 1]
    assert len(first) >= graded_before >= 3 and len(first) < 24  # the second attempt graded only what was left
    assert len(items(c, ev.id, run.id)) == 24


def test_cancel_stops_a_running_run_within_ten_seconds(stack):
    c, _ = client(stack)
    ev, run = _slow_run(c, 40, tokens=48)
    wait_for(lambda: stack.sql("SELECT status FROM eval_runs WHERE id = %s", (run.id,))[0]["status"] == "in_progress",
             120, what="the run started")
    asked = time.monotonic()
    r = c.evals.runs.cancel(run.id, eval_id=ev.id)
    assert r.id == run.id
    run = wait_run(c, ev.id, run.id, timeout=10, statuses=("canceled",))
    assert time.monotonic() - asked <= 10
    total = run.result_counts.total
    time.sleep(2)
    assert c.evals.runs.retrieve(run.id, eval_id=ev.id).result_counts.total == total  # nothing graded after
    assert total < 40
    # runs are kept as evidence: not deleted
    with pytest.raises(ConflictError):
        c.evals.runs.delete(run.id, eval_id=ev.id)


def _exact_eval(c: OpenAI, questions: list[str], expected: list[str]):
    ev = c.evals.create(name="gate", data_source_config={"type": "custom", "item_schema": QA_SCHEMA},
                        testing_criteria=[{"type": "string_check", "name": "exact", "input": "{{sample.output_text}}",
                                           "reference": "{{item.answer}}", "operation": "eq"}])
    content = [{"item": {"question": q, "answer": a}} for q, a in zip(questions, expected, strict=True)]
    return ev, content


def _completions(model: str, content: list) -> dict:
    return {"type": "completions", "model": model, "source": {"type": "file_content", "content": content},
            "sampling_params": {"temperature": 0, "max_completion_tokens": 6},
            "input_messages": {"type": "template", "template": [{"role": "user", "content": "{{item.question}}"}]}}


def test_the_eval_gate_accepts_a_better_model_and_refuses_a_worse_or_unevaluated_one(stack):
    c, key = client(stack, "admin", project="evals-gate")
    project = key["project"]
    adapters = random_adapters(stack.data_dir)
    better = register_model(stack, project, model_id=f"ft:{BASE}:{project}:better:0001",
                            artifact_path=adapters["adapter-one"])
    worse = register_model(stack, project, model_id=f"ft:{BASE}:{project}:worse:0002",
                           artifact_path=adapters["adapter-two"])
    unevaluated = register_model(stack, project, model_id=f"ft:{BASE}:{project}:never:0003",
                                 artifact_path=adapters["adapter-one"])
    questions = [f"Say a word about {w}." for w in ("cats", "rain", "maths", "trees", "music")]
    # what each model answers (temperature 0 is reproducible), then an eval the better one wins on
    probe, content = _exact_eval(c, questions, ["?"] * 5)
    answers = {}
    for m in (BASE, better, worse):
        run = wait_run(c, probe.id, c.evals.runs.create(probe.id, data_source=_completions(m, content)).id)
        assert run.status == "completed", run.error
        answers[m] = [o.sample.output[0].content for o in items(c, probe.id, run.id)]
    assert answers[better] != answers[BASE] and answers[worse] != answers[better]
    expected = answers[better][:4] + answers[BASE][4:]
    ev, content = _exact_eval(c, questions, expected)
    runs = {}
    for m in (BASE, better, worse):
        runs[m] = wait_run(c, ev.id, c.evals.runs.create(ev.id, data_source=_completions(m, content)).id)
    passed = {m: r.per_testing_criteria_results[0].passed for m, r in runs.items()}
    assert passed[better] >= 4 and passed[better] > passed[BASE] and passed[worse] < passed[better]
    r = stack.http("PUT", "/api/settings", key["key"], json={"promotion_eval": {
        "eval_id": ev.id, "criterion": "exact", "must_beat_current": True, "min_pass_rate": 0.5}})
    assert r.status_code == 200, r.text
    bad = stack.http("PUT", "/api/settings", key["key"], json={"promotion_eval": {
        "eval_id": ev.id, "criterion": "nope"}})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "promotion_eval.criterion"

    def promote(model: str):
        return stack.http("POST", "/api/aliases/tutor", key["key"], json={"model": model, "reason": "eval gate"})

    r = promote(worse)  # fewer items than the current target (the base)
    assert r.status_code == 409 and r.json()["error"]["code"] == "promotion_refused"
    assert f"{passed[worse]} of 5" in r.json()["error"]["message"]
    r = promote(unevaluated)
    assert r.status_code == 409 and "no completed run" in r.json()["error"]["message"]
    r = promote(better)
    assert r.status_code == 200, r.text
    assert r.json()["model"] == better and f"{passed[better]}/5" in r.json()["eval_gate"]
    r = promote(worse)  # now the current target is the better one
    assert r.status_code == 409
    # a run made another way (here: shorter answers) is not compared with the current target's runs
    assert stack.http("PUT", "/api/settings", key["key"], json={"promotion_eval": {
        "eval_id": ev.id, "criterion": "exact", "must_beat_current": True, "min_pass_rate": 0.0}}).status_code == 200
    other_way = {**_completions(worse, content), "sampling_params": {"temperature": 0, "max_completion_tokens": 2}}
    assert wait_run(c, ev.id, c.evals.runs.create(ev.id, data_source=other_way).id).status == "completed"
    r = promote(worse)
    assert r.status_code == 409 and "with the same items, prompt template, sampling and judges" in \
        r.json()["error"]["message"]
    # the gate's eval cannot be deleted while it gates
    assert stack.http("DELETE", f"/v1/evals/{ev.id}", key["key"]).status_code == 409

    # auto_evaluate + auto_promote: a new fine-tune is evaluated when it is registered, and promoted if it wins
    r = stack.http("PUT", "/api/settings", key["key"], json={
        "auto_evaluate": True, "auto_promote": True, "promotion_eval": {
            "eval_id": ev.id, "criterion": "exact", "must_beat_current": True, "min_pass_rate": 0.0,
            "data_source": {k: v for k, v in _completions(BASE, content).items() if k != "model"}}})
    assert r.status_code == 200, r.text
    loser = register_model(stack, project, model_id=f"ft:{BASE}:{project}:auto:0004", job_id="ftjob-auto0004",
                           artifact_path=adapters["adapter-two"])
    auto = wait_for(lambda: stack.sql("SELECT id FROM eval_runs WHERE model = %s AND eval_id = %s", (loser, ev.id)),
                    60, what="auto_evaluate's run")
    run = wait_run(c, ev.id, auto[0]["id"])
    assert run.status == "completed" and run.result_counts.errored == 0
    assert run.result_counts.passed + run.result_counts.failed == 5
    decided = wait_for(lambda: stack.sql("SELECT data FROM events WHERE stream_id = %s AND type = "
                                         "'PromotionEvaluated'", (f"evalrun-{run.id}",)), 60, what="the decision")
    assert decided[0]["data"]["promoted"] is False and "promotion refused" in decided[0]["data"]["reason"]
    assert stack.http("GET", "/api/aliases/tutor", key["key"]).json()["model"] == better

    # a winner: with the base back as the target, a model answering as `better` does is promoted automatically
    gate = r.json()["promotion_eval"]
    assert stack.http("PUT", "/api/settings", key["key"], json={"auto_evaluate": False, "auto_promote": False,
                                                                "promotion_eval": None}).status_code == 200
    assert promote(BASE).status_code == 200
    assert stack.http("PUT", "/api/settings", key["key"], json={
        "auto_evaluate": True, "auto_promote": True, "promotion_eval": gate}).status_code == 200
    winner = register_model(stack, project, model_id=f"ft:{BASE}:{project}:auto:0005", job_id="ftjob-auto0005",
                            artifact_path=adapters["adapter-one"])
    wait_for(lambda: stack.http("GET", "/api/aliases/tutor", key["key"]).json()["model"] == winner, 120,
             what="auto_promote moving tutor to the winner")
    history = stack.http("GET", "/api/aliases/tutor/history", key["key"]).json()["data"]
    assert history[-1]["model"] == winner and history[-1]["reason"].startswith("auto_promote after eval run")
    assert f"passed {passed[better]}/5" in history[-1]["reason"] and history[-1]["actor"] == "auto_promote"
    stack.http("PUT", "/api/settings", key["key"], json={"auto_evaluate": False, "auto_promote": False,
                                                         "promotion_eval": None})


def test_a_killed_run_in_a_dead_queue_is_failed_after_max_attempts_not_left_running(stack):
    """The dispatcher re-enqueues a lost attempt; SIGKILLing every attempt ends the run failed, never stuck."""
    c, _ = client(stack)
    ev, run = _slow_run(c, 200, tokens=32)
    for attempt in (1, 2, 3):
        wait_for(lambda a=attempt: stack.sql("SELECT 1 FROM leases WHERE job_id = %s AND attempt = %s",
                                             (run.id, a)), 120, what=f"attempt {attempt} running")
        pid, _worker = _horse_and_worker(stack, run.id)
        psutil.Process(pid).send_signal(signal.SIGKILL)  # only the work horse: the worker takes the next job
    run = wait_run(c, ev.id, run.id, timeout=120)
    assert run.status == "failed" and run.error.code == "attempts_exhausted"


def test_a_dspy_program_is_sampled_with_its_own_prompt_through_the_model_it_runs_on(stack):
    from tests.helpers import program_state

    c, key = client(stack)
    program = stack.http("POST", "/api/programs", key["key"], json={"model": BASE, "program": program_state(
        demos=[{"question": "What is 1 + 1?", "answer": "2"}], instructions="Answer with one number.")}).json()["id"]
    ev = c.evals.create(data_source_config={"type": "custom", "item_schema": QA_SCHEMA}, testing_criteria=[
        {"type": "string_check", "name": "x", "input": "{{sample.output_text}}", "reference": "{{item.answer}}",
         "operation": "ilike"}])
    content = [{"item": {"question": "What is 2 + 2?", "answer": "4"}}, {"item": {"question": "What is 3 + 3?",
                                                                                  "answer": "6"}}]
    ds = {**_completions(program, content), "sampling_params": {"temperature": 0, "max_completion_tokens": 32}}
    run = wait_run(c, ev.id, c.evals.runs.create(ev.id, data_source=ds).id)  # (DSPy's field header takes tokens)
    assert run.status == "completed" and run.model == program and run.result_counts.errored == 0
    out = items(c, ev.id, run.id)
    assert all(o.sample.output[0].content.strip() for o in out)
    assert all("[[ ##" not in o.sample.output[0].content for o in out)  # the answer field only
    events = stack.sql("SELECT data FROM events WHERE stream_id = %s AND type = 'EvalRunCreated'",
                       (f"evalrun-{run.id}",))
    target = events[0]["data"]["models"][program]
    assert target["backend"] == "dspy-program" and target["runner"] == BASE and target["program_sha256"]
