"""Model export (merged safetensors, GGUF) and deletion, over HTTP against the real stack (API, projector,
dispatcher, cpu workers), plus the artifact store's path rules, the projection and the dispatcher.

A fine-tuned model is made without training: a real peft LoRA adapter on the bundled base, randomly
initialised (`init_lora_weights=False`, so merging it changes the logits), is written into the artifact
store and registered with a ModelRegistered event as the training worker appends it."""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from eventlog import artifacts
from eventlog.store import NewEvent
from tests.helpers import wait_for

BASE = "smollm2-135m-instruct"
PROMPT = [{"role": "user", "content": "What is the capital of France?"}]


# ---- fixtures -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def store(stack):
    from eventlog.db import pool
    from eventlog.store import EventStore

    s = EventStore(pool(stack.env["DATABASE_URL"], max_size=2))
    yield s
    s.pool.close()


@pytest.fixture(scope="module")
def adapter(base_model, tmp_path_factory) -> Path:
    """A LoRA adapter (r=4 on q_proj and v_proj) with random A and B, and the tokenizer, in a folder."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(base_model, dtype=torch.float32)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, init_lora_weights=False,
                                                  task_type="CAUSAL_LM"))
    out = tmp_path_factory.mktemp("adapter")
    peft_model.save_pretrained(out)
    AutoTokenizer.from_pretrained(base_model).save_pretrained(out)
    return out


class Project:
    def __init__(self, stack, store, adapter: Path):
        self.stack, self.store, self.adapter = stack, store, adapter
        self.trainer = stack.new_key("trainer")
        self.name = self.trainer["project"]
        self.key = self.trainer["key"]
        self.admin = stack.new_key("admin", self.name)["key"]
        self.viewer = stack.new_key("viewer", self.name)["key"]

    def register_model(self, checkpoints: int = 0) -> tuple[str, str]:
        """A fine-tuned model of this project, as a succeeded training job leaves it: (model id, job id)."""
        job_id = "ftjob-" + os.urandom(12).hex()
        model_id = f"ft:{BASE}:{self.name}:exp:{job_id[-8:]}"
        folder = self.stack.data_dir / artifacts.model_dir_rel(job_id)
        shutil.copytree(self.adapter, folder)
        for step in range(1, checkpoints + 1):
            ckpt = artifacts.checkpoints_dir(self.stack.data_dir, job_id) / f"checkpoint-{step}"
            shutil.copytree(self.adapter, ckpt)
            self.store.append(f"job-{job_id}", None, [NewEvent("CheckpointSaved", {
                "id": f"ftckpt-{job_id[6:]}-a1-{step}", "attempt": 1, "job_id": job_id, "project": self.name,
                "step": step, "path": f"artifacts/{job_id}/checkpoints/checkpoint-{step}",
                "fine_tuned_model_checkpoint": f"{model_id}:ckpt-step-{step}", "metrics": {"step": step},
                "at": int(time.time())}, {"actor": "test"})])
        lineage = {"base_model": BASE, "job_id": job_id, "training_file": None, "training_file_sha256": None,
                   "validation_file": None, "hyperparameters": {}, "method": {"type": "supervised"}, "seed": 0,
                   "attempt": 1, "final_metrics": {"valid_loss": 1.0}}
        self.store.append(f"model-{model_id}", 0, [NewEvent("ModelRegistered", {
            "id": model_id, "project": self.name, "base_model": BASE, "backend": "hf-lora", "job_id": job_id,
            "artifact_path": artifacts.model_dir_rel(job_id), "created_at": int(time.time()), "lineage": lineage},
            {"actor": "test"})])
        wait_for(lambda: self.stack.sql("SELECT 1 FROM models WHERE id = %s", (model_id,)), 30,
                 what="the model projected")
        return model_id, job_id

    def http(self, method: str, path: str, key: str | None = None, **kw: Any):
        return self.stack.http(method, path, key or self.key, **kw)

    def export(self, model_id: str, fmt: str | None = None, **kw: Any):
        return self.http("POST", f"/api/models/{model_id}/export", json={} if fmt is None else {"format": fmt},
                         **kw)

    def wait_export(self, model_id: str, export_id: str, timeout: float = 600) -> dict[str, Any]:
        def done():
            for x in self.http("GET", f"/api/models/{model_id}/exports").json()["data"]:
                if x["id"] == export_id and x["status"] != "queued":
                    return x
            return None
        return wait_for(done, timeout, interval=1.0, what=f"export {export_id} finished")

    def stream(self, model_id: str) -> list[str]:
        return [e.type for e in self.store.read_stream(f"model-{model_id}")]


@pytest.fixture(scope="module")
def project(stack, store, adapter) -> Project:
    return Project(stack, store, adapter)


@pytest.fixture(scope="module")
def exported(project):
    """One model exported twice at once, as safetensors and as GGUF (two exports race on one stream)."""
    model_id, job_id = project.register_model()
    r1 = project.export(model_id)  # the default format
    r2 = project.export(model_id, "gguf")
    assert r1.status_code == 202, r1.text
    assert r2.status_code == 202, r2.text
    st, gg = r1.json(), r2.json()
    assert st["object"] == "model.export" and st["status"] == "queued" and st["format"] == "safetensors"
    assert st["model"] == model_id and st["id"].startswith("export-")
    assert gg["format"] == "gguf" and gg["id"] != st["id"]
    return {"model": model_id, "job": job_id, "safetensors": project.wait_export(model_id, st["id"]),
            "gguf": project.wait_export(model_id, gg["id"])}


def _prompt_ids(tokenizer):
    import torch

    ids = tokenizer.apply_chat_template(PROMPT, add_generation_prompt=True, return_tensors="pt")
    return ids if torch.is_tensor(ids) else ids["input_ids"]


def _logits(model, ids):
    import torch

    with torch.no_grad():
        return model.eval()(ids).logits


# ---- export -------------------------------------------------------------------------------------------
def test_a_safetensors_export_is_the_adapter_merged_into_a_plain_transformers_model(project, exported, base_model):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    x = exported["safetensors"]
    assert x["status"] == "succeeded", x
    assert x["error"] is None and x["finished_at"] >= x["created_at"]
    assert {"merged/config.json", "merged/model.safetensors", "merged/tokenizer.json"} <= set(x["files"])
    assert "model.gguf" not in x["files"]
    folder = artifacts.export_dir(project.stack.data_dir, exported["job"], x["id"]) / "merged"
    assert not (folder / "adapter_config.json").exists()
    # Both run in float64, so the comparison measures the merge, not float32's summation order (which alone
    # moves these logits, of magnitude ~40, by ~1e-4); the merged weights themselves are stored in float32.
    merged = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float64)  # plain transformers: no peft
    ids = _prompt_ids(AutoTokenizer.from_pretrained(folder))
    adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_model, dtype=torch.float64),
                                        project.adapter).double()
    want = _logits(adapted, ids)
    got = _logits(merged, ids)
    base = _logits(AutoModelForCausalLM.from_pretrained(base_model, dtype=torch.float64), ids)
    assert (want - base).abs().max() > 1.0, "the adapter must change the logits, or the test proves nothing"
    assert (got - want).abs().max() < 1e-4


def test_a_finished_exports_files_download_as_listed(project, exported):
    x = exported["safetensors"]
    r = project.http("GET", f"/api/models/{exported['model']}/exports/{x['id']}/files/merged/config.json",
                     project.viewer)
    assert r.status_code == 200, r.text
    on_disk = artifacts.export_dir(project.stack.data_dir, exported["job"], x["id"]) / "merged" / "config.json"
    assert r.content == on_disk.read_bytes()
    assert "attachment" in r.headers["Content-Disposition"]


def test_a_gguf_export_loads_back_in_transformers_with_the_merged_models_logits(project, exported):
    import gguf
    from transformers import AutoModelForCausalLM, AutoTokenizer

    x = exported["gguf"]
    assert x["status"] == "succeeded", x
    assert "model.gguf" in x["files"] and "merged/model.safetensors" in x["files"]
    folder = artifacts.export_dir(project.stack.data_dir, exported["job"], x["id"])
    reader = gguf.GGUFReader(folder / "model.gguf")
    assert reader.fields["general.architecture"].contents() == "llama"
    assert reader.fields["tokenizer.ggml.pre"].contents() == "smollm"
    merged_tok = AutoTokenizer.from_pretrained(folder / "merged")
    gguf_tok = AutoTokenizer.from_pretrained(folder, gguf_file="model.gguf")
    text = "Hello <|im_start|>user\nwhat's 3333 + 1? 我想 😁<|im_end|>"
    assert gguf_tok(text).input_ids == merged_tok(text).input_ids
    ids = _prompt_ids(merged_tok)
    want = _logits(AutoModelForCausalLM.from_pretrained(folder / "merged"), ids)
    got = _logits(AutoModelForCausalLM.from_pretrained(folder, gguf_file="model.gguf"), ids)
    # 2-D weights are f16 in the file: close, and the same next token everywhere
    assert (got - want).abs().max() < 0.15
    assert (got.argmax(-1) == want.argmax(-1)).all()


def test_an_f32_gguf_is_exact(project, exported, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from workers.export import write_gguf

    merged = artifacts.export_dir(project.stack.data_dir, exported["job"], exported["safetensors"]["id"]) / "merged"
    write_gguf(merged, tmp_path / "f32.gguf", "test", f16=False)
    ids = _prompt_ids(AutoTokenizer.from_pretrained(merged))
    want = _logits(AutoModelForCausalLM.from_pretrained(merged), ids)
    got = _logits(AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="f32.gguf"), ids)
    assert (got - want).abs().max() < 1e-4


def test_a_second_run_of_a_finished_export_appends_nothing(project, exported):
    import redis
    from rq import Queue

    before = project.stream(exported["model"])
    conn = redis.Redis.from_url(project.stack.env["REDIS_URL"])
    job = Queue("cpu", connection=conn).enqueue("workers.export.export_model", exported["model"],
                                                exported["safetensors"]["id"], job_timeout=600)
    wait_for(lambda: job.get_status(refresh=True) in ("finished", "failed"), 120, what="the rerun")
    assert job.get_status() == "finished" and job.return_value() == "skipped: already done"
    assert project.stream(exported["model"]) == before


def test_export_refusals_append_nothing(project, stack):
    model_id, _ = project.register_model()
    other = stack.new_key("trainer")["key"]
    before = project.stream(model_id)
    cases = [
        (project.export(model_id, "onnx"), 400, "format"),
        (project.export(model_id, 42), 400, "format"),
        (project.export(BASE), 400, "model"),
        (project.export(model_id, key=other), 404, "model"),  # another project's model is invisible
        (project.export(model_id + "x"), 404, "model"),
        (project.export(model_id, key=project.viewer), 403, None),
    ]
    for r, status, param in cases:
        assert r.status_code == status, r.text
        assert r.json()["error"]["param"] == param
    assert project.http("GET", f"/api/models/{model_id}/exports", other).status_code == 404
    assert project.stream(model_id) == before


def test_an_export_retried_with_its_idempotency_key_is_answered_once(project):
    model_id, _ = project.register_model()
    first = project.export(model_id, headers={"Idempotency-Key": "exp-1"})
    again = project.export(model_id, headers={"Idempotency-Key": "exp-1"})
    assert first.status_code == again.status_code == 202
    assert again.json()["id"] == first.json()["id"] and again.headers.get("Idempotent-Replayed") == "true"
    assert project.stream(model_id).count("ModelExportRequested") == 1
    assert project.export(model_id, "gguf", headers={"Idempotency-Key": "exp-1"}).status_code == 422


# ---- deletion -----------------------------------------------------------------------------------------
def test_a_deleted_model_is_gone_but_its_history_stays(project, stack):
    model_id, job_id = project.register_model(checkpoints=2)
    chat = {"model": model_id, "messages": PROMPT, "max_tokens": 1, "retrieval": False, "temperature": 0}
    r = project.http("POST", "/v1/chat/completions", json=chat)
    assert r.status_code == 200, r.text
    assert stack.sql("SELECT count(*) AS n FROM job_checkpoints WHERE job_id = %s", (job_id,))[0]["n"] == 2

    r = project.http("DELETE", f"/v1/models/{model_id}")
    assert r.status_code == 200, r.text
    assert r.json() == {"id": model_id, "object": "model", "deleted": True}
    # gone at once: chat, a second delete, exports
    r = project.http("POST", "/v1/chat/completions", json=chat)
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    assert project.http("DELETE", f"/v1/models/{model_id}").status_code == 404
    assert project.export(model_id).status_code == 404
    assert project.http("GET", f"/api/models/{model_id}/exports").status_code == 404
    # its files and checkpoints, soon after
    job_dir = artifacts.job_dir(stack.data_dir, job_id)
    wait_for(lambda: "ModelArtifactsRemoved" in project.stream(model_id), 120, what="the files removed")
    assert not job_dir.exists()
    assert stack.sql("SELECT count(*) AS n FROM job_checkpoints WHERE job_id = %s", (job_id,))[0]["n"] == 0
    assert [e.type for e in project.store.read_stream(f"job-{job_id}")].count("CheckpointDeleted") == 2
    # the history stays in the log
    events = project.http("GET", f"/api/events?stream=model-{model_id}", project.admin).json()["data"]
    assert [e["type"] for e in events] == ["ModelRegistered", "ModelDeleted", "ModelArtifactsRemoved"]


def test_a_deleted_model_is_gone_from_the_model_list(project):
    model_id, _ = project.register_model()
    assert project.http("DELETE", f"/v1/models/{model_id}").status_code == 200
    assert model_id not in [m["id"] for m in project.http("GET", "/v1/models").json()["data"]]
    assert project.http("GET", f"/v1/models/{model_id}").status_code == 404


def test_a_model_an_alias_points_at_cannot_be_deleted(project):
    model_id, job_id = project.register_model()
    r = project.http("POST", "/api/aliases/exp-live", json={"model": model_id, "reason": "test"})
    assert r.status_code == 200, r.text
    before = project.stream(model_id)
    r = project.http("DELETE", f"/v1/models/{model_id}")
    assert r.status_code == 409 and r.json()["error"]["code"] == "model_in_use"
    assert "exp-live" in r.json()["error"]["message"]
    assert project.stream(model_id) == before
    assert artifacts.job_dir(project.stack.data_dir, job_id).exists()


def test_deletion_refusals(project, stack):
    model_id, _ = project.register_model()
    other = stack.new_key("admin")["key"]
    assert project.http("DELETE", f"/v1/models/{model_id}", other).status_code == 404
    assert project.http("DELETE", f"/v1/models/{model_id}", project.viewer).status_code == 403
    r = project.http("DELETE", f"/v1/models/{BASE}")
    assert r.status_code == 400 and r.json()["error"]["param"] == "model"
    assert project.http("DELETE", "/v1/models/no-such-model").status_code == 404
    assert project.stream(model_id) == ["ModelRegistered"]


# ---- paths ----------------------------------------------------------------------------------------------
def test_traversal_in_model_ids_and_file_names_finds_no_file(project, exported, stack):
    m, x = exported["model"], exported["safetensors"]["id"]
    for path in (f"/api/models/{m}/exports/{x}/files/%2e%2e/%2e%2e/model/adapter_config.json",
                 f"/api/models/{m}/exports/{x}/files/..%2f..%2fmodel%2fadapter_config.json",
                 f"/api/models/{m}/exports/{x}/files/merged/../merged/config.json",
                 f"/api/models/{m}/exports/{x}/files/%2fetc%2fpasswd",
                 f"/api/models/{m}/exports/{x}/files/merged",
                 f"/api/models/{m}/exports/..%2f..%2f/files/merged/config.json",
                 "/api/models/..%2f..%2f..%2fetc/exports",
                 f"/api/models/%2e%2e%2f{m}/exports/{x}/files/merged/config.json"):
        r = requests_get(stack, path, project.key)
        assert r.status_code == 404, (path, r.status_code, r.text[:200])
        assert r.headers["Content-Type"].startswith("application/json")
    for path in ("/v1/models/..%2f..%2fetc%2fpasswd", "/v1/models/%2e%2e"):
        assert project.http("DELETE", path).status_code in (400, 404)
    assert project.export("..%2f..%2fetc").status_code == 404


def test_a_listed_file_replaced_by_a_link_out_of_the_store_is_not_served(project, stack, tmp_path):
    model_id, job_id = project.register_model()
    r = project.export(model_id)
    x = project.wait_export(model_id, r.json()["id"])
    target = artifacts.export_dir(stack.data_dir, job_id, x["id"]) / "merged" / "config.json"
    secret = tmp_path / "secret.txt"
    secret.write_text("outside the store")
    target.unlink()
    target.symlink_to(secret)
    r = project.http("GET", f"/api/models/{model_id}/exports/{x['id']}/files/merged/config.json")
    assert r.status_code == 404 and "outside" not in r.text


def requests_get(stack, path: str, key: str):
    """A GET with the path sent as written (requests would normalise `..` segments away first)."""
    import requests

    req = requests.Request("GET", stack.base_url + path, headers={"Authorization": f"Bearer {key}"}).prepare()
    req.url = stack.base_url + path
    with requests.Session() as s:
        return s.send(req, timeout=60)


def test_the_artifact_store_derives_paths_from_valid_ids_only(tmp_path):
    job = "ftjob-" + "a" * 24
    assert artifacts.job_dir(tmp_path, job) == tmp_path / "artifacts" / job
    assert artifacts.model_dir_rel(job) == f"artifacts/{job}/model"
    assert artifacts.export_dir(tmp_path, job, "export-" + "b" * 24) == \
        tmp_path / "artifacts" / job / "exports" / ("export-" + "b" * 24)
    for bad in ("ftjob-../../etc", "ftjob-" + "A" * 24, "../ftjob-" + "a" * 24, "", "ftjob-" + "a" * 25):
        with pytest.raises(ValueError):
            artifacts.job_dir(tmp_path, bad)
    with pytest.raises(ValueError):
        artifacts.export_dir(tmp_path, job, "export-../x")


def test_resolve_rel_refuses_whatever_leaves_the_store(tmp_path):
    store = tmp_path / "artifacts"
    (store / "ftjob-x").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    (store / "link").symlink_to(tmp_path / "outside")
    assert artifacts.resolve_rel(tmp_path, "artifacts/ftjob-x") == (store / "ftjob-x").resolve()
    for rel in ("artifacts/../outside", "artifacts/link", "artifacts/link/f", "artifacts", "/etc/passwd",
                "outside", "artifacts/ftjob-x/../../outside", "", "artifacts/\x00"):
        with pytest.raises(ValueError):
            artifacts.resolve_rel(tmp_path, rel)


def test_removing_a_jobs_artifacts_never_follows_a_link(tmp_path):
    job = "ftjob-" + "c" * 24
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("keep")
    (tmp_path / "artifacts").mkdir()
    artifacts.job_dir(tmp_path, job).symlink_to(outside)
    assert artifacts.remove_job_artifacts(tmp_path, job)
    assert (outside / "keep.txt").exists() and not artifacts.job_dir(tmp_path, job).exists()
    folder = artifacts.job_dir(tmp_path, job) / "model"
    folder.mkdir(parents=True)
    (folder / "w").write_text("x")
    assert artifacts.remove_job_artifacts(tmp_path, job)
    assert not artifacts.job_dir(tmp_path, job).exists() and list((tmp_path / "artifacts").iterdir()) == []
    assert not artifacts.remove_job_artifacts(tmp_path, job)


# ---- projection and dispatcher (real Postgres and Redis, no workers) ------------------------------------
def _registered(model_id: str, job_id: str = "ftjob-" + "d" * 24) -> NewEvent:
    return NewEvent("ModelRegistered", {
        "id": model_id, "project": "p", "base_model": BASE, "backend": "hf-lora", "job_id": job_id,
        "artifact_path": artifacts.model_dir_rel(job_id), "created_at": 1, "lineage": {}})


def test_the_models_projection_can_apply_export_and_delete_events_twice(svc):
    from eventlog.projections.models import ModelsProjection
    from eventlog.runner import catch_up

    e1, e2 = "export-" + "1" * 24, "export-" + "2" * 24
    svc.store.append("model-m", 0, [
        _registered("m"),
        NewEvent("ModelExportRequested", {"id": e1, "model": "m", "format": "safetensors", "at": 2}),
        NewEvent("ModelExportRequested", {"id": e2, "model": "m", "format": "gguf", "at": 3}),
        NewEvent("ModelExported", {"id": e1, "model": "m", "format": "safetensors", "path": "artifacts/x",
                                   "files": ["merged/config.json"], "at": 4}),
        NewEvent("ModelExportFailed", {"id": e2, "model": "m", "error": {"code": "c", "message": "m", "param": None},
                                       "at": 5}),
        NewEvent("ModelDeleted", {"id": "m", "at": 6}),
    ])
    catch_up(svc.pool)

    def row():
        with svc.pool.connection() as c:
            return c.execute("SELECT deleted_at, exports FROM models WHERE id = 'm'").fetchone()

    first = row()
    assert first["deleted_at"] == 6
    assert [(x["id"], x["status"]) for x in first["exports"]] == [(e1, "succeeded"), (e2, "failed")]
    assert first["exports"][0]["files"] == ["merged/config.json"] and first["exports"][1]["error"]["code"] == "c"
    with svc.pool.connection() as c:
        ModelsProjection().apply(c, svc.store.read_stream("model-m"))  # applied again, e.g. after a crash
    assert row() == first


def test_the_dispatcher_enqueues_exports_and_removals_again_after_redis_loses_them(svc):
    from rq import Queue
    from rq.job import Job

    from eventlog.dispatcher import Dispatcher, removal_rq_id
    from eventlog.runner import catch_up

    ex = "export-" + "3" * 24
    svc.store.append("model-m1", 0, [_registered("m1"), NewEvent("ModelExportRequested", {
        "id": ex, "model": "m1", "format": "safetensors", "at": 2})])
    svc.store.append("model-m2", 0, [_registered("m2", "ftjob-" + "e" * 24), NewEvent("ModelDeleted", {
        "id": "m2", "at": 2})])
    catch_up(svc.pool)
    d = Dispatcher(svc)
    d.reconcile()
    d.reconcile()  # nothing twice
    assert sorted(Queue("cpu", connection=d.redis).job_ids) == sorted([ex, removal_rq_id("m2")])
    assert Job.fetch(ex, connection=d.redis).timeout == 3600
    d.redis.flushdb()
    d.reconcile()
    assert sorted(Queue("cpu", connection=d.redis).job_ids) == sorted([ex, removal_rq_id("m2")])
    # the tail enqueues at once too
    d.redis.flushdb()
    d.position = 0
    d.tail()
    assert sorted(Queue("cpu", connection=d.redis).job_ids) == sorted([ex, removal_rq_id("m2")])
    # removed: never enqueued again
    svc.store.append("model-m2", 2, [NewEvent("ModelArtifactsRemoved", {"id": "m2", "at": 3})])
    d.redis.flushdb()
    d.reconcile()
    assert Queue("cpu", connection=d.redis).job_ids == [ex]


def test_an_export_whose_worker_keeps_dying_fails_after_the_retry_limit(svc):
    from eventlog.dispatcher import Dispatcher
    from eventlog.runner import catch_up

    ex = "export-" + "4" * 24
    started = [NewEvent("ModelExportStarted", {"id": ex, "model": "m3", "attempt": n, "at": 3}) for n in (1, 2)]
    svc.store.append("model-m3", 0, [_registered("m3"), NewEvent("ModelExportRequested", {
        "id": ex, "model": "m3", "format": "gguf", "at": 2}), *started])  # max_attempts is 2 here
    catch_up(svc.pool)
    Dispatcher(svc).reconcile()
    last = svc.store.read_stream("model-m3")[-1]
    assert last.type == "ModelExportFailed" and last.data["error"]["code"] == "export_failed"
    catch_up(svc.pool)
    with svc.pool.connection() as c:
        assert c.execute("SELECT exports FROM models WHERE id = 'm3'").fetchone()["exports"][0]["status"] == "failed"
