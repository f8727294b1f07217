"""RQ entry points. Each takes ids, reads the log, runs the work and appends events.

`run_training(job_id, attempt)`: fenced start (JobStarted with the expected version), a heartbeat
lease in Postgres, the recipe in a child process, throttled progress events, cancel between steps,
and one atomic terminal append (JobSucceeded + ModelRegistered).
"""
from __future__ import annotations

import ctypes
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from domain.errors import ConcurrencyConflict
from domain.events import file_stream, job_stream, model_stream
from domain.jobs import JobState, fold
from eventlog import artifacts
from eventlog.bootstrap import Services, bootstrap
from eventlog.catalog import model_path
from eventlog.store import Append, NewEvent
from workers.progress import Fenced, ProgressLog

log = logging.getLogger("tunelog.worker")
BASE_LR = 2e-4  # LoRA learning rate at learning_rate_multiplier = 1
LEASE_CUTOFF_SECONDS = 60.0  # without a lease renewal for this long, a worker stops its attempt
MIN_PROGRESS_INTERVAL = 1.0  # seconds between two training-step events (evaluations are never dropped)
RECIPE_MODULE = "workers.hf.recipe"  # run as `python -m RECIPE_MODULE config.json` (JSON lines on stdout)


def _now() -> int:
    return int(time.time())


def _die_with_parent() -> None:
    """In the child: SIGKILL it when the worker dies, so no training outlives its lease."""
    try:
        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


class Lease:
    """A heartbeat row in Postgres; the dispatcher declares the attempt lost when it expires."""

    def __init__(self, svc: Services, job_id: str, attempt: int, worker: str):
        self.svc, self.job_id, self.attempt, self.worker = svc, job_id, attempt, worker
        self.ttl = svc.settings.lease_seconds
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True, name="lease")

    def acquire(self, start_heartbeat: bool = True) -> bool:
        """Take the lease unless another worker holds a live one for this attempt (or a later one): a
        second worker handed the same job must neither start it nor overwrite the winner's lease."""
        with self.svc.pool.connection() as c:
            row = c.execute(
                "INSERT INTO leases (job_id, attempt, worker, expires_at) "
                "VALUES (%s, %s, %s, now() + make_interval(secs => %s)) "
                "ON CONFLICT (job_id) DO UPDATE SET attempt = EXCLUDED.attempt, worker = EXCLUDED.worker, "
                "expires_at = EXCLUDED.expires_at "
                "WHERE leases.attempt < EXCLUDED.attempt OR leases.expires_at < now() RETURNING worker",
                (self.job_id, self.attempt, self.worker, self.ttl)).fetchone()
        if row is None:
            return False
        if start_heartbeat:
            self.start_heartbeat()
        return True

    def start_heartbeat(self) -> None:
        self._thread.start()

    def _beat(self) -> None:
        last_ok = time.monotonic()
        while not self._stop.wait(max(0.5, self.ttl / 4)):
            try:
                with self.svc.pool.connection() as c:
                    n = c.execute("UPDATE leases SET expires_at = now() + make_interval(secs => %s) "
                                  "WHERE job_id = %s AND attempt = %s AND worker = %s",
                                  (self.ttl, self.job_id, self.attempt, self.worker)).rowcount
                if n == 0:
                    self.lost.set()
                    return
                last_ok = time.monotonic()
            except Exception:  # a blip: the next beat retries; the lease has slack
                log.exception("lease heartbeat failed")
                # Cut off from Postgres this long: the dispatcher may have handed the job to another attempt
                # by now (it can reach Postgres when we cannot), which trains into the same checkpoint
                # folder. Stop rather than train beside it. An outage of Postgres itself (both sides cut
                # off; the dispatcher then grants a lease period of grace) shorter than this is ridden out.
                if time.monotonic() - last_ok > max(3 * self.ttl, LEASE_CUTOFF_SECONDS):
                    log.error("job %s: no lease renewal for %.0f s; stopping this attempt", self.job_id,
                              time.monotonic() - last_ok)
                    self.lost.set()
                    return

    def release(self) -> None:
        self._stop.set()
        try:
            with self.svc.pool.connection() as c:
                c.execute("DELETE FROM leases WHERE job_id = %s AND worker = %s", (self.job_id, self.worker))
        except Exception:
            log.exception("could not release lease")


def _write_file(svc: Services, file_id: str | None, dest: Path) -> str | None:
    if not file_id:
        return None
    # through the store (upcast on read), never raw jsonb: an old event shape must still be readable
    uploaded = next((e for e in svc.store.read_stream(file_stream(file_id)) if e.type == "FileUploaded"), None)
    if uploaded is None:
        raise RuntimeError(f"file {file_id} has no stored content")
    sha = uploaded.data["sha256"]
    # copied in 8 MiB slices: a large training file never sits whole in the worker's memory
    chunk, offset = 8 << 20, 1
    with svc.pool.connection() as c, open(dest, "wb") as out:
        row = c.execute("SELECT length(content) AS n FROM blobs WHERE sha256 = %s", (sha,)).fetchone()
        if row is None:
            raise RuntimeError(f"file {file_id} has no stored content")
        while offset <= row["n"]:
            part = c.execute("SELECT substring(content FROM %s FOR %s) AS part FROM blobs WHERE sha256 = %s",
                             (offset, chunk, sha)).fetchone()["part"]
            out.write(bytes(part))
            offset += chunk
    return str(dest)


def _error(code: str, message: str, param: str | None = None) -> dict[str, Any]:
    return {"code": code, "message": message, "param": param}


@dataclass
class Claim:
    """A won start: JobStarted appended (fenced by the stream version) and a lease taken."""

    state: JobState
    attempt: int
    worker: str
    version: int  # the stream's version after JobStarted
    metadata: dict[str, Any]
    training_file_sha256: str | None  # from JobCreated: the lineage records which bytes trained the model


# Claims made by the RQ worker process just before it forks the work horse (the horse inherits this
# dict). Claiming in the long-lived parent uses its warm connection: the horse would need a new one.
PRECLAIMED: dict[tuple[str, int], Claim | str] = {}


def claim(svc: Services, job_id: str, attempt: int) -> Claim | str:
    """Start attempt `attempt` of the job, or say why not (a string)."""
    store = svc.store
    stream = job_stream(job_id)
    events = store.read_stream(stream)
    state = fold([(e.type, e.data, e.stream_version) for e in events])
    if state.status != "queued" or state.attempt != attempt or state.remote is not None:
        return f"skipped: job is {state.status}, attempt {state.attempt}" + (
            " (followed at its provider)" if state.remote is not None else "")
    worker = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
    meta = {"actor": f"worker:{worker}", "correlation_id": job_id,
            "causation_id": str(events[-1].global_position)}
    if state.cancel_requested:  # asked to stop while it waited for a worker
        try:
            store.append(stream, state.version, [NewEvent("JobCancelled", {
                "reason": "cancelled before it started", "at": _now()}, meta)])
        except ConcurrencyConflict:
            pass
        return "cancelled"
    lease = Lease(svc, job_id, attempt, worker)
    if not lease.acquire(start_heartbeat=False):
        return "skipped: another worker holds this attempt's lease"
    try:
        store.append(stream, state.version, [NewEvent("JobStarted", {"attempt": attempt, "worker": worker,
                                                                     "started_at": _now()}, meta)])
    except ConcurrencyConflict:
        lease.release()
        return "skipped: another worker started it, or it changed"
    return Claim(state, attempt, worker, state.version + 1, meta, events[0].data.get("training_file_sha256"))


def preclaim(job_id: str, attempt: int) -> None:
    """Called in the RQ worker process before the fork (see workers/__main__.py)."""
    PRECLAIMED[(job_id, attempt)] = claim(bootstrap(pool_size=2), job_id, attempt)


def run_training(job_id: str, attempt: int) -> str:
    svc = bootstrap(pool_size=3)
    won = PRECLAIMED.pop((job_id, attempt), None) or claim(svc, job_id, attempt)
    if isinstance(won, str):
        return won
    lease = Lease(svc, job_id, attempt, won.worker)
    lease.start_heartbeat()
    progress = ProgressLog(svc.store, job_id, won.version, attempt, won.metadata)
    try:
        if won.state.delegated:  # a provider trains it: create (or find) the remote job; polls follow it
            from workers import delegate

            return delegate.submit(svc, won, progress, lease)
        return _train(svc, won, progress, lease)
    except Fenced as e:
        log.warning("job %s: fenced off (%s)", job_id, e)
        return "fenced"
    except Exception as e:  # a bug or a lost dependency: fail the job with the reason, do not leave it running
        log.exception("job %s failed unexpectedly", job_id)
        try:
            # the exception's text may name hosts, users or paths: it goes to the worker's log, not the job
            progress.finish(extra=[NewEvent("JobFailed", {"error": _error(
                "internal_error", f"the worker failed ({type(e).__name__}); the operator's worker log has the "
                "details"), "at": _now()}, progress.metadata)])
        except Exception:  # the lease will expire and the dispatcher takes over
            log.exception("could not record the failure of %s", job_id)
        raise
    finally:
        lease.release()
        # whatever the outcome (done, paused, cancelled, failed, fenced): the scratch space goes, the log stays
        _clean_scratch(svc.settings.work_dir / job_id / f"attempt-{attempt}")


def gpus_per_node() -> int:
    """Visible GPUs, counted without initialising CUDA in this process (RQ's forked work horse must not):
    TUNELOG_NPROC_PER_NODE, else CUDA_VISIBLE_DEVICES, else the driver's list of devices."""
    forced = os.environ.get("TUNELOG_NPROC_PER_NODE")
    if forced and forced.isdigit():
        return int(forced)
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip() and d.strip() != "-1"])
    try:
        return len(list(Path("/proc/driver/nvidia/gpus").iterdir()))
    except OSError:
        return 0


def launch_command(config_path: Path, nproc: int) -> list[str]:
    """The recipe under torchrun (one process per GPU, or one on the CPU), or under the DeepSpeed launcher
    across the hosts of TUNELOG_HOSTFILE (docs/training.md: multi-node)."""
    hostfile = os.environ.get("TUNELOG_HOSTFILE")
    if hostfile:
        return [sys.executable, "-m", "deepspeed.launcher.runner", f"--hostfile={hostfile}", "--no_local_rank",
                "--module", RECIPE_MODULE, str(config_path)]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={max(1, nproc)}",
            "-m", RECIPE_MODULE, str(config_path)]


def recipe_config(s, state: JobState, base_path: Path, train: str, valid: str | None, work: Path,
                  job_dir: Path, nproc: int) -> dict[str, Any]:
    """The recipe's whole input, from the job's events (hyperparameters resolved when it was created)."""
    hp = state.hyperparameters
    method = state.method.get("type", "supervised")
    return {
        "base_model_path": str(base_path), "train_file": train, "valid_file": valid, "method": method,
        "output_dir": str(job_dir / "model"), "run_dir": str(job_dir / "checkpoints"),
        "metrics_file": str(work / "metrics.jsonl"), "control_dir": str(work / "control"),
        "cache_dir": str(work / "cache"),
        "n_epochs": hp["n_epochs"], "batch_size": hp["batch_size"],
        "learning_rate": BASE_LR * hp["learning_rate_multiplier"] * (1.0 if hp.get("lora", True) else 0.1),
        "seed": state.seed or 0,
        "max_seq_len": hp.get("max_seq_len") or s.max_seq_len,
        "lora": hp.get("lora", True), "lora_r": hp.get("lora_r", 16), "lora_alpha": hp.get("lora_alpha", 32),
        "lora_dropout": hp.get("lora_dropout", 0.05), "target_modules": hp.get("target_modules", "all-linear"),
        "qlora": hp.get("qlora", False), "deepspeed": hp.get("deepspeed"),
        "checkpoint_interval": hp.get("checkpoint_interval"), "eval_interval": hp.get("eval_interval"),
        "early_stopping_patience": hp.get("early_stopping_patience"), "packing": hp.get("packing", False),
        "beta": hp.get("beta", 0.1),
        # on the CPU, share the cores with the other cpu workers instead of oversubscribing them
        "num_threads": 0 if nproc else max(1, (os.cpu_count() or 2) // s.cpu_workers),
    }


class MetricsTail:
    """Reads the recipe's JSON lines as they are appended (the file outlives any launcher's stdout games)."""

    def __init__(self, path: Path):
        self.path = path
        self.offset = 0
        self.buf = b""

    def read(self) -> list[dict[str, Any]]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                chunk = f.read()  # to the end: after the exit, the last round must see every record
        except FileNotFoundError:
            return []
        self.offset += len(chunk)
        self.buf += chunk
        out = []
        while b"\n" in self.buf:
            line, self.buf = self.buf.split(b"\n", 1)
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(rec, dict):
                out.append(rec)
        return out


def _train(svc: Services, won: Claim, progress: ProgressLog, lease: Lease) -> str:
    state, attempt = won.state, won.attempt
    s = svc.settings
    job_id = state.id
    work = s.work_dir / job_id / f"attempt-{attempt}"
    if work.exists():  # a re-run of the same attempt (an RQ retry): start its scratch space clean
        shutil.rmtree(work, ignore_errors=True)
    (work / "control").mkdir(parents=True, exist_ok=True)
    job_dir = artifacts.job_dir(s.data_dir, job_id)
    job_dir.mkdir(parents=True, exist_ok=True)
    optimizing = state.backend == "dspy"  # a DSPy program is optimized, not weights trained
    nproc = gpus_per_node() if state.queue == "gpu" and not optimizing else 0
    try:
        train = _write_file(svc, state.training_file, work / "train.jsonl")
        valid = _write_file(svc, state.validation_file, work / "valid.jsonl")
        if optimizing:
            from workers import dspy_job

            config = dspy_job.child_config(svc, state, train, valid, work, job_dir)
        else:
            config = recipe_config(s, state, model_path(s.model_dir, state.model), train, valid, work, job_dir, nproc)
    except Exception as e:  # noqa: BLE001 - reported to the user as the job's error
        log.exception("job %s: setup failed", job_id)
        progress.finish(extra=[NewEvent("JobFailed", {"error": _error("setup_failed", _scrub(str(e), s)),
                                                      "at": _now()}, progress.metadata)])
        return "failed"
    (work / "config.json").write_text(json.dumps(config, indent=2))
    # checkpoints of earlier attempts (the stream knows their ids): rotation may remove them
    known: dict[int, list[str]] = {}
    for e in svc.store.read_stream(job_stream(job_id)):
        if e.type == "CheckpointSaved":
            known.setdefault(e.data["step"], []).append(e.data["id"])
        elif e.type == "CheckpointDeleted":
            for ids in known.values():
                if e.data["id"] in ids:
                    ids.remove(e.data["id"])
    log_file = open(work / "recipe.log", "wb")
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "OMP_NUM_THREADS": str(config["num_threads"] or os.environ.get("OMP_NUM_THREADS", "") or 1),
           "PYTHONUNBUFFERED": "1"}
    if not nproc:
        env["DS_ACCELERATOR"] = "cpu"  # DeepSpeed on the CPU: gloo
        env["CUDA_VISIBLE_DEVICES"] = ""
    command = ([sys.executable, "-m", "workers.dspy_opt", str(work / "config.json")] if optimizing
               else launch_command(work / "config.json", nproc))
    child = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent, env=env,
                             cwd=str(Path(__file__).resolve().parent.parent))
    what = "DSPy optimization" if optimizing else "Training"
    progress.add("JobMessage", {"level": "info", "message": f"{what} started on the {state.queue} queue "
                                f"(attempt {attempt}, {max(1, nproc)} process(es))", "at": _now()}, urgent=True)
    # evaluations an earlier attempt recorded: a resumed run replays them (from DSPy's cache), not re-reports them
    history = svc.store.read_stream(job_stream(job_id)) if optimizing else []
    recorded_trials = max((e.data.get("trial") or 0 for e in history if e.type == "JobProgressed"), default=0)
    failure: dict[str, Any] | None = None
    # the server's time limit counts the time earlier attempts ran (not the time the job spent paused)
    first_start = time.time() - _seconds_run(history)  # (this attempt's JobStarted is still open)
    last_settings_check = 0.0
    tail = MetricsTail(work / "metrics.jsonl")
    done: dict[str, Any] | None = None
    paused: dict[str, Any] | None = None
    last_poll = 0.0
    last_metrics: dict[str, Any] = {}
    last_progress = 0.0
    last_output = time.monotonic()
    exited = False
    try:
        while True:
            exited = child.poll() is not None
            for rec in tail.read():
                last_output = time.monotonic()
                kind = rec.pop("kind", None)
                if kind == "metrics":
                    remaining = rec.pop("remaining_seconds", None)
                    if remaining is not None:
                        rec["estimated_finish"] = _now() + int(remaining)
                    last_metrics.update({k: v for k, v in rec.items() if k not in ("estimated_finish",)})
                    evaluated = rec.get("valid_loss") is not None or rec.get("full_valid_loss") is not None
                    # one event per step, at most about one a second: fast GPU steps (many a second) would
                    # otherwise put millions of events in the log; evaluations and the last step always go
                    if evaluated or rec.get("step") == rec.get("total_steps") or \
                            time.monotonic() - last_progress >= MIN_PROGRESS_INTERVAL:
                        last_progress = time.monotonic()
                        progress.add("JobProgressed", {**rec, "at": _now()}, urgent=evaluated)
                elif kind == "checkpoint":
                    step = rec["step"]
                    ckpt_id = f"ftckpt-{job_id[6:]}-a{attempt}-{step}"
                    progress.add("CheckpointSaved", {
                        # the attempt is part of the id: a resumed or retried attempt may save the same step
                        "id": ckpt_id, "attempt": attempt, "job_id": job_id, "project": state.project,
                        "step": step, "path": _rel(s.data_dir, Path(rec["path"])),
                        "fine_tuned_model_checkpoint": f"{_model_id(state)}:ckpt-step-{step}",
                        "metrics": rec["metrics"], "at": _now()}, urgent=True)
                    known.setdefault(step, []).append(ckpt_id)
                    for old_step in [k for k in known if k not in rec.get("kept", [step])]:
                        for old_id in known.pop(old_step):
                            progress.add("CheckpointDeleted", {"id": old_id, "step": old_step, "at": _now(),
                                                               "keep": 3}, urgent=True)
                elif kind == "trial":  # a DSPy evaluation: the dev set before and after, and each candidate
                    if rec["trial"] > recorded_trials:
                        remaining = rec.pop("remaining_seconds", None)
                        progress.add("JobProgressed", {
                            **rec, "step": rec["trial"], "total_steps": rec.get("total_trials"), "at": _now(),
                            "estimated_finish": _now() + int(remaining) if remaining is not None else None},
                            urgent=True)
                elif kind == "failed":
                    failure = rec
                elif kind == "message":
                    progress.add("JobMessage", {"level": rec.get("level", "info"), "message": rec["message"],
                                                "at": _now()})
                elif kind == "paused":
                    paused = rec
                elif kind == "done":
                    done = rec
            if time.monotonic() - last_poll >= 1.0:
                last_poll = time.monotonic()
                progress.poll()
                if lease.lost.is_set():
                    raise Fenced("lease lost")
                if progress.pause_requested and not (work / "control" / "pause").exists():
                    (work / "control" / "pause").touch()  # the recipe checks it after every step
                check_settings = time.monotonic() - last_settings_check >= 10
                if check_settings:
                    last_settings_check = time.monotonic()
                if optimizing and (why := _dspy_must_stop(svc, state, config, first_start, check_settings)):
                    _stop_child(child)
                    progress.finish(extra=[NewEvent("JobFailed", {"error": _error(*why), "at": _now()},
                                                    progress.metadata)])
                    _drop_dspy_cache(s, job_id, optimizing)
                    return "failed"
                if time.monotonic() - last_output > s.stall_seconds:
                    # a hung recipe must not keep a heartbeat (and the job) alive for a day
                    _stop_child(child)
                    progress.finish(extra=[NewEvent("JobFailed", {"error": _error(
                        "training_stalled", f"the training process reported nothing for {int(s.stall_seconds)} s "
                        "and was stopped"), "at": _now()}, progress.metadata)])
                    return "failed"
            if progress.cancel_requested:
                _stop_child(child)
                progress.finish(extra=[NewEvent("JobCancelled", {"reason": "cancelled by request", "at": _now()},
                                               progress.metadata)])
                _drop_dspy_cache(s, job_id, optimizing)
                return "cancelled"
            if exited:  # polled before this round's read: every record the recipe wrote has been handled
                break
            time.sleep(0.2)
    except BaseException:
        _stop_child(child)
        raise
    finally:
        log_file.close()
    rc = child.wait()
    progress.poll()  # a cancel that came while the recipe was saving its pause checkpoint wins over the pause
    if progress.cancel_requested:
        progress.finish(extra=[NewEvent("JobCancelled", {"reason": "cancelled by request", "at": _now()},
                                       progress.metadata)])
        _drop_dspy_cache(s, job_id, optimizing)
        return "cancelled"
    if rc == 0 and paused is not None:
        step = paused["step"]
        steps = known.get(step) or [None]
        progress.finish(extra=[NewEvent("JobPaused", {"step": step, "checkpoint": steps[-1], "at": _now()},
                                        progress.metadata)])
        return "paused"
    if failure is not None:  # the child said why (a provider's permanent refusal)
        progress.finish(extra=[NewEvent("JobFailed", {"error": _error(failure["code"], _scrub(failure["message"], s)),
                                                      "at": _now()}, progress.metadata)])
        _drop_dspy_cache(s, job_id, optimizing)
        return "failed"
    if rc != 0 or done is None:
        log.error("job %s attempt %s: training exited with %s; log in %s", job_id, attempt, rc, work / "recipe.log")
        progress.finish(extra=[NewEvent("JobFailed", {"error": _error(
            "training_failed", f"the training process exited with status {rc}"
            + (f": {reason}" if (reason := _failure_reason(work / 'recipe.log')) else "")), "at": _now()},
            progress.metadata)])
        _drop_dspy_cache(s, job_id, optimizing)
        return "failed"
    if optimizing:
        from workers import dspy_job

        result = dspy_job.register(svc, won, progress, done)
        _drop_dspy_cache(s, job_id, optimizing)
        return result
    model_id = _model_id(state)
    artifact_rel = artifacts.model_dir_rel(job_id)
    final_metrics = {k: v for k, v in (done.get("metrics") or last_metrics).items()
                     if k not in ("step_seconds", "grad_norm", "learning_rate", "tokens_per_second")}
    lineage = {
        "base_model": state.model, "job_id": job_id, "training_file": state.training_file,
        "training_file_sha256": won.training_file_sha256, "validation_file": state.validation_file,
        "hyperparameters": state.hyperparameters, "method": state.method, "seed": state.seed,
        "attempt": attempt, "final_metrics": final_metrics, "rerun_of": state.rerun_of,
        "artifact_sha256": _folder_sha256(job_dir / "model"),  # what answers chat is exactly these bytes
    }
    now = _now()
    backend = "hf-lora" if config["lora"] else "hf-full"
    progress.finish(
        extra=[NewEvent("JobSucceeded", {"fine_tuned_model": model_id, "trained_tokens": done["trained_tokens"],
                                         "artifact_path": artifact_rel, "at": now, "metrics": final_metrics},
                        progress.metadata)],
        others=[Append(model_stream(model_id), 0, [NewEvent("ModelRegistered", {
            "id": model_id, "project": state.project, "base_model": state.model, "backend": backend,
            "job_id": job_id, "artifact_path": artifact_rel, "created_at": now, "lineage": lineage},
            progress.metadata)])],
    )
    return model_id


def _seconds_run(events) -> float:
    """How long a job's ended attempts ran: from each JobStarted to the pause, loss or end that closed it."""
    total, started = 0.0, None
    for e in events:
        if e.type == "JobStarted":
            started = e.recorded_at.timestamp()
        elif started is not None and e.type in ("JobPaused", "JobAttemptLost", "JobSucceeded", "JobFailed",
                                                 "JobCancelled"):
            total += e.recorded_at.timestamp() - started
            started = None
    return total


def _dspy_must_stop(svc: Services, state: JobState, config: dict[str, Any], first_start: float,
                    check_settings: bool) -> tuple[str, str] | None:
    """(code, message) when a running DSPy job must stop: past the server's time limit (its attempts' running
    time together), or a provider model in a project made local-only since it started (checked every
    10 s)."""
    s = svc.settings
    if time.time() - first_start > s.dspy_max_seconds:
        return ("time_limit_exceeded", f"the optimization ran over this server's limit of {int(s.dspy_max_seconds)} s "
                "(TUNELOG_DSPY_MAX_SECONDS); set time_budget_s, or use fewer examples or candidates")
    uses_provider = any((r or {}).get("backend") == "provider" for r in (config["runner"], config.get("judge")))
    if uses_provider and check_settings:
        from domain.events import project_stream
        from domain.projects import fold_settings

        if fold_settings(svc.store.read_stream(project_stream(state.project))).local_only:
            return ("local_only", "the project was made local-only (settings: local_only) while this job asked an "
                    "external provider; it was stopped")
    return None


def _folder_sha256(folder: Path) -> str | None:
    """One hash over a model folder's files (names and bytes, in name order): the model's content version."""
    import hashlib

    try:
        files = sorted(p for p in folder.rglob("*") if p.is_file())
    except OSError:
        return None
    h = hashlib.sha256()
    for p in files:
        h.update(p.relative_to(folder).as_posix().encode() + b"\0")
        with open(p, "rb") as f:
            for block in iter(lambda f=f: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def _drop_dspy_cache(settings, job_id: str, optimizing: bool) -> None:
    """A finished DSPy job's LM cache (kept across its attempts for a resume) goes."""
    if optimizing:
        shutil.rmtree(settings.work_dir / job_id / "dspy-cache", ignore_errors=True)


def _rel(data_dir: Path, path: Path) -> str:
    """A path inside the artifact store as the log keeps it: relative to the data directory (not resolved:
    an operator may link artifacts/ to another disk)."""
    return os.path.relpath(path, data_dir)


def _clean_scratch(work: Path) -> None:
    """The attempt's scratch space (data copies, tokenized cache) goes; its log stays for operators."""
    for name in ("train.jsonl", "valid.jsonl", "cache", "control", "metrics.jsonl"):
        p = work / name
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        elif p.exists():
            p.unlink(missing_ok=True)


_PATH = re.compile(r"(?:/[\w.@+-]+){2,}/?")
_URL_CREDENTIALS = re.compile(r"\b[\w+.-]+://[^\s/@]*@\S*")


def _scrub(text: str, settings=None) -> str:
    """A message that may reach a job's error (read by every key of the project) without the server's
    layout: the data, model, work and code folders by name, URLs with credentials, any absolute path."""
    roots = [Path(__file__).resolve().parent.parent, Path.home()]
    if settings is not None:
        roots = [settings.data_dir, settings.model_dir, settings.work_dir, *roots]
    for root in sorted({str(r) for r in roots}, key=len, reverse=True):
        text = text.replace(root, "<server>")
    text = _URL_CREDENTIALS.sub("<url>", text)
    return _PATH.sub("<path>", text)[:300]


def _failure_reason(stderr_path: Path) -> str:
    """The last exception line of the training log, with server paths taken out: job errors are read by
    every key of the project, so no stack trace, file system layout or environment reaches them."""
    try:  # the end of the log only: it may be large
        with open(stderr_path, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 65536))
            lines = f.read().decode(errors="replace").strip().splitlines()
    except OSError:
        return ""
    for line in reversed(lines[-200:]):
        m = re.match(r"^([A-Za-z_][\w.]*(?:Error|Exception|Interrupt)): ?(.*)$", line.strip())
        if m:
            return _scrub(f"{m.group(1).rsplit('.', 1)[-1]}: {m.group(2)}")
    return ""


def _model_id(state) -> str:
    suffix = state.suffix or ""
    return f"ft:{state.model}:{state.project}:{suffix}:{state.id[-8:]}"


def _stop_child(child: subprocess.Popen, grace: float = 5.0) -> None:
    """Stop the launcher and every process under it (torchrun starts each rank in a session of its own, so
    a process-group kill would miss them): SIGTERM, then SIGKILL after `grace` seconds. Exiting frees
    their GPU memory."""
    import psutil

    try:
        procs = [psutil.Process(child.pid)] + psutil.Process(child.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        procs = []
    for p in procs:
        try:
            p.terminate()
        except psutil.NoSuchProcess:
            pass
    _gone, alive = psutil.wait_procs(procs, timeout=grace)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=5)
    try:
        child.wait(1)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()


__all__ = ["run_training"]
