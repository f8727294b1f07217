"""The fine-tuning job's state machine: `evolve` folds events into state; `decide_*` choose events.

Statuses follow OpenAI exactly: validating_files, queued, running, pausing, paused, succeeded, failed,
cancelled. A pause saves a checkpoint and frees the worker; a resume queues a new attempt that continues
from the job's latest checkpoint (as does an attempt re-queued after its worker was lost).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

STATUSES = ("validating_files", "queued", "running", "pausing", "paused", "succeeded", "failed", "cancelled")
TERMINAL = frozenset({"succeeded", "failed", "cancelled"})
# Event types that change nothing in JobState but its version (evolve below agrees: no branch for them).
VERSION_ONLY = frozenset({"JobMessage", "CheckpointSaved", "CheckpointDeleted", "CostEstimated", "DataRedacted"})
# a delegated job's remote statuses our status follows (the terminal ones come as JobSucceeded/Failed/Cancelled)
REMOTE_FOLLOWED = ("validating_files", "queued", "running", "pausing", "paused")
# JobProgressed changes only `estimated_finish` (and the version): the projection takes a fast path for it.


@dataclass(frozen=True)
class JobState:
    id: str = ""
    project: str = ""
    model: str = ""
    backend: str = ""
    queue: str = "cpu"
    status: str = "validating_files"
    training_file: str = ""
    validation_file: str | None = None
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    method: dict[str, Any] = field(default_factory=dict)
    suffix: str | None = None
    seed: int | None = None
    metadata: dict[str, str] | None = None
    created_at: int = 0
    started_at: int | None = None
    finished_at: int | None = None
    fine_tuned_model: str | None = None
    trained_tokens: int | None = None
    error: dict[str, Any] | None = None
    attempt: int = 1
    cancel_requested: bool = False
    version: int = 0
    estimated_finish: int | None = None  # unix seconds, from measured step times while running
    pause_requested: bool = False
    lost_attempts: int = 0  # attempts whose worker was lost: the retry limit counts these only
    # a delegated job's remote job, once created: {provider, remote_job_id, remote_model, remote_status}.
    # From then on it is followed by scheduled polls, not by a worker holding a lease.
    remote: dict[str, Any] | None = None
    rerun_of: str | None = None

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    @property
    def delegated(self) -> bool:
        return self.backend == "provider"


def evolve(state: JobState, type_: str, data: dict[str, Any], version: int) -> JobState:
    """Apply one stored event. Unknown types only advance the version (forward compatible)."""
    s = state
    if type_ == "JobCreated":
        s = JobState(
            id=data["id"], project=data["project"], model=data["model"], backend=data["backend"],
            queue=data["queue"], status="queued", training_file=data["training_file"],
            validation_file=data.get("validation_file"), hyperparameters=data["hyperparameters"],
            method=data["method"], suffix=data.get("suffix"), seed=data.get("seed"),
            metadata=data.get("metadata"), created_at=data["created_at"], rerun_of=data.get("rerun_of"),
        )
    elif type_ == "JobStarted":
        s = replace(s, status="pausing" if s.pause_requested else "running", attempt=data["attempt"],
                    started_at=s.started_at or data["started_at"], estimated_finish=None)
    elif type_ == "RemoteJobCreated":
        remote = {k: data[k] for k in ("provider", "remote_job_id", "remote_model", "remote_status")}
        s = replace(s, remote=remote, status=_followed(data["remote_status"], s.status))
    elif type_ == "RemoteJobUpdated":
        s = replace(s, remote={**(s.remote or {}), "remote_status": data["remote_status"]},
                    status=_followed(data["remote_status"], s.status),
                    estimated_finish=data.get("estimated_finish"))
    elif type_ == "JobProgressed":
        if data.get("estimated_finish") is not None:
            s = replace(s, estimated_finish=data["estimated_finish"])
    elif type_ == "CancelRequested":
        s = replace(s, cancel_requested=True)
    elif type_ == "JobCancelled":
        s = replace(s, status="cancelled", finished_at=data["at"], estimated_finish=None)
    elif type_ == "PauseRequested":
        s = replace(s, pause_requested=True, status="pausing" if s.status == "running" else s.status)
    elif type_ == "JobPaused":
        s = replace(s, status="paused", pause_requested=False, estimated_finish=None)
    elif type_ == "JobResumed":
        s = replace(s, status="queued", attempt=s.attempt + 1, pause_requested=False)
    elif type_ == "JobAttemptLost":
        s = replace(s, lost_attempts=s.lost_attempts + 1, estimated_finish=None)
        if data["requeued"]:
            s = replace(s, status="queued", attempt=data["attempt"] + 1)
    elif type_ == "JobFailed":
        s = replace(s, status="failed", error=data["error"], finished_at=data["at"], estimated_finish=None)
    elif type_ == "JobSucceeded":
        s = replace(s, status="succeeded", fine_tuned_model=data["fine_tuned_model"],
                    trained_tokens=data["trained_tokens"], finished_at=data["at"], estimated_finish=None)
    return replace(s, version=version)


def _followed(remote_status: str, current: str) -> str:
    return remote_status if remote_status in REMOTE_FOLLOWED else current


def fold(events: list[tuple[str, dict[str, Any], int]]) -> JobState:
    s = JobState()
    for type_, data, version in events:
        s = evolve(s, type_, data, version)
    return s


def decide_lost_attempt(state: JobState, max_attempts: int, reason: str, now: int) -> list[tuple[str, dict]]:
    """A running attempt was lost: re-queue it (it resumes from the latest checkpoint), or fail the job
    once the retry limit is reached. A job being paused is paused instead (its latest checkpoint is where
    a resume continues); a job being cancelled is cancelled."""
    if state.status not in ("running", "pausing"):
        return []
    lost = state.lost_attempts + 1
    requeue = lost < max_attempts and not state.cancel_requested and not state.pause_requested
    events: list[tuple[str, dict]] = [
        ("JobAttemptLost", {"attempt": state.attempt, "reason": reason, "requeued": requeue, "at": now})
    ]
    if state.cancel_requested:
        events.append(("JobCancelled", {"reason": f"cancelled (its worker was lost: {reason})", "at": now}))
    elif state.pause_requested:
        events.append(("JobPaused", {"step": None, "checkpoint": None,
                                     "reason": f"paused (its worker was lost: {reason}); a resume continues from "
                                               "the latest checkpoint", "at": now}))
    elif not requeue:
        events.append(("JobFailed", {"error": {
            "code": "worker_lost",
            "message": f"the worker running this job was lost {lost} time(s) ({reason}); "
                       f"giving up after {max_attempts} attempts",
            "param": None}, "at": now}))
    return events
