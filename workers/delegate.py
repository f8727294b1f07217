"""Delegated fine-tuning: a job on a provider that speaks OpenAI's fine-tuning API, mirrored into our log.

Two steps, neither holding a worker while the provider trains:

1. `submit` (inside `run_training`'s fenced attempt, with its lease): redacted copies of the files are
   uploaded, the remote job is created with `metadata={"tunelog_job": <our id>}`, and RemoteJobCreated is
   appended. A retry after a crash between the create and that append finds the remote job by its
   metadata and creates none (the files by their names, and uploads none).
2. `poll_remote` (an RQ job scheduled with `enqueue_in`, 2 s doubling to 60 s while nothing changes): the
   remote job's status, events and checkpoints are mirrored exactly once (each carries the provider's id,
   and the append is fenced by the stream's version), a cancel is passed on, and the outcome recorded
   (JobSucceeded + ModelRegistered, JobFailed with the provider's code and message, JobCancelled).

One poll chain per job: Redis holds the id of the job's next poll; a poll whose id is no longer there
stops (a cancel, or the dispatcher's repair after Redis lost the chain, starts a new one).
"""
from __future__ import annotations

import logging
import os
import signal
import time
from typing import Any

from domain.errors import ConcurrencyConflict
from domain.events import file_stream, job_stream, model_stream, project_stream
from domain.jobs import JobState, fold
from domain.projects import ProjectSettings, fold_settings
from eventlog import providers
from eventlog.bootstrap import Services, bootstrap
from eventlog.db import DatabaseUnavailable
from eventlog.polls import poll_bounds, poll_key, schedule_poll
from eventlog.providers import clean_number, clean_text
from eventlog.store import Append, NewEvent

log = logging.getLogger("tunelog.delegate")

SUBMIT_TRIES = 6  # transient errors while submitting: 2, 4, 8, 16, 32 s apart, then the job fails
MAX_EVENT_PAGES = 10  # x 100 events: MAX_EVENTS_PER_POLL; a hanging provider costs at most 12 calls of 15 s
MAX_EVENTS_PER_POLL = 1000  # a provider that resends everything with new ids cannot flood the log


def _now() -> int:
    return int(time.time())


def failpoint(name: str, attempt: int, suffix: str | None) -> None:
    """Crash tests (set by the operator's environment only): TUNELOG_FAILPOINTS="delegate.after_create@1:crash"
    kills this process (SIGKILL, as an OOM kill or a lost machine would) at that point of attempt 1 of jobs
    with suffix "crash" (attempt and suffix optional)."""
    for item in (os.environ.get("TUNELOG_FAILPOINTS") or "").split(","):
        point, _, rest = item.strip().partition("@")
        when, _, only = rest.partition(":")
        if point == name and (not when or when == str(attempt)) and (not only or only == suffix):
            log.error("failpoint %s (attempt %s): killing this process", name, attempt)
            os.kill(os.getpid(), signal.SIGKILL)


class JobError(Exception):
    """The provider's final answer (or ours): the job fails with this code and message."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code, self.message = code, message


def project_settings(svc: Services, project: str) -> ProjectSettings:
    return fold_settings(svc.store.read_stream(project_stream(project)))


def _provider(svc: Services, state: JobState) -> tuple[providers.Provider, str]:
    try:
        found = providers.load(svc.settings.data_dir).split(state.model)
    except providers.ProviderConfigError as e:
        raise JobError("provider_not_configured", str(e)) from None
    if found is None:
        raise JobError("provider_not_configured", f"no provider is configured for {state.model!r}")
    return found


def _client(provider: providers.Provider):
    try:
        return provider.client()
    except providers.ProviderConfigError as e:
        raise JobError("provider_not_configured", str(e)) from None


def _file(svc: Services, file_id: str) -> tuple[bytes, str]:
    uploaded = next(e for e in svc.store.read_stream(file_stream(file_id)) if e.type == "FileUploaded")
    with svc.pool.connection() as c:
        row = c.execute("SELECT content FROM blobs WHERE sha256 = %s", (uploaded.data["sha256"],)).fetchone()
    return bytes(row["content"]), (uploaded.data.get("stats") or {}).get("format") or "chat"


# ---- 1. submit ------------------------------------------------------------------------------------------
def _remote_params(state: JobState, files: dict[str, str | None], remote_model: str) -> dict[str, Any]:
    """The create request: OpenAI's fields only; hyperparameters the client left "auto" are left to the
    provider (as OpenAI's own API does)."""
    mtype = state.method.get("type", "supervised")
    given = {k: v for k, v in state.hyperparameters.items() if v != "auto"}
    params: dict[str, Any] = {"model": remote_model, "training_file": files["training"],
                              "metadata": {"tunelog_job": state.id}, "seed": state.seed,
                              "method": {"type": mtype, mtype: {"hyperparameters": given}}}
    if files.get("validation"):
        params["validation_file"] = files["validation"]
    if state.suffix:
        params["suffix"] = state.suffix
    return params


def find_remote_job(client, job_id: str):
    """The remote job an earlier attempt created for `job_id`, by its metadata (the provider filters on it;
    one that ignores the filter is checked here too)."""
    page = client.fine_tuning.jobs.list(metadata={"tunelog_job": job_id}, limit=100)
    for job in page.data:
        if (job.metadata or {}).get("tunelog_job") == job_id:
            return job
    return None


def _find_file(client, name: str):
    for i, f in enumerate(client.files.list(purpose="fine-tune")):  # the SDK pages on
        if f.filename == name:
            return f
        if i >= 2000:
            break
    return None


def _with_retries(progress, what: str, fn):
    """`fn()` with backoff on the provider's transient errors (each recorded as a message event); a final
    error raises JobError with the provider's code and message."""
    delay = 2.0
    for attempt in range(1, SUBMIT_TRIES + 1):
        try:
            return fn()
        except JobError:
            raise
        except Exception as e:  # noqa: BLE001 - sorted by classify()
            transient, code, message = providers.classify(e)
            if not transient or attempt == SUBMIT_TRIES:
                raise JobError(code, f"{what}: {message}" + (f" (gave up after {attempt} tries)" if transient
                                                              else "")) from None
            progress.add("JobMessage", {"level": "warn", "message": _scrubbed(
                f"{what}: {message}; retrying in {delay:.0f} s (try {attempt} of {SUBMIT_TRIES})", bootstrap()),
                "at": _now()}, urgent=True)
            time.sleep(delay)
            delay *= 2
    raise AssertionError("unreachable")


def submit(svc: Services, won, progress, lease) -> str:
    """Create (or find) the remote job for this attempt and record it; then polls follow it."""
    state = won.state
    try:
        provider, remote_model = _provider(svc, state)
        if project_settings(svc, state.project).local_only:
            raise JobError("local_only", "this project is local-only: no data may leave for an external provider")
        client = _client(provider)
        existing = _with_retries(progress, f"Provider {provider.name}: looking for this job's remote job",
                                 lambda: find_remote_job(client, state.id))
        if existing is None:
            files = _upload(svc, state, provider, client, progress)
            progress.poll()
            if progress.cancel_requested:
                progress.finish(extra=[NewEvent("JobCancelled", {"reason": "cancelled before the remote job was "
                                                                 "created", "at": _now()}, progress.metadata)])
                return "cancelled"
            if lease.lost.is_set():  # cut off from Postgres: the next attempt may be creating it right now
                return "fenced"
            failpoint("delegate.before_create", won.attempt, state.suffix)
            remote = _with_retries(progress, f"Provider {provider.name}: creating the fine-tuning job",
                                   lambda: client.fine_tuning.jobs.create(**_remote_params(state, files,
                                                                                            remote_model)))
            failpoint("delegate.after_create", won.attempt, state.suffix)
        else:
            remote, files = existing, {"training": existing.training_file,
                                       "validation": existing.validation_file}
    except JobError as e:
        progress.finish(extra=[NewEvent("JobFailed", {"error": {"code": e.code, "message": _scrubbed(e.message, svc),
                                                                "param": None}, "at": _now()}, progress.metadata)])
        return "failed"
    if lease.lost.is_set():  # a later attempt may own the job now: it finds this remote job by its metadata
        return "fenced"
    progress.finish(extra=[NewEvent("RemoteJobCreated", {
        "provider": provider.name, "remote_job_id": clean_text(remote.id, 200), "remote_model": remote_model,
        "remote_status": clean_text(remote.status, 32), "remote_files": files, "found_existing": existing is not None,
        "at": _now()}, progress.metadata)])
    try:
        schedule_poll(svc, state.id, poll_bounds()[0], replace=True)
    except Exception:  # noqa: BLE001 - Redis away: the job is recorded; the dispatcher starts its polls
        log.exception("job %s: could not schedule its first poll; the dispatcher will", state.id)
    return remote.id


def _scrubbed(message: str, svc: Services) -> str:
    """A message for the log (read by every key of the project): no provider's key, nor anything shaped like
    one, nor the server's paths."""
    from workers.jobs import _scrub

    try:
        for provider in providers.load(svc.settings.data_dir).providers.values():
            message = provider.scrub(message)
    except providers.ProviderConfigError:
        message = providers.Provider("none", "").scrub(message)
    return _scrub(message, svc.settings)


def _upload(svc: Services, state: JobState, provider, client, progress) -> dict[str, str | None]:
    """The training and validation files, redacted, uploaded under names that carry our job id (a retry
    reuses an upload of an earlier attempt instead of uploading again)."""
    from domain.redaction import redactor_for

    redactor = redactor_for(tuple(project_settings(svc, state.project).pii_roster))
    files: dict[str, str | None] = {"training": None, "validation": None}
    for kind, file_id in (("training", state.training_file), ("validation", state.validation_file)):
        if not file_id:
            continue
        content, fmt = _file(svc, file_id)
        redacted, counts = redactor.redact_jsonl(content, fmt)
        progress.add("DataRedacted", {"file": file_id, **counts.to_dict(), "at": _now()}, urgent=True)
        name = f"tunelog-{state.id}-{kind}.jsonl"
        found = _with_retries(progress, f"Provider {provider.name}: looking for an earlier upload",
                              lambda name=name: _find_file(client, name))
        if found is None:
            found = _with_retries(progress, f"Provider {provider.name}: uploading the {kind} file",
                                  lambda name=name, data=redacted: client.files.create(file=(name, data),
                                                                                       purpose="fine-tune"))
        files[kind] = found.id
    return files


# ---- 2. follow --------------------------------------------------------------------------------------------
def poll_remote(job_id: str, delay: float = 0.0, failures: int = 0) -> str:
    from rq import get_current_job

    svc = bootstrap(pool_size=2)
    me = get_current_job()
    me_id = me.id if me else None
    r = svc.redis()
    held = r.get(poll_key(job_id))
    if me_id is not None and (held.decode() if held else None) != me_id:
        return "superseded"
    lo, hi = poll_bounds()
    for _ in range(5):
        events = svc.store.read_stream(job_stream(job_id))
        if not events:
            return "unknown job"
        state = fold([(e.type, e.data, e.stream_version) for e in events])
        if state.terminal or state.remote is None:
            r.delete(poll_key(job_id))
            return state.status
        meta = {"actor": "provider-poll", "correlation_id": job_id,
                "causation_id": str(events[-1].global_position)}
        try:
            new, others = observe(svc, state, events)
        except Exception as e:  # noqa: BLE001 - sorted by classify()
            if isinstance(e, JobError):
                # a provider taken out of the configuration (or its key) while its jobs run is the operator's
                # to put back: the job waits for it (the remote job goes on meanwhile), it does not fail
                transient, message = e.code == "provider_not_configured", e.message
                code = e.code
            else:
                transient, code, message = providers.classify(e)
            if not transient:
                new, others = [("JobFailed", {"error": {"code": code, "message": _scrubbed(message, svc),
                                                        "param": None}, "at": _now()})], []
            else:
                failures += 1
                next_delay = min(max(delay, lo) * 2, hi)
                if failures & (failures - 1) == 0:  # the 1st, 2nd, 4th, 8th... of a streak: bounded noise
                    try:
                        _append(svc, job_id, state.version, [("JobMessage", {
                            "level": "warn", "message": _scrubbed(f"Provider {state.remote['provider']}: {message}; "
                                                                  f"polling again in {next_delay:.0f} s", svc),
                            "at": _now()})], [], meta)
                    except ConcurrencyConflict:
                        pass  # the next poll looks again
                schedule_poll(svc, job_id, next_delay, failures, current=me_id) if me_id else None
                return "transient error"
        if not new and not others:
            if me_id:
                schedule_poll(svc, job_id, min(max(delay, lo) * 2, hi), current=me_id)
            return "unchanged"
        try:
            _append(svc, job_id, state.version, new, others, meta)
        except ConcurrencyConflict as e:
            if e.stream_id == job_stream(job_id):
                continue  # someone appended (a cancel request, a twin poll): look again
            # the model id the provider named is taken (another stream has it): the job cannot be registered
            _fail(svc, job_id, state.version, meta, "model_id_taken", f"the provider named the fine-tuned model "
                  f"{e.stream_id[6:]!r}, which is registered already")
            r.delete(poll_key(job_id))
            return "ended"
        except DatabaseUnavailable:
            raise  # RQ records the failure; the dispatcher restarts the chain when Postgres is back
        except Exception:  # noqa: BLE001 - what the provider sent cannot be stored, even cleaned: never loop on it
            log.exception("job %s: the provider's data could not be recorded", job_id)
            _fail(svc, job_id, state.version, meta, "provider_bad_data",
                  "the provider's answer could not be recorded (see the worker log)")
            r.delete(poll_key(job_id))
            return "ended"
        if any(t in ("JobSucceeded", "JobFailed", "JobCancelled") for t, _ in new):
            r.delete(poll_key(job_id))
            return "ended"
        if me_id:
            schedule_poll(svc, job_id, lo, current=me_id)
        return f"mirrored {len(new)} event(s)"
    if me_id:
        schedule_poll(svc, job_id, lo, current=me_id)
    return "busy stream"


def _append(svc: Services, job_id: str, version: int, new: list[tuple[str, dict]], others: list[Append],
            meta: dict[str, Any]) -> None:
    svc.store.append_many([Append(job_stream(job_id), version, [NewEvent(t, d, meta) for t, d in new]), *others])


def _fail(svc: Services, job_id: str, version: int, meta: dict[str, Any], code: str, message: str) -> None:
    try:
        _append(svc, job_id, version, [("JobFailed", {"error": {"code": code, "message": message, "param": None},
                                                      "at": _now()})], [], meta)
    except ConcurrencyConflict:
        pass  # it changed meanwhile: the next poll (or the dispatcher's repair) decides again


def _metrics(data: dict[str, Any], at: int, remote_id: str) -> dict[str, Any]:
    step = int(clean_number(data.get("step")) or 0)
    out = {"step": step, "total_steps": int(clean_number(data.get("total_steps")) or step),
           "epoch": clean_number(data.get("epoch")) or 0.0, "train_loss": clean_number(data.get("train_loss")),
           "learning_rate": clean_number(data.get("learning_rate")) or 0.0, "at": at, "remote_id": remote_id}
    for k in ("valid_loss", "train_mean_token_accuracy", "valid_mean_token_accuracy", "full_valid_loss",
              "full_valid_mean_token_accuracy", "tokens_per_second"):
        if clean_number(data.get(k)) is not None:
            out[k] = clean_number(data[k])
    return out


def observe(svc: Services, state: JobState, events) -> tuple[list[tuple[str, dict]], list[Append]]:
    """What the provider says that our log does not yet: the events to append (and other streams' appends)."""
    provider, _ = _provider(svc, state)
    client = _client(provider).with_options(timeout=15.0)  # a poll is short: a hanging provider must not hold it
    remote_id = state.remote["remote_job_id"]
    seen = {e.data.get("remote_id") for e in events if e.data.get("remote_id")}
    remote_status = state.remote.get("remote_status")
    if state.cancel_requested and remote_status not in ("succeeded", "failed", "cancelled"):
        import openai

        try:
            job = client.fine_tuning.jobs.cancel(remote_id)
        except openai.APIStatusError as e:  # it ended meanwhile (400, or 409 from a tunelog): ask how
            if e.status_code >= 500 or e.status_code == 429:
                raise
            job = client.fine_tuning.jobs.retrieve(remote_id)
    else:
        job = client.fine_tuning.jobs.retrieve(remote_id)
    fresh: list[Any] = []
    page = client.fine_tuning.jobs.list_events(remote_id, limit=100)
    for _ in range(MAX_EVENT_PAGES):
        stop = False
        for ev in page.data:  # newest first: stop at the first one mirrored already
            if ev.id in seen:
                stop = True
                break
            fresh.append(ev)
        if stop or not page.has_more or not page.data:
            break
        page = client.fine_tuning.jobs.list_events(remote_id, limit=100, after=page.data[-1].id)
    new: list[tuple[str, dict]] = []
    scrub = provider.scrub
    last_metrics: dict[str, Any] = {}
    for ev in reversed(fresh[:MAX_EVENTS_PER_POLL]):  # what the provider sends is cleaned and bounded
        data = ev.data if isinstance(ev.data, dict) else (ev.data.model_dump() if ev.data is not None else {})
        at = int(clean_number(ev.created_at) or _now())
        ev_id = clean_text(ev.id, 200)
        if ev.type == "metrics" and isinstance(clean_number(data.get("step")), (int, float)):
            last_metrics = _metrics(data, at, ev_id)
            new.append(("JobProgressed", last_metrics))
        else:
            new.append(("JobMessage", {"level": ev.level if ev.level in ("info", "warn", "error") else "info",
                                       "message": scrub(clean_text(f"[{provider.name}] {ev.message}", 2000)),
                                       "at": at, "remote_id": ev_id}))
    for ckpt in reversed(client.fine_tuning.jobs.checkpoints.list(remote_id, limit=100).data[:100]):
        ckpt_id = clean_text(ckpt.id, 200)
        if ckpt_id in seen:
            continue
        step = int(clean_number(ckpt.step_number) or 0)
        metrics = ckpt.metrics.model_dump(exclude_none=True) if ckpt.metrics else {}
        new.append(("CheckpointSaved", {
            "id": f"ftckpt-{state.id[6:]}-r{step}", "remote_id": ckpt_id, "attempt": state.attempt,
            "job_id": state.id, "project": state.project, "step": step, "path": "",
            "fine_tuned_model_checkpoint": f"{provider.name}/{clean_text(ckpt.fine_tuned_model_checkpoint, 180)}",
            "metrics": {clean_text(k, 64): clean_number(v) for k, v in list(metrics.items())[:32]},
            "at": int(clean_number(ckpt.created_at) or _now())}))
    others: list[Append] = []
    now = _now()
    if job.status != remote_status and job.status in ("validating_files", "queued", "running", "pausing", "paused"):
        finish = clean_number(job.estimated_finish)
        new.append(("RemoteJobUpdated", {"remote_status": job.status, "at": now,
                                         "estimated_finish": int(finish) if finish is not None else None,
                                         "trained_tokens": clean_number(job.trained_tokens)}))
    if job.status == "succeeded":
        remote_model = job.fine_tuned_model
        if not isinstance(remote_model, str) or not 0 < len(remote_model) <= 180 or clean_text(remote_model) != \
                remote_model:
            raise JobError("provider_bad_data", "the provider reported success without a usable fine_tuned_model")
        model_id = f"{provider.name}/{remote_model}"
        tokens = int(clean_number(job.trained_tokens) or 0)
        price = providers.load(svc.settings.data_dir).price(state.model)
        if price is not None:
            actual = round(tokens * price / 1e6, 6)
            new.append(("JobMessage", {"level": "info", "message": f"Trained {tokens} tokens at the provider: about "
                                       f"${actual:.4f} at ${price}/1M tokens", "at": now}))
            others += _budget_correction(events, state, actual, now)
        final = {k: v for k, v in last_metrics.items() if k not in ("at", "remote_id")} or \
            _last_metrics(events)
        new.append(("JobSucceeded", {"fine_tuned_model": model_id, "trained_tokens": tokens, "artifact_path": "",
                                     "at": now, "metrics": final}))
        created = next(e for e in events if e.type == "JobCreated").data
        redactions = list({e.data["file"]: {k: e.data[k] for k in ("file", "emails", "phones", "names")}
                           for e in events if e.type == "DataRedacted"}.values())  # a retried upload: counted once
        lineage = {
            "base_model": state.model, "job_id": state.id, "provider": provider.name,
            "remote_job_id": remote_id, "remote_model": state.remote.get("remote_model"),
            "remote_fine_tuned_model": job.fine_tuned_model, "training_file": state.training_file,
            "training_file_sha256": created.get("training_file_sha256"), "validation_file": state.validation_file,
            "validation_file_sha256": created.get("validation_file_sha256"), "hyperparameters": state.hyperparameters,
            "method": state.method, "seed": state.seed, "rerun_of": state.rerun_of, "redactions": redactions,
            "final_metrics": final}
        others.append(Append(model_stream(model_id), 0, [NewEvent("ModelRegistered", {
            "id": model_id, "project": state.project, "base_model": state.model, "backend": "provider",
            "job_id": state.id, "artifact_path": None, "created_at": now, "lineage": lineage},
            {"actor": "provider-poll", "correlation_id": state.id})]))
    elif job.status == "failed":
        err = job.error
        new.append(("JobFailed", {"error": {
            "code": clean_text(err.code, 64) if err and err.code else "provider_job_failed",
            "message": scrub(clean_text("the provider's job failed: " + (
                err.message if err and isinstance(err.message, str) else "no reason"), 1000)),
            "param": clean_text(err.param, 200) if err and err.param else None}, "at": now}))
    elif job.status == "cancelled":
        new.append(("JobCancelled", {"reason": "cancelled by request" if state.cancel_requested
                                     else f"cancelled at provider {provider.name}", "at": now}))
    return new, others


def _budget_correction(events, state: JobState, actual: float, now: int) -> list[Append]:
    """The budget was charged the estimate at create time; the provider's trained tokens tell the real cost:
    the difference is charged (or credited) to the same month's budget."""
    from domain.events import budget_stream

    created = next(e for e in events if e.type == "JobCreated")
    estimate = next((e.data.get("estimated_cost_usd") for e in events if e.type == "CostEstimated"), None)
    if estimate is None or abs(actual - estimate) < 1e-9:
        return []
    month = time.strftime("%Y-%m", time.gmtime(created.data["created_at"]))
    return [Append(budget_stream(state.project, month), None, [NewEvent("BudgetCharged", {
        "job_id": state.id, "amount_usd": round(actual - estimate, 6), "at": now, "project": state.project,
        "correction": True}, {"actor": "provider-poll", "correlation_id": state.id})])]


def _last_metrics(events) -> dict[str, Any]:
    for e in reversed(events):
        if e.type == "JobProgressed":
            return {k: v for k, v in e.data.items() if k not in ("at", "remote_id") and v is not None}
    return {}


__all__ = ["submit", "poll_remote", "schedule_poll", "find_remote_job"]
