"""The worker's side of a DSPy job: what the child (workers/dspy_opt.py) is given, and what its result becomes.

The attempt itself is run by workers/jobs.py like any training attempt (fenced start, lease, events, cancel by
stopping the child, pause through control/pause). Here: the model the program runs on, looked up again when
the attempt starts (it may have been deleted, or the project made local-only, since the job was created), and
the registration of the compiled program as a model of kind `dspy-program`: its JSON state stored in Postgres
(content-addressed, like uploaded files) so that every API process can serve it, with its lineage.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from domain.events import model_stream, project_stream
from domain.jobs import JobState
from domain.projects import fold_settings
from eventlog import artifacts
from eventlog.bootstrap import Services
from eventlog.catalog import BASE_MODELS
from eventlog.store import Append, NewEvent

RUNNABLE_BACKENDS = ("hf-lora", "hf-full", "provider")  # a program runs on a chat model, not on another program


class RunnerGone(RuntimeError):
    pass


def runner(svc: Services, project: str, model_id: str) -> dict[str, Any]:
    """What answers the program's LM calls: {model, backend, base_model, artifact_path}, for a bundled base
    model, a fine-tuned model of the project, or a delegated provider's model."""
    if model_id in BASE_MODELS:
        return {"model": model_id, "backend": "hf-base", "base_model": model_id, "artifact_path": None}
    with svc.pool.connection() as c:
        row = c.execute("SELECT backend, base_model, artifact_path, project, deleted_at FROM models WHERE id = %s "
                        "UNION ALL SELECT 'checkpoint', NULL, NULL, project, NULL FROM job_checkpoints "
                        "WHERE fine_tuned_model_checkpoint = %s LIMIT 1", (model_id, model_id)).fetchone()
    if row is not None and row["project"] == project and row["deleted_at"] is None and \
            row["backend"] in RUNNABLE_BACKENDS:
        return {"model": model_id, "backend": row["backend"], "base_model": row["base_model"],
                "artifact_path": row["artifact_path"] if row["backend"] != "provider" else None}
    if row is None:  # a provider's own model (not one any tunelog job trained: those have rows, live or deleted)
        from eventlog import providers

        found = providers.load(svc.settings.data_dir).split(model_id)
        if found is not None and not (found[1].startswith("ft:") or ":ckpt-step-" in found[1]):
            return {"model": model_id, "backend": "provider", "base_model": model_id, "artifact_path": None}
    raise RunnerGone(f"the model {model_id!r} this program runs on no longer exists in this project")


def sweep_caches(svc: Services) -> None:
    """The DSPy caches of jobs that have ended (cancelled while paused, failed by the dispatcher, ...): each
    holds prompts with pupils' questions, and up to 2 GiB. Run at the start of every DSPy attempt."""
    import shutil

    work = svc.settings.work_dir
    try:
        jobs = [p.name for p in work.iterdir() if (p / "dspy-cache").is_dir()]
    except OSError:
        return
    if not jobs:
        return
    with svc.pool.connection() as c:
        ended = [r["id"] for r in c.execute("SELECT id FROM jobs WHERE id = ANY(%s) AND status IN "
                                            "('succeeded', 'failed', 'cancelled')", (jobs,)).fetchall()]
    for job_id in ended:
        shutil.rmtree(work / job_id / "dspy-cache", ignore_errors=True)


def child_config(svc: Services, state: JobState, train: str | None, valid: str | None, work: Path,
                 job_dir: Path) -> dict[str, Any]:
    s = svc.settings
    sweep_caches(svc)
    settings = fold_settings(svc.store.read_stream(project_stream(state.project)))
    opts = state.hyperparameters
    run_on = runner(svc, state.project, state.model)
    judge = runner(svc, state.project, opts["judge_model"]) if opts.get("judge_model") else None
    for r in (run_on, judge):
        if r is not None and r["backend"] == "provider" and settings.local_only:
            raise RunnerGone(f"the model {r['model']!r} is served by an external provider, and this project is "
                             "now local-only (settings: local_only)")
    return {
        "runner": run_on, "judge": judge, "options": opts, "seed": opts.get("seed") or state.seed or 0,
        "train_file": train, "valid_file": valid, "program_file": str(job_dir / "model" / "program.json"),
        "metrics_file": str(work / "metrics.jsonl"), "control_dir": str(work / "control"),
        # the cache outlives the attempt: a re-queued attempt replays what was answered (workers/dspy_opt.py)
        "cache_dir": str(s.work_dir / state.id / "dspy-cache"),
        "data_dir": str(s.data_dir), "model_dir": str(s.model_dir), "roster": list(settings.pii_roster),
        "num_threads": max(1, (os.cpu_count() or 2) // s.cpu_workers),
    }


def program_id(state: JobState) -> str:
    return f"dspy:{state.project}:{state.suffix or ''}:{state.id[-8:]}"


def register(svc: Services, won, progress, done: dict[str, Any]) -> str:
    """JobSucceeded and ModelRegistered (kind dspy-program) in one append, the program's bytes stored first."""
    from eventlog import programs
    from workers.jobs import _now

    state = won.state
    content = Path(done["program_file"]).read_bytes()
    state_json = programs.check_state(content)  # the gate, again: what is served is what was checked
    content = programs.state_bytes(state_json)
    sha = hashlib.sha256(content).hexdigest()
    with svc.pool.connection() as c:
        c.execute("INSERT INTO blobs (sha256, content) VALUES (%s, %s) ON CONFLICT DO NOTHING", (sha, content))
    model_id = program_id(state)
    metrics = done.get("metrics") or {}
    opts = state.hyperparameters
    lineage = {
        "base_model": state.model, "job_id": state.id, "training_file": state.training_file,
        "training_file_sha256": won.training_file_sha256, "validation_file": state.validation_file,
        "method": state.method, "optimizer": opts.get("optimizer"), "metric": opts.get("metric"),
        "judge_model": opts.get("judge_model"), "seed": opts.get("seed") or state.seed,
        "scores": {"dev_before": metrics.get("dev_score_before"), "dev_after": metrics.get("dev_score_after"),
                   "best_trial": metrics.get("best_trial_score")},
        "final_metrics": metrics, "program_sha256": sha, "program": programs.summary(state_json),
        "attempt": won.attempt, "rerun_of": state.rerun_of,
    }
    now = _now()
    artifact_rel = artifacts.model_dir_rel(state.id)
    progress.finish(
        extra=[NewEvent("JobSucceeded", {"fine_tuned_model": model_id, "trained_tokens": done["trained_tokens"],
                                         "artifact_path": artifact_rel, "at": now, "metrics": metrics},
                        progress.metadata)],
        others=[Append(model_stream(model_id), 0, [NewEvent("ModelRegistered", {
            "id": model_id, "project": state.project, "base_model": state.model, "backend": "dspy-program",
            "job_id": state.id, "artifact_path": artifact_rel, "created_at": now, "lineage": lineage},
            progress.metadata)])],
    )
    return model_id
