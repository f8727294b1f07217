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
import selectors
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
from eventlog.bootstrap import Services, bootstrap
from eventlog.catalog import model_path
from eventlog.store import Append, NewEvent
from workers.progress import Fenced, ProgressLog

log = logging.getLogger("tunelog.worker")
BASE_LR = 2e-4  # LoRA learning rate at learning_rate_multiplier = 1
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
        while not self._stop.wait(max(0.5, self.ttl / 4)):
            try:
                with self.svc.pool.connection() as c:
                    n = c.execute("UPDATE leases SET expires_at = now() + make_interval(secs => %s) "
                                  "WHERE job_id = %s AND attempt = %s AND worker = %s",
                                  (self.ttl, self.job_id, self.attempt, self.worker)).rowcount
                if n == 0:
                    self.lost.set()
                    return
            except Exception:  # a blip: the next beat retries; the lease has slack
                log.exception("lease heartbeat failed")

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
    row = None
    if uploaded is not None:
        with svc.pool.connection() as c:
            row = c.execute("SELECT content FROM blobs WHERE sha256 = %s", (uploaded.data["sha256"],)).fetchone()
    if row is None:
        raise RuntimeError(f"file {file_id} has no stored content")
    dest.write_bytes(bytes(row["content"]))
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
    if state.status != "queued" or state.attempt != attempt:
        return f"skipped: job is {state.status}, attempt {state.attempt}"
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
        return _train(svc, won, progress, lease)
    except Fenced as e:
        log.warning("job %s: fenced off (%s)", job_id, e)
        return "fenced"
    except Exception as e:  # a bug or a lost dependency: fail the job with the reason, do not leave it running
        log.exception("job %s failed unexpectedly", job_id)
        try:
            progress.finish(extra=[NewEvent("JobFailed", {"error": _error(
                "internal_error", f"the worker failed: {type(e).__name__}: {e}"), "at": _now()}, progress.metadata)])
        except Exception:  # the lease will expire and the dispatcher takes over
            log.exception("could not record the failure of %s", job_id)
        raise
    finally:
        lease.release()


def _train(svc: Services, won: Claim, progress: ProgressLog, lease: Lease) -> str:
    state, attempt = won.state, won.attempt
    s = svc.settings
    job_id = state.id
    work = s.work_dir / job_id / f"attempt-{attempt}"
    work.mkdir(parents=True, exist_ok=True)
    artifact_rel = f"artifacts/{job_id}/adapter"
    try:
        base_path = model_path(s.model_dir, state.model)
        train = _write_file(svc, state.training_file, work / "train.jsonl")
        valid = _write_file(svc, state.validation_file, work / "valid.jsonl")
    except Exception as e:  # noqa: BLE001 - reported to the user as the job's error
        progress.finish(extra=[NewEvent("JobFailed", {"error": _error("setup_failed", str(e)), "at": _now()},
                                       progress.metadata)])
        return "failed"
    hp = state.hyperparameters
    config = {
        "base_model_path": str(base_path), "train_file": train, "valid_file": valid,
        "output_dir": str(s.data_dir / artifact_rel), "checkpoint_dir": str(work / "checkpoints"),
        "n_epochs": hp["n_epochs"], "batch_size": hp["batch_size"],
        "learning_rate": BASE_LR * hp["learning_rate_multiplier"], "seed": state.seed or 0,
        "max_seq_len": s.max_seq_len,
        # on the CPU, share the cores with the other cpu workers instead of oversubscribing them
        "num_threads": 0 if state.queue == "gpu" else max(1, (os.cpu_count() or 2) // s.cpu_workers),
    }
    (work / "config.json").write_text(json.dumps(config, indent=2))
    stderr = open(work / "stderr.log", "wb")
    child = subprocess.Popen([sys.executable, "-m", RECIPE_MODULE, str(work / "config.json")],
                             stdout=subprocess.PIPE, stderr=stderr, stdin=subprocess.DEVNULL,
                             preexec_fn=_die_with_parent, cwd=str(Path(__file__).resolve().parent.parent))
    progress.add("JobMessage", {"level": "info", "message": f"Training started on the {state.queue} queue "
                                f"(attempt {attempt})", "at": _now()}, urgent=True)
    sel = selectors.DefaultSelector()
    sel.register(child.stdout, selectors.EVENT_READ)
    buf = b""
    done: dict[str, Any] | None = None
    last_poll = time.monotonic()
    last_metrics: dict[str, Any] = {}
    last_output = time.monotonic()
    eof = False
    try:
        while True:
            if eof:
                time.sleep(0.1)
            for _key, _ in sel.select(timeout=0.5) if not eof else []:
                chunk = os.read(child.stdout.fileno(), 65536)
                if not chunk:
                    eof = True
                    sel.unregister(child.stdout)
                buf += chunk
            while b"\n" in buf:
                last_output = time.monotonic()
                line, buf = buf.split(b"\n", 1)
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue
                kind = rec.pop("kind", None)
                if kind == "metrics":
                    last_metrics = rec
                    progress.add("JobProgressed", {**rec, "at": _now()}, urgent=rec.get("valid_loss") is not None)
                elif kind == "checkpoint":
                    step = rec["step"]
                    progress.add("CheckpointSaved", {
                        # the attempt is part of the id: a retried attempt saves the same steps again
                        "id": f"ftckpt-{job_id[6:]}-a{attempt}-{step}", "attempt": attempt, "job_id": job_id,
                        "project": state.project,
                        "step": step, "path": rec["path"],
                        "fine_tuned_model_checkpoint": f"{_model_id(state)}:ckpt-step-{step}",
                        "metrics": rec["metrics"], "at": _now()}, urgent=True)
                elif kind == "message":
                    progress.add("JobMessage", {"level": rec.get("level", "info"), "message": rec["message"],
                                                "at": _now()})
                elif kind == "done":
                    done = rec
            if time.monotonic() - last_poll >= 1.0:
                last_poll = time.monotonic()
                progress.poll()
                if lease.lost.is_set():
                    raise Fenced("lease lost")
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
                return "cancelled"
            if eof and child.poll() is not None:
                break
    except BaseException:
        _stop_child(child)
        raise
    finally:
        stderr.close()
        sel.close()
    rc = child.wait()
    if rc != 0 or done is None:
        log.error("job %s attempt %s: training exited with %s; stderr in %s", job_id, attempt, rc, work / "stderr.log")
        progress.finish(extra=[NewEvent("JobFailed", {"error": _error(
            "training_failed", f"the training process exited with status {rc}"
            + (f": {reason}" if (reason := _failure_reason(work / 'stderr.log')) else "")), "at": _now()},
            progress.metadata)])
        return "failed"
    model_id = _model_id(state)
    lineage = {
        "base_model": state.model, "job_id": job_id, "training_file": state.training_file,
        "training_file_sha256": won.training_file_sha256, "validation_file": state.validation_file,
        "hyperparameters": state.hyperparameters, "method": state.method, "seed": state.seed,
        "attempt": attempt, "final_metrics": last_metrics,
    }
    now = _now()
    progress.finish(
        extra=[NewEvent("JobSucceeded", {"fine_tuned_model": model_id, "trained_tokens": done["trained_tokens"],
                                         "artifact_path": artifact_rel, "at": now, "metrics": last_metrics},
                        progress.metadata)],
        others=[Append(model_stream(model_id), 0, [NewEvent("ModelRegistered", {
            "id": model_id, "project": state.project, "base_model": state.model, "backend": "hf-lora",
            "job_id": job_id, "artifact_path": artifact_rel, "created_at": now, "lineage": lineage},
            progress.metadata)])],
    )
    return model_id


_PATH = re.compile(r"(?:/[\w.@+-]+){2,}/?")


def _failure_reason(stderr_path: Path) -> str:
    """The last exception line of the training log, with server paths taken out: job errors are read by
    every key of the project, so no stack trace, file system layout or environment reaches them."""
    try:
        lines = stderr_path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    for line in reversed(lines[-200:]):
        m = re.match(r"^([A-Za-z_][\w.]*(?:Error|Exception|Interrupt)): ?(.*)$", line.strip())
        if m:
            return _PATH.sub("<path>", f"{m.group(1).rsplit('.', 1)[-1]}: {m.group(2)}")[:300]
    return ""


def _model_id(state) -> str:
    suffix = state.suffix or ""
    return f"ft:{state.model}:{state.project}:{suffix}:{state.id[-8:]}"


def _stop_child(child: subprocess.Popen) -> None:
    if child.poll() is None:
        child.terminate()
        try:
            child.wait(5)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


__all__ = ["run_training"]
