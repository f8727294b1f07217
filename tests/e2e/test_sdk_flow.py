"""The unmodified openai SDK against the running service: upload, fine-tune, follow, use the result."""
import time

import pytest
from openai import OpenAI

from tests.conftest import DATA

pytestmark = pytest.mark.slow


def test_openai_sdk_fine_tunes_the_bundled_model_end_to_end(stack):
    key = stack.new_key("trainer")
    client = OpenAI(base_url=stack.base_url + "/v1", api_key=key["key"], max_retries=0)

    train = client.files.create(file=(DATA / "tiny_train.jsonl").open("rb"), purpose="fine-tune")
    valid = client.files.create(file=(DATA / "tiny_valid.jsonl").open("rb"), purpose="fine-tune")
    assert train.id.startswith("file-") and train.bytes == (DATA / "tiny_train.jsonl").stat().st_size
    assert client.files.retrieve(train.id).filename == "tiny_train.jsonl"
    assert client.files.content(train.id).content == (DATA / "tiny_train.jsonl").read_bytes()
    assert {f.id for f in client.files.list()} == {train.id, valid.id}

    job = client.fine_tuning.jobs.create(
        model="smollm2-135m-instruct", training_file=train.id, validation_file=valid.id, suffix="tutor", seed=7,
        metadata={"course": "maths"},
        method={"type": "supervised", "supervised": {"hyperparameters": {
            "n_epochs": 3, "batch_size": 6, "learning_rate_multiplier": 5}}},
    )
    assert job.status == "queued" and job.seed == 7 and job.hyperparameters.n_epochs == 3

    deadline = time.monotonic() + 420
    while job.status not in ("succeeded", "failed", "cancelled"):
        assert time.monotonic() < deadline, "the job did not finish in time"
        time.sleep(1)
        job = client.fine_tuning.jobs.retrieve(job.id)
    assert job.status == "succeeded", job.error
    assert job.fine_tuned_model == f"ft:smollm2-135m-instruct:{key['project']}:tutor:{job.id[-8:]}"
    assert job.trained_tokens > 0 and job.finished_at >= job.created_at

    events = list(client.fine_tuning.jobs.list_events(job.id, limit=100))
    metrics = [e for e in events if e.type == "metrics" and e.data["train_loss"] is not None]
    assert len(metrics) == 6  # 12 examples / batch 6 x 3 epochs, one metrics event per step
    final = [e.data for e in events if e.type == "metrics" and e.data["full_valid_loss"] is not None]
    assert len(final) == 1 and 0 < final[0]["full_valid_mean_token_accuracy"] <= 1  # the whole file, at the end
    assert all(0 <= m.data["train_mean_token_accuracy"] <= 1 for m in metrics)
    first, last = metrics[-1].data, metrics[0].data  # newest first
    assert first["step"] == 1 and last["step"] == 6
    assert last["train_loss"] < first["train_loss"]
    assert any(m.data["valid_loss"] is not None for m in metrics)
    messages = [e.message for e in events if e.type == "message"]
    assert messages[0].startswith("The job has successfully completed")
    assert messages[-1].startswith("Created fine-tuning job")
    page = client.fine_tuning.jobs.list_events(job.id, limit=2)
    assert len(page.data) == 2 and page.has_more

    checkpoints = client.fine_tuning.jobs.checkpoints.list(job.id).data
    assert [c.step_number for c in checkpoints] == [6, 4, 2]
    assert checkpoints[0].fine_tuned_model_checkpoint.startswith(job.fine_tuned_model)

    models = {m.id for m in client.models.list()}
    assert {"smollm2-135m-instruct", job.fine_tuned_model} <= models
    model = client.models.retrieve(job.fine_tuned_model)
    assert model.owned_by == key["project"]
    lineage = model.model_extra["lineage"]
    assert lineage["base_model"] == "smollm2-135m-instruct" and lineage["job_id"] == job.id
    assert lineage["training_file"] == train.id and len(lineage["training_file_sha256"]) == 64
    assert {k: lineage["hyperparameters"][k] for k in ("n_epochs", "batch_size", "learning_rate_multiplier")} == {
        "n_epochs": 3, "batch_size": 6, "learning_rate_multiplier": 5.0}

    listed = client.fine_tuning.jobs.list(metadata={"course": "maths"})
    assert [j.id for j in listed.data] == [job.id]

    adapter = stack.data_dir / "artifacts" / job.id / "model"
    assert (adapter / "adapter_model.safetensors").exists() and (adapter / "adapter_config.json").exists()


def test_a_local_hugging_face_folder_trains_and_answers_as_hf_path(stack):
    """`hf/<folder>`: any local transformers model folder (here the converted bundled model)."""
    key = stack.new_key("trainer")["key"]
    folder = stack.env["TUNELOG_MODEL_DIR"] + "/smollm2-135m-instruct"
    fid = stack.http("POST", "/v1/files", key, files={"file": ("t.jsonl", (DATA / "tiny_train.jsonl").read_bytes())},
                     data={"purpose": "fine-tune"}).json()["id"]
    job = stack.http("POST", "/v1/fine_tuning/jobs", key, json={
        "model": f"hf/{folder}", "training_file": fid,
        "method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1, "batch_size": 12}}}}).json()
    job = stack.wait_job(key, job["id"], {"succeeded", "failed"}, timeout=300)
    assert job["status"] == "succeeded", job["error"]
    chat = stack.http("POST", "/v1/chat/completions", key, json={
        "model": job["fine_tuned_model"], "max_tokens": 4, "temperature": 0, "retrieval": False,
        "messages": [{"role": "user", "content": "What is a noun?"}]})
    assert chat.status_code == 200, chat.text
    assert chat.json()["model"] == job["fine_tuned_model"]
