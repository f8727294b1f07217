"""Cancel, pause and resume a fine-tuning job (OpenAI's `POST /v1/fine_tuning/jobs/{id}/cancel`, `/pause`
and `/resume`): each reads the job, decides, and appends fenced by the stream's version.

Cancel: a queued or paused job is cancelled at once; a running one is stopped by its worker (or by the
dispatcher, if the worker is gone) within seconds.

Pause: a running job becomes `pausing`; its worker saves a checkpoint at the next step boundary, stops
and appends JobPaused (the worker is free again). A queued job is paused at once. Resume: a paused job
is queued as a new attempt, which continues from the job's latest checkpoint (weights, optimizer,
scheduler, random state and data position).
"""
from __future__ import annotations

from collections.abc import Callable

from flask import Blueprint, g, jsonify

from api.auth import require
from api.common import Idempotent, append_and_respond, metadata, now, svc
from api.openai_compat import _get_job, job_object
from domain.errors import ConcurrencyConflict, Conflict
from domain.events import job_stream
from domain.jobs import JobState, evolve, fold
from eventlog.store import NewEvent

bp = Blueprint("job_control", __name__, url_prefix="/v1")


def _decide(job_id: str, op: str, decide: Callable[[JobState], list[tuple[str, dict]] | None]):
    """Read the job, let `decide` choose events (None: answer the job as it is), append them fenced by the
    stream's version; decide again if the worker appended meanwhile."""
    store = svc().store
    idem = Idempotent({"job": job_id, "op": op})  # one Idempotency-Key reused for another command: 422
    for _ in range(10):
        events = store.read_stream(job_stream(job_id))
        state = fold([(e.type, e.data, e.stream_version) for e in events])
        chosen = decide(state)
        if not chosen:
            return jsonify(job_object(state))
        meta = metadata(job_id)
        new = [NewEvent(t, d, meta) for t, d in chosen]
        after = state
        for i, e in enumerate(new):
            after = evolve(after, e.type, e.data, state.version + i + 1)
        try:
            return append_and_respond(idem, 200, job_object(after), lambda cmd, v=state.version, new=new: store.append(
                job_stream(job_id), v, new, command=cmd))
        except ConcurrencyConflict:
            continue
    raise Conflict(f"job {job_id} is changing too fast; try again", code="concurrency_conflict")


@bp.post("/fine_tuning/jobs/<job_id>/cancel")
def cancel_job(job_id: str):
    require("admin", "trainer")
    _get_job(job_id)  # 404 for another project's job

    def decide(state: JobState):
        if state.status in ("succeeded", "failed"):
            raise Conflict(f"job {job_id} has already {state.status}; only a queued or running job can be "
                           "cancelled", param="fine_tuning_job_id", code="job_not_cancellable")
        if state.status == "cancelled" or (state.cancel_requested and state.status not in ("queued", "paused")):
            return None
        asked = ("CancelRequested", {"actor": g.principal.key_id, "at": now()})
        # nobody runs it: cancelled at once (a delegated job followed at its provider is cancelled there first)
        if state.status in ("queued", "paused") and state.remote is None:
            return [asked, ("JobCancelled", {"reason": "cancelled before it started" if state.status == "queued"
                                             else "cancelled while paused", "at": now()})]
        return [asked]

    return _decide(job_id, "cancel", decide)


@bp.post("/fine_tuning/jobs/<job_id>/pause")
def pause_job(job_id: str):
    require("admin", "trainer")
    _get_job(job_id)  # 404 for another project's job

    def decide(state: JobState):
        if state.delegated:
            raise Conflict(f"job {job_id} is trained by provider {state.model.split('/')[0]!r}; a delegated job "
                           "cannot be paused (cancel it, or re-run its spec later)", param="fine_tuning_job_id",
                           code="job_not_pausable")
        if state.status in ("pausing", "paused"):
            return None
        if state.status not in ("queued", "running"):
            raise Conflict(f"job {job_id} is {state.status}; only a queued or running job can be paused",
                           param="fine_tuning_job_id", code="job_not_pausable")
        asked = ("PauseRequested", {"actor": g.principal.key_id, "at": now()})
        if state.status == "queued":  # nothing runs yet: paused at once, nothing to save
            return [asked, ("JobPaused", {"step": None, "checkpoint": None, "at": now(),
                                          "reason": "paused before it started"})]
        return [asked]

    return _decide(job_id, "pause", decide)


@bp.post("/fine_tuning/jobs/<job_id>/resume")
def resume_job(job_id: str):
    require("admin", "trainer")
    _get_job(job_id)

    def decide(state: JobState):
        if state.delegated:
            raise Conflict(f"job {job_id} is trained by provider {state.model.split('/')[0]!r}; a delegated job "
                           "cannot be paused or resumed here", param="fine_tuning_job_id", code="job_not_resumable")
        if state.status == "paused":
            return [("JobResumed", {"actor": g.principal.key_id, "at": now()})]
        if state.status in ("queued", "running") and not state.pause_requested:
            return None  # resumed already: a retry of the same request answers the same
        raise Conflict(f"job {job_id} is {state.status}; only a paused job can be resumed",
                       param="fine_tuning_job_id", code="job_not_resumable")

    return _decide(job_id, "resume", decide)
