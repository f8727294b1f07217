"""Delegated fine-tuning, driven with the real `openai` SDK against the running service, with two providers
on loopback (OpenAI itself cannot be reached from here):

- `district`: a second tunelog instance (its own database, Redis db and data folder). Its API is OpenAI's,
  and its local backend really trains SmolLM2-135M: the job succeeds there and its model answers our chat.
- `openai`: tests/fakes/openai_provider.py, a protocol emulator written from OpenAI's published API reference,
  for what tunelog will not do on request: 429/5xx bursts, provider-side failure, held jobs, "fine-tuning not
  available", a wrong key.

Each test uses a project of its own. Polls are scheduled 1-3 s apart here (TUNELOG_POLL_*_SECONDS)."""
from __future__ import annotations

import json
import os
import re

import openai
import pytest

from tests.conftest import DATA, MODEL_DIR
from tests.fakes.openai_provider import EmulatedProvider
from tests.helpers import create_database, launch_stack, wait_for

pytestmark = pytest.mark.slow

EMULATOR_KEY = "sk-emulated-" + os.urandom(12).hex()
OPENAI_MODEL = "openai/gpt-4o-mini-2024-07-18"


@pytest.fixture(scope="module")
def emulator():
    with EmulatedProvider(EMULATOR_KEY, validation_seconds=0.5, queue_seconds=0.2, steps=3, step_seconds=0.3) as p:
        yield p


@pytest.fixture(scope="module")
def district(pg_server, redis_server, tmp_root, base_model):
    """The second tunelog: a school district's GPU server, here on the CPU."""
    s = launch_stack(create_database(pg_server, "district"), redis_server + "?db=5", tmp_root / "district", MODEL_DIR,
                     TUNELOG_MAX_SEQ_LEN="96")
    yield s
    s.stop_all()


@pytest.fixture(scope="module")
def district_key(district):
    return district.new_key("trainer", project="school-district")["key"]


@pytest.fixture(scope="module")
def ours(pg_server, redis_server, tmp_root, emulator, district, district_key, base_model):
    providers_file = tmp_root / "providers.toml"
    providers_file.write_text(
        f'[providers.district]\nbase_url = "{district.base_url}/v1"\napi_key_env = "DISTRICT_KEY"\n'
        'chat_extra_body = { retrieval = false }\n\n'
        '[providers.badkey]\n'
        f'base_url = "{emulator.base_url}"\napi_key_env = "BADKEY_KEY"\n\n'
        '[prices]\n"district/smollm2-135m-instruct" = 0.5\n')
    s = launch_stack(create_database(pg_server, "delegating"), redis_server + "?db=6", tmp_root / "delegating",
                     MODEL_DIR, OPENAI_BASE_URL=emulator.base_url, OPENAI_API_KEY=EMULATOR_KEY,
                     DISTRICT_KEY=district_key, BADKEY_KEY="sk-wrong-" + os.urandom(8).hex(),
                     TUNELOG_PROVIDERS_FILE=str(providers_file), TUNELOG_POLL_MIN_SECONDS="1",
                     TUNELOG_POLL_MAX_SECONDS="3", TUNELOG_FAILPOINTS="delegate.after_create@1:crashme")
    yield s
    s.stop_all()


def client(stack, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=stack.base_url + "/v1", api_key=key, max_retries=0, timeout=120)


def upload(c: openai.OpenAI, content: bytes | None = None, name: str = "train.jsonl") -> str:
    content = content or (DATA / "tiny_train.jsonl").read_bytes()
    return c.files.create(file=(name, content), purpose="fine-tune").id


def create(c: openai.OpenAI, model: str, training_file: str, **kw):
    kw.setdefault("method", {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1,
                                                                                         "batch_size": 4}}})
    return c.fine_tuning.jobs.create(model=model, training_file=training_file, seed=7, **kw)


def wait(c: openai.OpenAI, job_id: str, statuses: set[str], timeout: float = 120):
    return wait_for(lambda: (j if (j := c.fine_tuning.jobs.retrieve(job_id)).status in statuses else None),
                    timeout, interval=0.5, what=f"job {job_id} to reach {statuses}")


def all_events(c: openai.OpenAI, job_id: str) -> list:
    """Oldest first, through our paging."""
    return list(c.fine_tuning.jobs.list_events(job_id, limit=7))[::-1]


def project_key(stack, role: str = "trainer", project: str | None = None) -> str:
    return stack.new_key(role, project=project)["key"]


def test_a_job_delegated_to_another_tunelog_trains_there_and_its_model_answers_our_chat(ours, district,
                                                                                     district_key):
    key = project_key(ours)
    c = client(ours, key)
    train = upload(c)
    job = create(c, "district/smollm2-135m-instruct", train, suffix="district")
    assert job.status == "queued" and job.model == "district/smollm2-135m-instruct"
    done = wait(c, job.id, {"succeeded", "failed", "cancelled"}, timeout=400)
    assert done.status == "succeeded", done.error
    assert done.fine_tuned_model.startswith("district/ft:smollm2-135m-instruct:school-district:district:")

    # the remote job carries our id in its metadata, and really trained there
    remote_id = done.model_extra["remote"]["remote_job_id"]
    dc = client(district, district_key)
    remote = dc.fine_tuning.jobs.retrieve(remote_id)
    assert remote.status == "succeeded" and remote.metadata == {"tunelog_job": job.id}
    assert remote.trained_tokens and done.trained_tokens == remote.trained_tokens

    # the remote's events and checkpoints are mirrored exactly once, with our ids and paging
    ours_events = all_events(c, job.id)
    remote_events = list(dc.fine_tuning.jobs.list_events(remote_id, limit=100))
    mirrored = [e for e in ours_events if e.message.startswith("[district] ") or e.type == "metrics"]
    assert len(mirrored) == len(remote_events)
    assert all(e.id.startswith("ftevent-") for e in ours_events)
    assert len({e.id for e in ours_events}) == len(ours_events)
    assert any(e.type == "metrics" for e in ours_events)
    texts = [e.message for e in ours_events]
    assert any("Estimated cost" in t for t in texts) and any("Redacted before upload" in t for t in texts)
    checkpoints = c.fine_tuning.jobs.checkpoints.list(job.id).data
    remote_checkpoints = dc.fine_tuning.jobs.checkpoints.list(remote_id).data
    assert len(checkpoints) == len(remote_checkpoints) >= 1
    assert all(k.fine_tuned_model_checkpoint.startswith("district/ft:") and k.id.startswith("ftckpt-")
               for k in checkpoints)

    # registered with lineage, listed, and answering in chat through the provider (ChatAnswered recorded)
    model = c.models.retrieve(done.fine_tuned_model)
    lineage = model.model_extra["lineage"]
    assert lineage["provider"] == "district" and lineage["remote_job_id"] == remote_id
    assert len(lineage["training_file_sha256"]) == 64
    stream = c.chat.completions.create(model=done.fine_tuned_model, stream=True, max_tokens=12, temperature=0,
                                       messages=[{"role": "user", "content": "What is 2 + 2?"}])
    pieces = [ch.choices[0].delta.content or "" for ch in stream if ch.choices]
    assert "".join(pieces).strip()
    answered = ours.sql("SELECT data FROM events WHERE type = 'ChatAnswered' AND data->>'model' = %s",
                        (done.fine_tuned_model,))
    assert len(answered) == 1 and answered[0]["data"]["provider"] == "district"
    # and the district saw the question (through its own OpenAI-shaped chat endpoint)
    assert district.sql("SELECT count(*) AS n FROM events WHERE type = 'ChatAnswered'")[0]["n"] >= 1

    # portability: the same spec re-run on our own local backend, linked by lineage
    r = ours.http("POST", f"/v1/fine_tuning/jobs/{job.id}/rerun", key, json={"model": "smollm2-135m-instruct"})
    assert r.status_code == 200, r.text
    rerun = r.json()
    assert rerun["rerun_of"] == job.id and rerun["training_file"] == train and rerun["seed"] == 7
    assert rerun["hyperparameters"]["n_epochs"] == 1 and rerun["hyperparameters"]["batch_size"] == 4
    c.fine_tuning.jobs.cancel(rerun["id"])  # trained locally elsewhere in the suite; its spec is what is tested


def test_the_providers_failure_fails_our_job_with_its_code_and_message(ours, emulator):
    c = client(ours, project_key(ours))
    train = upload(c)
    emulator.job_failure = {"code": "invalid_training_file", "message": "The training file has a bad line 3."}
    try:
        job = create(c, OPENAI_MODEL, train)
        done = wait(c, job.id, {"succeeded", "failed", "cancelled"})
    finally:
        emulator.job_failure = None
    assert done.status == "failed"
    assert done.error.code == "invalid_training_file" and "bad line 3" in done.error.message


def test_fine_tuning_no_longer_offered_fails_the_job_at_create(ours, emulator):
    c = client(ours, project_key(ours))
    train = upload(c)
    emulator.fine_tuning_unavailable = True
    try:
        job = create(c, OPENAI_MODEL, train)
        done = wait(c, job.id, {"succeeded", "failed", "cancelled"})
    finally:
        emulator.fine_tuning_unavailable = False
    assert done.status == "failed" and done.error.code == "model_not_available", done.error


def test_a_wrong_provider_key_fails_the_job_without_showing_the_key(ours):
    c = client(ours, project_key(ours))
    job = create(c, "badkey/gpt-4o-mini-2024-07-18", upload(c))
    done = wait(c, job.id, {"succeeded", "failed", "cancelled"})
    assert done.status == "failed" and done.error.code == "invalid_api_key"
    assert ours.env["BADKEY_KEY"] not in done.error.message
    assert ours.env["BADKEY_KEY"][-4:] not in done.error.message


def test_cancel_is_passed_on_to_the_remote_job(ours, emulator):
    c = client(ours, project_key(ours))
    train = upload(c)
    emulator.hold = True
    try:
        job = create(c, OPENAI_MODEL, train)
        wait_remote_running(c, job.id)
        assert c.fine_tuning.jobs.retrieve(job.id).status == "running"
        c.fine_tuning.jobs.cancel(job.id)
        done = wait(c, job.id, {"succeeded", "failed", "cancelled"}, timeout=60)
    finally:
        emulator.hold = False
    assert done.status == "cancelled"
    remote_id = done.model_extra["remote"]["remote_job_id"]
    assert emulator.get_job(remote_id)["status"] == "cancelled"


def test_transient_provider_errors_are_retried_and_shown_as_messages(ours, emulator):
    c = client(ours, project_key(ours))
    train = upload(c)
    emulator.fail_next(2, 429, path_contains="/fine_tuning/jobs", method="POST", retry_after=1)
    job = create(c, OPENAI_MODEL, train)
    emulator.fail_next(2, 503, path_contains=f"/fine_tuning/jobs/{ours_remote(c, job.id)}")
    done = wait(c, job.id, {"succeeded", "failed", "cancelled"}, timeout=90)
    assert done.status == "succeeded", done.error
    warnings = [e.message for e in all_events(c, job.id) if e.level == "warn"]
    assert sum("429" in m for m in warnings) == 2, warnings
    assert any("503" in m for m in warnings), warnings
    assert sum(1 for b in emulator.created_jobs if b["metadata"] == {"tunelog_job": job.id}) == 1


def wait_remote_running(c: openai.OpenAI, job_id: str) -> None:
    wait_for(lambda: (c.fine_tuning.jobs.retrieve(job_id).model_extra.get("remote") or {}).get("remote_status")
             == "running", 60, what="the remote job to run")


def ours_remote(c: openai.OpenAI, job_id: str) -> str:
    return wait_for(lambda: (c.fine_tuning.jobs.retrieve(job_id).model_extra.get("remote") or {}).get("remote_job_id"),
                    60, what="the remote job to be recorded")


def test_a_worker_killed_between_creating_the_remote_job_and_recording_it_creates_no_second_one(ours, emulator):
    c = client(ours, project_key(ours))
    train = upload(c)
    job = create(c, OPENAI_MODEL, train, suffix="crashme")  # the failpoint SIGKILLs attempt 1 right after create
    done = wait(c, job.id, {"succeeded", "failed", "cancelled"}, timeout=120)
    assert done.status == "succeeded", done.error
    created = [b for b in emulator.created_jobs if (b.get("metadata") or {}).get("tunelog_job") == job.id]
    assert len(created) == 1
    types = [r["type"] for r in ours.sql("SELECT type FROM events WHERE stream_id = %s ORDER BY global_position",
                                         (f"job-{job.id}",))]
    assert "JobAttemptLost" in types
    found = ours.sql("SELECT data FROM events WHERE stream_id = %s AND type = 'RemoteJobCreated'", (f"job-{job.id}",))
    assert len(found) == 1 and found[0]["data"]["found_existing"] is True
    uploads = [name for name, _ in emulator.uploads if job.id in name]
    assert len(uploads) == 1  # the retry reused the upload too


def test_a_followed_job_survives_redis_losing_its_poll_chain_and_mirrors_each_remote_event_once(ours, emulator):
    import redis

    c = client(ours, project_key(ours))
    emulator.hold = True
    try:
        job = create(c, OPENAI_MODEL, upload(c))
        wait_remote_running(c, job.id)
        redis.Redis.from_url(ours.env["REDIS_URL"]).flushdb()  # Redis keeps nothing: the log is the truth
    finally:
        emulator.hold = False
    done = wait(c, job.id, {"succeeded", "failed", "cancelled"}, timeout=90)  # the dispatcher restarts the chain
    assert done.status == "succeeded", done.error
    twice = ours.sql("SELECT data->>'remote_id' AS id, count(*) AS n FROM events WHERE stream_id = %s "
                     "AND data ? 'remote_id' GROUP BY 1 HAVING count(*) > 1", (f"job-{job.id}",))
    assert twice == []
    remote_id = done.model_extra["remote"]["remote_job_id"]
    n_remote = len(emulator.get_job(remote_id) and list(openai.OpenAI(
        base_url=emulator.base_url, api_key=EMULATOR_KEY).fine_tuning.jobs.list_events(remote_id, limit=100)))
    n_mirrored = ours.sql("SELECT count(*) AS n FROM events WHERE stream_id = %s AND data ? 'remote_id' "
                          "AND type <> 'CheckpointSaved'", (f"job-{job.id}",))[0]["n"]
    assert n_mirrored == n_remote


def test_pii_is_redacted_from_what_leaves_and_the_local_copy_is_unchanged(ours, emulator):
    admin = project_key(ours, "admin")
    r = ours.http("PUT", "/api/settings", admin, json={"pii_roster": ["Maya Okafor", "Tom"]})
    assert r.status_code == 200, r.text
    project = r.json()["project"]
    shown = ours.http("GET", "/api/settings", project_key(ours, "viewer", project)).json()
    assert shown["pii_roster"] is None and shown["pii_roster_count"] == 2  # a pupil's key does not see whom
    c = client(ours, admin)
    lines = []
    for i in range(10):
        lines.append(json.dumps({"messages": [
            {"role": "user", "content": f"I am Maya Okafor, mail maya.okafor+{i}@school.example or call "
                                        f"+44 20 7946 09{i:02d}. What is {i} + 1234?"},
            {"role": "assistant", "content": f"Hello Tom! {i} + 1234 = {i + 1234}."}]}))
    content = ("\n".join(lines) + "\n").encode()
    train = upload(c, content)
    job = create(c, OPENAI_MODEL, train)
    ours_remote(c, job.id)
    sent = next(data for name, data in emulator.uploads if job.id in name).decode()
    assert "maya.okafor" not in sent and "Maya Okafor" not in sent and "Tom" not in sent
    assert "7946" not in sent
    assert sent.count("[EMAIL]") == 10 and sent.count("[PHONE]") == 10 and sent.count("[NAME]") == 20
    assert "1234" in sent  # maths is not a phone number
    assert c.files.content(train).read() == content
    redacted = ours.sql("SELECT data FROM events WHERE stream_id = %s AND type = 'DataRedacted'", (f"job-{job.id}",))
    assert redacted[0]["data"]["emails"] == 10 and redacted[0]["data"]["names"] == 20
    # chat through the provider is redacted too, with the counts recorded
    answer = c.chat.completions.create(model=OPENAI_MODEL, max_tokens=8, messages=[
        {"role": "user", "content": "Tom asks: mail tom@school.example about fractions"}])
    assert answer.choices[0].message.content
    sent_chat = json.dumps(emulator.last_chat_messages)
    assert "tom@school.example" not in sent_chat and "Tom" not in sent_chat
    rec = ours.sql("SELECT data FROM events WHERE type = 'ChatAnswered' AND data->>'id' = %s", (answer.id,))
    assert rec[0]["data"]["redactions"] == {"emails": 1, "phones": 0, "names": 1}


def test_a_local_only_project_refuses_every_external_provider(ours):
    admin = project_key(ours, "admin")
    c = client(ours, admin)
    train = upload(c)
    assert ours.http("PUT", "/api/settings", admin, json={"local_only": True}).status_code == 200
    before = ours.sql("SELECT count(*) AS n FROM events")[0]["n"]
    with pytest.raises(openai.BadRequestError) as e:
        create(c, OPENAI_MODEL, train)
    assert e.value.code == "local_only" and "local-only" in e.value.message
    with pytest.raises(openai.BadRequestError) as e:
        c.chat.completions.create(model=OPENAI_MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=4)
    assert e.value.code == "local_only"
    assert not [m for m in c.models.list().data if m.model_extra.get("kind") == "remote"]
    assert ours.sql("SELECT count(*) AS n FROM events")[0]["n"] == before


def test_a_monthly_budget_refuses_a_job_that_would_exceed_it(ours):
    admin = project_key(ours, "admin")
    c = client(ours, admin)
    train = upload(c)
    # tiny_train has ~700 tokens; 1 epoch at $3/1M is about $0.002 a job
    assert ours.http("PUT", "/api/settings", admin, json={"monthly_budget_usd": 0.003}).status_code == 200
    first = create(c, OPENAI_MODEL, train)
    texts = [e.message for e in all_events(c, first.id)]
    assert any(t.startswith("Estimated cost: $0.00") for t in texts), texts
    before = ours.sql("SELECT count(*) AS n FROM events")[0]["n"]
    with pytest.raises(openai.BadRequestError) as e:
        create(c, OPENAI_MODEL, train)
    assert e.value.code == "budget_exceeded" and "monthly budget of $0.00" in e.value.message
    assert ours.sql("SELECT count(*) AS n FROM events")[0]["n"] == before
    wait(c, first.id, {"succeeded", "failed", "cancelled"})


def test_remote_base_models_are_listed_and_answer_through_the_provider(ours, emulator):
    c = client(ours, project_key(ours))
    ids = {m.id for m in c.models.list().data}
    assert OPENAI_MODEL in ids and "district/smollm2-135m-instruct" in ids
    out = c.chat.completions.create(model=OPENAI_MODEL, max_tokens=8,
                                    messages=[{"role": "user", "content": "Say hello"}])
    assert out.choices[0].message.content and out.model == OPENAI_MODEL
    with pytest.raises(openai.NotFoundError):
        c.chat.completions.create(model="openai/no-such-model", max_tokens=4,
                                  messages=[{"role": "user", "content": "hi"}])


def test_a_dpo_job_is_passed_on_with_its_method_and_only_the_hyperparameters_given(ours, emulator):
    c = client(ours, project_key(ours))
    rows = [{"input": {"messages": [{"role": "user", "content": f"What is {i} + {i}?"}]},
             "preferred_output": [{"role": "assistant", "content": f"{2 * i}"}],
             "non_preferred_output": [{"role": "assistant", "content": f"{2 * i + 1}"}]} for i in range(10)]
    train = upload(c, ("\n".join(json.dumps(r) for r in rows) + "\n").encode())
    job = create(c, OPENAI_MODEL, train, suffix="dpo-x",
                 method={"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.2, "n_epochs": 2}}})
    shown = job.method.dpo.hyperparameters
    assert shown.beta == 0.2 and shown.n_epochs == 2 and shown.batch_size == "auto"  # as OpenAI shows them
    done = wait(c, job.id, {"succeeded", "failed", "cancelled"})
    assert done.status == "succeeded", done.error
    sent = next(b for b in emulator.created_jobs if (b.get("metadata") or {}).get("tunelog_job") == job.id)
    assert sent["method"] == {"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.2, "n_epochs": 2}}}
    assert sent["model"] == "gpt-4o-mini-2024-07-18" and sent["suffix"] == "dpo-x" and sent["seed"] == 7


def test_another_projects_model_at_a_shared_provider_is_not_theirs_to_use(ours):
    a = client(ours, project_key(ours))
    job = create(a, OPENAI_MODEL, upload(a))
    done = wait(a, job.id, {"succeeded", "failed", "cancelled"})
    assert done.status == "succeeded", done.error
    model = done.fine_tuned_model
    checkpoint = a.fine_tuning.jobs.checkpoints.list(job.id).data[0].fine_tuned_model_checkpoint
    assert a.chat.completions.create(model=checkpoint, max_tokens=4, messages=[{"role": "user", "content": "hi"}])
    b = client(ours, project_key(ours))
    for name in (model, checkpoint):
        with pytest.raises(openai.NotFoundError):
            b.chat.completions.create(model=name, max_tokens=4, messages=[{"role": "user", "content": "hi"}])
        with pytest.raises(openai.BadRequestError) as e:
            create(b, name, upload(b))
        assert e.value.code == "model_not_available"
    assert not [m.id for m in b.models.list().data if m.id in (model, checkpoint)]
    # and its own project may train it further
    again = create(a, model, upload(a))
    assert again.model == model
    a.fine_tuning.jobs.cancel(again.id)


def test_options_a_provider_cannot_take_are_refused_with_the_reason(ours):
    c = client(ours, project_key(ours))
    train = upload(c)
    with pytest.raises(openai.BadRequestError) as e:
        create(c, OPENAI_MODEL, train, method={"type": "supervised", "supervised": {"hyperparameters": {
            "lora_r": 8}}})
    assert e.value.code == "unsupported_hyperparameter" and "lora_r" in e.value.message
    with pytest.raises(openai.BadRequestError) as e:
        create(c, "nobody/some-model", train)
    assert e.value.code == "model_not_available"


def test_provider_keys_are_in_no_table_and_no_log(ours, district, district_key):
    """Run last in this module: everything above has put its events, rows and log lines in place."""
    secrets = [EMULATOR_KEY, district_key, ours.env["BADKEY_KEY"]]
    tables = [r["tablename"] for r in ours.sql("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")]
    for table in tables:
        if table == "blobs":
            continue
        dump = ours.sql(f'SELECT coalesce(string_agg(t::text, E"\\n"), \'\') AS d FROM "{table}" t'.replace(
            'E"\\n"', "E'\\n'"))[0]["d"]
        for s in secrets:
            assert s not in dump, f"a provider key is in table {table}"
    for log in ours.data_dir.rglob("*.log"):
        text = log.read_text(errors="replace")
        for s in secrets:
            assert s not in text, f"a provider key is in {log}"
        assert not re.search(r"sk-emulated-[0-9a-f]{6,}", text), f"a key-shaped string is in {log}"


def test_a_dspy_job_over_a_provider_model_asks_the_provider_redacted_and_its_program_answers_through_it(
        ours, emulator):
    """Issue 9 with a delegated model: every LM call of the optimization goes to the provider (the emulator
    stands for OpenAI's chat completions), with the project's roster, emails and phones redacted first."""
    admin = project_key(ours, "admin")
    assert ours.http("PUT", "/api/settings", admin, json={"pii_roster": ["Priya Shah"]}).status_code == 200
    c = client(ours, admin)
    lines = [json.dumps({"question": f"Priya Shah (priya{i}@school.example) asks: what is {i} + 1?",
                         "answer": str(i + 1)}) for i in range(6)]
    train = upload(c, ("\n".join(lines) + "\n").encode(), name="qa.jsonl")
    before = len(emulator.chat_requests)
    job = c.fine_tuning.jobs.create(model=OPENAI_MODEL, training_file=train, seed=3, method={
        "type": "dspy", "dspy": {"optimizer": "bootstrap_few_shot", "metric": "contains", "max_tokens": 32,
                                 "max_bootstrapped_demos": 2, "max_labeled_demos": 0}})
    done = wait(c, job.id, {"succeeded", "failed", "cancelled"}, timeout=300)
    assert done.status == "succeeded", done.error
    sent = emulator.chat_requests[before:]
    assert len(sent) >= 6 and all(r["model"] == OPENAI_MODEL.split("/", 1)[1] for r in sent)
    text = json.dumps(sent)
    assert "Priya" not in text and "priya0@school.example" not in text and "[NAME]" in text
    model = c.models.retrieve(done.fine_tuned_model)
    assert model.model_extra["kind"] == "dspy-program" and model.model_extra["root"] == OPENAI_MODEL
    n = len(emulator.chat_requests)
    out = c.chat.completions.create(model=done.fine_tuned_model, max_tokens=16,
                                    messages=[{"role": "user", "content": "What is 2 + 1?"}])
    assert out.choices[0].message.content and len(emulator.chat_requests) == n + 1
    assert out.model_extra["tunelog"]["program"]["runs_on"] == OPENAI_MODEL
