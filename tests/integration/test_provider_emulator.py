"""The OpenAI emulator (tests/fakes/openai_provider.py) as the unmodified `openai` SDK sees it.

No Postgres or Redis: these tests only start the emulator. Most drive its clock by hand, so a job's
whole lifecycle takes no real time; one follows a job on the wall clock."""
from __future__ import annotations

import base64
import json
import time

import openai
import pytest
from openai import OpenAI

from tests.fakes.openai_provider import EmulatedProvider

KEY = "sk-emulator-test-key-0123456789"
TRAINING = b"".join(
    json.dumps({"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]}).encode()
    + b"\n"
    for i in range(12)
)


class Clock:
    def __init__(self) -> None:
        self.now = 1_760_000_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def provider(clock):
    with EmulatedProvider(KEY, clock=clock) as p:
        yield p


@pytest.fixture
def client(provider):
    return OpenAI(base_url=provider.base_url, api_key=KEY, max_retries=0)


def upload(client: OpenAI, data: bytes = TRAINING, name: str = "train.jsonl") -> str:
    return client.files.create(file=(name, data), purpose="fine-tune").id


def run_to_end(client: OpenAI, clock: Clock, job_id: str) -> object:
    clock.advance(60)  # default timings finish in 0.5 + 0.3 + 4 * 0.3 s
    return client.fine_tuning.jobs.retrieve(job_id)


def test_start_returns_a_loopback_v1_url_and_stop_frees_it():
    p = EmulatedProvider(KEY)
    url = p.start()
    assert url.startswith("http://127.0.0.1:") and url.endswith("/v1")
    assert p.start() == url  # idempotent
    p.stop()
    p.stop()
    with pytest.raises(openai.APIConnectionError):
        OpenAI(base_url=url, api_key=KEY, max_retries=0, timeout=2).models.list()


def test_files_upload_list_retrieve_content_and_delete(client, provider):
    first = client.files.create(file=("train.jsonl", TRAINING), purpose="fine-tune")
    assert first.id.startswith("file-") and first.object == "file"
    assert (first.bytes, first.filename, first.purpose, first.status) == (len(TRAINING), "train.jsonl", "fine-tune",
                                                                         "processed")
    second = upload(client, b'{"messages": []}\n', "valid.jsonl")
    assert provider.uploads == [("train.jsonl", TRAINING), ("valid.jsonl", b'{"messages": []}\n')]
    assert provider.file_bytes(first.id) == TRAINING

    page = client.files.list(purpose="fine-tune", limit=1)
    assert [f.id for f in page.data] == [second]  # newest first by default
    assert page.has_more is True
    assert [f.id for f in client.files.list(purpose="fine-tune", limit=1, after=second).data] == [first.id]
    assert [f.id for f in client.files.list(order="asc")] == [first.id, second]
    assert client.files.list(purpose="batch").data == []

    assert client.files.retrieve(first.id).filename == "train.jsonl"
    assert client.files.content(first.id).read() == TRAINING
    assert client.files.delete(second).deleted is True
    with pytest.raises(openai.NotFoundError) as missing:
        client.files.retrieve(second)
    assert missing.value.param == "id" and "No such File object" in missing.value.message


def test_fine_tune_uploads_must_be_jsonl_with_a_known_purpose(client):
    with pytest.raises(openai.BadRequestError, match="Must be .jsonl"):
        client.files.create(file=("train.csv", b"a,b\n"), purpose="fine-tune")
    with pytest.raises(openai.BadRequestError) as bad:
        client.files.create(file=("x.jsonl", b"{}\n"), purpose="nonsense")
    assert bad.value.param == "purpose"


def test_job_object_on_create_is_the_reference_shape(client, provider):
    file_id = upload(client)
    job = client.fine_tuning.jobs.create(model="gpt-4o-mini", training_file=file_id, suffix="tutor", seed=7,
                                         metadata={"tunelog_job": "j1"})
    raw = provider.get_job(job.id)
    assert set(raw) == {"object", "id", "created_at", "error", "fine_tuned_model", "finished_at", "hyperparameters",
                        "model", "organization_id", "result_files", "seed", "status", "trained_tokens",
                        "training_file", "validation_file", "integrations", "metadata", "method",
                        "estimated_finish", "user_provided_suffix"}
    assert job.id.startswith("ftjob-") and job.object == "fine_tuning.job"
    assert job.model == "gpt-4o-mini-2024-07-18"  # the alias resolves to its snapshot
    assert job.status == "validating_files"
    assert (job.error, job.fine_tuned_model, job.finished_at, job.trained_tokens) == (None, None, None, None)
    assert (job.result_files, job.integrations, job.seed, job.metadata) == ([], [], 7, {"tunelog_job": "j1"})
    assert raw["user_provided_suffix"] == "tutor" and raw["estimated_finish"] is None
    assert job.method.type == "supervised"
    assert job.method.supervised.hyperparameters.n_epochs == "auto"
    assert provider.created_jobs[0]["metadata"] == {"tunelog_job": "j1"}


def test_a_job_runs_to_success_and_its_model_serves_chat(client, provider, clock):
    file_id = upload(client)
    job = client.fine_tuning.jobs.create(
        model="gpt-4.1-nano-2025-04-14", training_file=file_id, suffix="tutor",
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2}}})
    clock.advance(0.5)
    assert client.fine_tuning.jobs.retrieve(job.id).status == "queued"
    clock.advance(0.3)
    running = client.fine_tuning.jobs.retrieve(job.id)
    assert running.status == "running" and running.estimated_finish is not None
    assert running.method.supervised.hyperparameters.batch_size == 1  # "auto" resolved when training starts

    done = run_to_end(client, clock, job.id)
    assert done.status == "succeeded" and done.error is None and done.estimated_finish is None
    assert done.fine_tuned_model == f"ft:gpt-4.1-nano-2025-04-14:emulator:tutor:{job.id[-8:]}"
    assert done.trained_tokens == 2 * len(TRAINING.split())
    assert done.finished_at is not None and len(done.result_files) == 1
    csv = base64.b64decode(client.files.content(done.result_files[0]).read()).decode()
    assert csv.splitlines()[0].startswith("step,train_loss") and len(csv.splitlines()) == 5

    assert done.fine_tuned_model in [m.id for m in client.models.list()]
    assert client.models.retrieve(done.fine_tuned_model).owned_by == "org-emulator"
    answer = client.chat.completions.create(model=done.fine_tuned_model,
                                            messages=[{"role": "user", "content": "hello there"}])
    assert answer.choices[0].message.content == f"[{done.fine_tuned_model}] hello there"


def test_events_each_appear_once_newest_first_with_stable_ids(client, clock):
    job = client.fine_tuning.jobs.create(model="gpt-4o-mini-2024-07-18", training_file=upload(client))
    clock.advance(0.9)  # validated, queued, started, step 1 (at 1.1 s) not yet
    early = [e.message for e in client.fine_tuning.jobs.list_events(job.id)]
    assert early == ["Fine-tuning job started", "Files validated, moving job to queued state",
                     f"Validating training file: {job.training_file}"]
    run_to_end(client, clock, job.id)

    seen, after = [], None
    while True:
        page = client.fine_tuning.jobs.list_events(job.id, limit=3, **({"after": after} if after else {}))
        seen.extend(page.data)
        if not page.has_more:
            break
        after = page.data[-1].id
    assert len({e.id for e in seen}) == len(seen) == 3 + 4 + 3 + 2
    assert all(e.id.startswith("ft-event-") for e in seen)
    assert [e.id for e in client.fine_tuning.jobs.list_events(job.id, limit=100)] == [e.id for e in seen]
    messages = [e.message for e in reversed(seen)]
    assert messages[:3] == list(reversed(early))
    model = client.fine_tuning.jobs.retrieve(job.id).fine_tuned_model
    assert messages[-2:] == [f"New fine-tuned model created: {model}", "The job has successfully completed"]
    metrics = [e for e in reversed(seen) if e.type == "metrics"]
    assert [e.data["step"] for e in metrics] == [1, 2, 3, 4]
    assert metrics[0].message.startswith("Step 1/4: training loss=")
    assert set(metrics[0].data) == {"step", "train_loss", "total_steps", "train_mean_token_accuracy"}
    assert metrics[-1].data["train_loss"] < metrics[0].data["train_loss"]


def test_checkpoints_at_the_last_steps(client, clock):
    valid = upload(client, TRAINING, "valid.jsonl")
    job = client.fine_tuning.jobs.create(model="gpt-4o-mini-2024-07-18", training_file=upload(client),
                                         validation_file=valid, suffix="s")
    done = run_to_end(client, clock, job.id)
    checkpoints = client.fine_tuning.jobs.checkpoints.list(job.id)
    assert [c.step_number for c in checkpoints.data] == [4, 3, 2]
    newest = checkpoints.data[0]
    assert newest.id.startswith("ftckpt_") and newest.fine_tuning_job_id == job.id
    assert newest.fine_tuned_model_checkpoint == f"{done.fine_tuned_model}:ckpt-step-4"
    assert newest.metrics.valid_loss is not None and newest.metrics.full_valid_loss is not None
    second_page = client.fine_tuning.jobs.checkpoints.list(job.id, limit=2, after=newest.id)
    assert [c.step_number for c in second_page.data] == [3, 2] and second_page.has_more is False
    events = client.fine_tuning.jobs.list_events(job.id, limit=100).data
    assert any("validation loss=" in e.message for e in events)
    answer = client.chat.completions.create(model=newest.fine_tuned_model_checkpoint,
                                            messages=[{"role": "user", "content": "hi"}])
    assert answer.model == newest.fine_tuned_model_checkpoint


def test_jobs_list_newest_first_with_paging_and_metadata_filter(client):
    file_id = upload(client)
    ids = [client.fine_tuning.jobs.create(model="gpt-4o-mini", training_file=file_id,
                                          metadata={"project": p}).id for p in ("a", "b", "a")]
    assert [j.id for j in client.fine_tuning.jobs.list()] == ids[::-1]
    assert [j.id for j in client.fine_tuning.jobs.list(metadata={"project": "a"})] == [ids[2], ids[0]]
    assert client.fine_tuning.jobs.list(metadata={"project": "zzz"}).data == []
    page = client.fine_tuning.jobs.list(limit=2)
    assert page.has_more is True
    assert [j.id for j in client.fine_tuning.jobs.list(limit=2, after=page.data[-1].id).data] == [ids[0]]


def test_cancel_a_held_job_then_cancel_again_is_refused(client, provider, clock):
    provider.hold = True
    job = client.fine_tuning.jobs.create(model="gpt-4o-mini", training_file=upload(client))
    clock.advance(3600)
    held = client.fine_tuning.jobs.retrieve(job.id)
    assert held.status == "running"
    assert [c.step_number for c in client.fine_tuning.jobs.checkpoints.list(job.id)] == [3, 2]  # never the last
    cancelled = client.fine_tuning.jobs.cancel(job.id)
    assert cancelled.status == "cancelled" and cancelled.finished_at is not None
    assert client.fine_tuning.jobs.list_events(job.id, limit=1).data[0].level == "warn"
    provider.hold = False
    clock.advance(60)
    assert client.fine_tuning.jobs.retrieve(job.id).status == "cancelled"
    with pytest.raises(openai.BadRequestError) as refused:
        client.fine_tuning.jobs.cancel(job.id)
    assert refused.value.code == "job_not_cancellable"


def test_hold_released_lets_the_job_finish(client, provider, clock):
    provider.hold = True
    job = client.fine_tuning.jobs.create(model="gpt-4o-mini", training_file=upload(client))
    clock.advance(60)
    assert client.fine_tuning.jobs.retrieve(job.id).status == "running"
    provider.hold = False
    assert client.fine_tuning.jobs.retrieve(job.id).status == "succeeded"


def test_pause_and_resume_shift_the_schedule(client, clock):
    job = client.fine_tuning.jobs.create(model="gpt-4o-mini", training_file=upload(client))
    clock.advance(0.9)
    assert client.fine_tuning.jobs.pause(job.id).status == "paused"
    clock.advance(600)
    assert client.fine_tuning.jobs.retrieve(job.id).status == "paused"
    assert client.fine_tuning.jobs.resume(job.id).status == "running"
    clock.advance(1.5)
    assert client.fine_tuning.jobs.retrieve(job.id).status == "succeeded"
    with pytest.raises(openai.BadRequestError):
        client.fine_tuning.jobs.pause(job.id)


def test_scripted_job_failure_fails_in_validation(client, provider, clock):
    provider.job_failure = {"code": "invalid_training_file", "message": "The file has no assistant messages.",
                            "param": "training_file"}
    job = client.fine_tuning.jobs.create(model="gpt-4o-mini", training_file=upload(client))
    clock.advance(0.4)
    assert client.fine_tuning.jobs.retrieve(job.id).status == "validating_files"
    clock.advance(60)
    failed = client.fine_tuning.jobs.retrieve(job.id)
    assert failed.status == "failed" and failed.fine_tuned_model is None and failed.finished_at is not None
    assert (failed.error.code, failed.error.message, failed.error.param) == (
        "invalid_training_file", "The file has no assistant messages.", "training_file")
    last = client.fine_tuning.jobs.list_events(job.id).data[0]
    assert (last.level, last.message) == ("error", "The file has no assistant messages.")
    assert client.fine_tuning.jobs.checkpoints.list(job.id).data == []


def test_training_files_are_validated_as_openai_does(client, clock):
    three_lines = b"".join(TRAINING.splitlines(keepends=True)[:3])
    short = client.fine_tuning.jobs.create(model="gpt-4o-mini", training_file=upload(client, three_lines))
    garbage = client.fine_tuning.jobs.create(model="gpt-4o-mini", training_file=upload(client, b"not json\n" * 12))
    dpo_shape = client.fine_tuning.jobs.create(model="gpt-4o-mini", training_file=upload(client),
                                               method={"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.2}}})
    clock.advance(60)
    assert client.fine_tuning.jobs.retrieve(short.id).error.code == "invalid_n_examples"
    assert client.fine_tuning.jobs.retrieve(garbage.id).error.code == "invalid_training_file"
    assert client.fine_tuning.jobs.retrieve(dpo_shape.id).error.code == "invalid_training_file"


def test_dpo_and_legacy_hyperparameters(client, clock):
    dpo_line = json.dumps({"input": {"messages": [{"role": "user", "content": "q"}]},
                           "preferred_output": [{"role": "assistant", "content": "good"}],
                           "non_preferred_output": [{"role": "assistant", "content": "bad"}]}).encode() + b"\n"
    dpo = client.fine_tuning.jobs.create(model="gpt-4o-mini", training_file=upload(client, dpo_line * 10),
                                         method={"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.2}}})
    assert dpo.method.dpo.hyperparameters.beta == 0.2
    legacy = client.fine_tuning.jobs.create(model="gpt-4o-mini", training_file=upload(client),
                                            hyperparameters={"n_epochs": 5})
    assert legacy.method.type == "supervised" and legacy.hyperparameters.n_epochs == 5
    assert legacy.method.supervised.hyperparameters.n_epochs == 5
    clock.advance(60)
    assert client.fine_tuning.jobs.retrieve(dpo.id).status == "succeeded"
    with pytest.raises(openai.BadRequestError):
        client.fine_tuning.jobs.create(model="gpt-4o-mini", training_file=upload(client),
                                       method={"type": "dspy"})  # tunelog's own method is not OpenAI's
    with pytest.raises(openai.BadRequestError):
        client.fine_tuning.jobs.create(model="gpt-4o-mini", training_file=upload(client),
                                       hyperparameters={"n_epochs": 0})


def test_create_refusals_match_openai(client, provider):
    file_id = upload(client)
    with pytest.raises(openai.BadRequestError) as bad_file:
        client.fine_tuning.jobs.create(model="gpt-4o-mini", training_file="file-nope")
    assert (bad_file.value.param, bad_file.value.code) == ("training_file", None)
    assert "invalid training_file: file-nope" in bad_file.value.message
    with pytest.raises(openai.BadRequestError) as bad_model:
        client.fine_tuning.jobs.create(model="gpt-9", training_file=file_id)
    assert (bad_model.value.code, bad_model.value.param) == ("model_not_available", "model")
    assert "not available for fine-tuning" in bad_model.value.message
    provider.fine_tuning_unavailable = True
    with pytest.raises(openai.BadRequestError) as unavailable:
        client.fine_tuning.jobs.create(model="gpt-4o-mini", training_file=file_id)
    assert unavailable.value.code == "model_not_available"
    assert provider.created_jobs == []
    with pytest.raises(openai.NotFoundError) as missing:
        client.fine_tuning.jobs.retrieve("ftjob-missing")
    assert missing.value.code == "fine_tune_not_found"


def test_fail_next_answers_429_then_recovers(client, provider):
    provider.fail_next(1, 429, path_contains="/fine_tuning/jobs", retry_after=7)
    with pytest.raises(openai.RateLimitError) as limited:
        client.fine_tuning.jobs.list()
    assert limited.value.response.headers["Retry-After"] == "7"
    assert limited.value.code == "rate_limit_exceeded"
    assert limited.value.body == {"message": limited.value.body["message"], "type": "requests", "param": None,
                                  "code": "rate_limit_exceeded"}
    assert client.fine_tuning.jobs.list().data == []
    provider.fail_next(1, 500, path_contains="/files")
    client.models.list()  # does not match, and does not use up the fault
    with pytest.raises(openai.InternalServerError) as broken:
        client.files.list()
    assert broken.value.type == "server_error"
    provider.fail_next(1, 503, retry_after=2)
    with pytest.raises(openai.InternalServerError) as unavailable:
        client.models.list()
    assert unavailable.value.status_code == 503 and unavailable.value.response.headers["Retry-After"] == "2"
    assert provider.requests.count(("GET", "/v1/fine_tuning/jobs")) == 2


def test_a_wrong_key_is_refused_without_being_echoed(provider):
    wrong = "sk-wrong-key-abcdefghijklmnop"
    with pytest.raises(openai.AuthenticationError) as refused:
        OpenAI(base_url=provider.base_url, api_key=wrong, max_retries=0).models.list()
    assert refused.value.code == "invalid_api_key" and refused.value.type == "invalid_request_error"
    assert refused.value.param is None
    assert wrong not in refused.value.message and "Incorrect API key provided: sk-" in refused.value.message
    assert refused.value.request_id is not None


def test_unknown_routes_answer_openai_errors(client):
    with pytest.raises(openai.NotFoundError, match="Invalid URL"):
        client.get("/nothing/here", cast_to=object)


def test_chat_completion_plain(client, provider):
    answer = client.chat.completions.create(
        model="gpt-4o-mini", max_tokens=3,
        messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": "one two three four five"}])
    assert answer.object == "chat.completion" and answer.model == "gpt-4o-mini-2024-07-18"
    assert answer.choices[0].message.content == "[gpt-4o-mini] one two"
    assert answer.choices[0].finish_reason == "length"
    assert answer.usage.completion_tokens == 3
    assert answer.usage.total_tokens == answer.usage.prompt_tokens + 3
    assert provider.last_chat_messages[-1]["content"] == "one two three four five"
    provider.responder = lambda model, messages: "fixed answer"
    assert client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}]
                                          ).choices[0].message.content == "fixed answer"
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="ft:nothing", messages=[{"role": "user", "content": "x"}])
    assert missing.value.code == "model_not_found"


def test_chat_completion_streamed_with_usage(client):
    stream = client.chat.completions.create(model="gpt-4.1-nano-2025-04-14", stream=True,
                                            stream_options={"include_usage": True},
                                            messages=[{"role": "user", "content": [{"type": "text", "text": "a b"}]}])
    chunks = list(stream)
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert len({c.id for c in chunks}) == 1
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "[gpt-4.1-nano-2025-04-14] a b"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 3
    assert all(c.usage is None for c in chunks[:-1])

    plain = list(client.chat.completions.create(model="gpt-4o-mini", stream=True,
                                                messages=[{"role": "user", "content": "x"}]))
    assert plain[-1].choices[0].finish_reason == "stop" and all(c.usage is None for c in plain)


def test_a_job_follows_the_wall_clock():
    with EmulatedProvider(KEY, validation_seconds=0.15, queue_seconds=0.15, steps=2, step_seconds=0.15) as p:
        client = OpenAI(base_url=p.base_url, api_key=KEY, max_retries=0)
        job = client.fine_tuning.jobs.create(model="gpt-4o-mini", training_file=upload(client))
        statuses = [job.status]
        deadline = time.monotonic() + 5
        while statuses[-1] != "succeeded" and time.monotonic() < deadline:
            time.sleep(0.02)
            status = client.fine_tuning.jobs.retrieve(job.id).status
            if status != statuses[-1]:
                statuses.append(status)
        order = ["validating_files", "queued", "running", "succeeded"]
        assert statuses[0] == "validating_files" and statuses[-1] == "succeeded"
        assert [order.index(s) for s in statuses] == sorted(order.index(s) for s in statuses)
        assert [c.step_number for c in client.fine_tuning.jobs.checkpoints.list(job.id)] == [2, 1]
