"""The fine-tuning job's state machine: `evolve` folds events into state; `decide_*` choose events.

Statuses follow OpenAI exactly: validating_files, queued, running, succeeded, failed, cancelled.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

STATUSES = ("validating_files", "queued", "running", "succeeded", "failed", "cancelled")
TERMINAL = frozenset({"succeeded", "failed", "cancelled"})
# Event types that change nothing in JobState but its version (evolve below agrees: no branch for them).
VERSION_ONLY = frozenset({"JobProgressed", "JobMessage", "CheckpointSaved"})


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

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL


def evolve(state: JobState, type_: str, data: dict[str, Any], version: int) -> JobState:
    """Apply one stored event. Unknown types only advance the version (forward compatible)."""
    s = state
    if type_ == "JobCreated":
        s = JobState(
            id=data["id"], project=data["project"], model=data["model"], backend=data["backend"],
            queue=data["queue"], status="queued", training_file=data["training_file"],
            validation_file=data.get("validation_file"), hyperparameters=data["hyperparameters"],
            method=data["method"], suffix=data.get("suffix"), seed=data.get("seed"),
            metadata=data.get("metadata"), created_at=data["created_at"],
        )
    elif type_ == "JobStarted":
        s = replace(s, status="running", attempt=data["attempt"],
                    started_at=s.started_at or data["started_at"])
    elif type_ == "CancelRequested":
        s = replace(s, cancel_requested=True)
    elif type_ == "JobCancelled":
        s = replace(s, status="cancelled", finished_at=data["at"])
    elif type_ == "JobAttemptLost":
        if data["requeued"]:
            s = replace(s, status="queued", attempt=data["attempt"] + 1)
    elif type_ == "JobFailed":
        s = replace(s, status="failed", error=data["error"], finished_at=data["at"])
    elif type_ == "JobSucceeded":
        s = replace(s, status="succeeded", fine_tuned_model=data["fine_tuned_model"],
                    trained_tokens=data["trained_tokens"], finished_at=data["at"])
    return replace(s, version=version)


def fold(events: list[tuple[str, dict[str, Any], int]]) -> JobState:
    s = JobState()
    for type_, data, version in events:
        s = evolve(s, type_, data, version)
    return s


def decide_lost_attempt(state: JobState, max_attempts: int, reason: str, now: int) -> list[tuple[str, dict]]:
    """A running attempt was lost: re-queue it, or fail the job once the retry limit is reached."""
    if state.status != "running":
        return []
    requeue = state.attempt < max_attempts and not state.cancel_requested
    events: list[tuple[str, dict]] = [
        ("JobAttemptLost", {"attempt": state.attempt, "reason": reason, "requeued": requeue, "at": now})
    ]
    if state.cancel_requested:
        events.append(("JobCancelled", {"reason": f"cancelled (its worker was lost: {reason})", "at": now}))
    elif not requeue:
        events.append(("JobFailed", {"error": {
            "code": "worker_lost",
            "message": f"the worker running this job was lost {state.attempt} time(s) ({reason}); "
                       f"giving up after {max_attempts} attempts",
            "param": None}, "at": now}))
    return events
