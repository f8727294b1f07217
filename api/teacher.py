"""The teacher's loop (issue 12): the review queue of suggested corrections (list, reject; approve is in
api/chat.py), and what a fine-tuning job would take before it is started (an estimate, appending nothing)."""
from __future__ import annotations

import functools
import math
import os
import statistics
from typing import Any

from flask import Blueprint, g, jsonify, request

from api.auth import require
from api.common import Idempotent, append_and_respond, json_body, list_page, metadata, now, owned, page_limit, svc
from api.openai_compat import query_arg, storable, valid_id
from domain.errors import NotFound, ValidationError
from domain.events import FeedbackRejected, chat_stream
from eventlog.store import NewEvent

bp = Blueprint("teacher", __name__, url_prefix="/api")

REVIEW_STATUSES = {
    # a suggested correction nobody has decided on yet
    "pending": " AND f.corrected_answer IS NOT NULL AND NOT f.approved AND NOT f.rejected",
    "approved": " AND f.approved",
    "rejected": " AND f.rejected",
    "all": "",
}
REASON_MAX_CHARS = 2000
# what a local job is assumed to train at when this project has no measured job on the model yet: on the cpu
# queue, LoRA on the bundled 135M model measured 40-60 tokens/s on a 2-core box (docs/bench.md); on a GPU, a
# deliberately rough order of magnitude
DEFAULT_TOKENS_PER_SECOND = {"cpu": 50.0, "gpu": 3000.0}
STARTUP_SECONDS = 20  # loading the model and tokenizing the file, before the first step
MEASURED_JOBS = 5  # the project's latest local jobs on the same model whose throughput is used
DSPY_SECONDS_PER_CALL = {"local": 1.5, "provider": 2.0}  # one LM call of a program, served or delegated


# ---- review -------------------------------------------------------------------------------------------
def _answer(row: dict[str, Any]) -> str | None:
    """The model's answer the correction replaces: the stored answer, else the assistant message that ends the
    conversation (a project that stores no chat text keeps only what the correction carried). An earlier
    assistant turn is no answer replaced: a training file built from feedback trains it as it is."""
    if row.get("stored_answer") is not None:
        return row["stored_answer"]
    for m in reversed(row.get("messages") or []):
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant"):
            continue  # as api/chat.py builds the file: other roles are left out of it
        if m.get("role") == "assistant" and isinstance(m.get("content"), str):
            return m["content"]
        return None
    return None


def feedback_object(row: dict[str, Any]) -> dict[str, Any]:
    return {"object": "chat.feedback", "id": row["id"], "chat_id": row["chat_id"], "model": row.get("model"),
            "rating": row["rating"], "comment": row["comment"], "corrected_answer": row["corrected_answer"],
            "messages": row["messages"], "answer": _answer(row), "approved": row["approved"],
            "rejected": row["rejected"], "reviewed_by": row["reviewed_by"], "reviewed_at": row["reviewed_at"],
            "review_reason": row["review_reason"], "actor": row["actor"], "created_at": row["created_at"]}


@bp.get("/chat/feedback")
def list_feedback():
    """This project's feedback, newest first: `status` pending (a correction nobody decided on), approved,
    rejected or all (the default); `after` a feedback id (the last of the previous page)."""
    p = require("admin", "trainer")  # pupils' conversations and teachers' corrections
    status = query_arg("status") or "all"
    if status not in REVIEW_STATUSES:
        raise ValidationError(f"status must be one of {', '.join(REVIEW_STATUSES)}, got {status!r}", param="status")
    limit = page_limit(default=20, maximum=100)
    sql = ("SELECT f.*, a.answer AS stored_answer, a.model FROM chat_feedback f LEFT JOIN chat_answers a "
           "ON a.id = f.chat_id AND a.project = f.project WHERE f.project = %s" + REVIEW_STATUSES[status])
    params: list[Any] = [p.project]
    after = query_arg("after")
    if after:  # another project's id is no cursor here: it tells nothing of that project
        sql += " AND f.seq < coalesce((SELECT seq FROM chat_feedback WHERE id = %s AND project = %s), 0)"
        params += [after, p.project]
    sql += " ORDER BY f.seq DESC LIMIT %s"
    params.append(limit + 1)
    with svc().pool.connection() as c:
        rows = c.execute(sql, params).fetchall()
    return list_page(rows, limit, feedback_object)


def _files_holding(project: str, feedback_id: str) -> list[str]:
    """This project's training files already built from the correction (their stats name the feedback they
    hold): a rejection leaves them as they are, and whoever rejects is told so."""
    with svc().pool.connection() as c:
        rows = c.execute("SELECT id FROM files WHERE project = %s AND stats -> 'feedback_ids' ? %s "
                         "ORDER BY created_at, id", (project, feedback_id)).fetchall()
    return [r["id"] for r in rows]


def _optional_body() -> dict[str, Any]:
    return json_body() if request.get_data(cache=True) else {}


@bp.post("/chat/feedback/<feedback_id>/reject")
def reject_feedback(feedback_id: str):
    """Keep a suggested correction out of training files built from feedback from now on. A decision can be
    changed: an approved correction can be rejected (and a rejected one approved again); training files already
    built from it are not changed (they are immutable; their stats name the feedback they hold): `in_files`
    names this project's files that hold it."""
    p = require("admin", "trainer")
    if not valid_id(feedback_id):
        raise NotFound(f"no such feedback: {feedback_id!r}", param="feedback_id")
    body = _optional_body()
    reason = body.get("reason")
    if reason is not None and (not isinstance(reason, str) or len(reason) > REASON_MAX_CHARS or not storable(reason)):
        raise ValidationError(f"reason must be text of at most {REASON_MAX_CHARS} characters", param="reason")
    reason = (reason or "").strip() or None
    row = owned("chat_feedback", feedback_id, "feedback", "feedback_id")
    if row["corrected_answer"] is None:
        raise ValidationError("only feedback with a corrected answer is reviewed for training", param="feedback_id")
    decided = {"object": "chat.feedback", "id": feedback_id, "approved": False, "rejected": True,
               "in_files": _files_holding(p.project, feedback_id)}
    if row["rejected"]:  # already decided so: nothing to append (as approving an approved correction)
        return jsonify({**decided, "reviewed_by": row["reviewed_by"], "reviewed_at": row["reviewed_at"],
                        "review_reason": row["review_reason"]})
    idem = Idempotent({"feedback": feedback_id, "reason": reason})
    ev = FeedbackRejected(id=feedback_id, chat_id=row["chat_id"], actor=p.key_id, reason=reason, at=now())
    out = {**decided, "reviewed_by": ev.actor, "reviewed_at": ev.at, "review_reason": reason}
    return append_and_respond(idem, 200, out, lambda cmd: svc().store.append(
        chat_stream(row["chat_id"]), None, [NewEvent(ev.type, ev.to_data(), metadata(row["chat_id"]))], command=cmd))


# ---- estimate -----------------------------------------------------------------------------------------
def _measured_tokens_per_second(project: str, model: str) -> tuple[float | None, int]:
    """The median training throughput of the project's latest local jobs on `model` (their JobProgressed
    events' tokens_per_second), and how many jobs it came from."""
    with svc().pool.connection() as c:
        jobs = [r["id"] for r in c.execute(
            "SELECT id FROM jobs WHERE project = %s AND model = %s AND backend NOT IN ('provider', 'dspy') "
            "ORDER BY seq DESC LIMIT %s", (project, model, MEASURED_JOBS)).fetchall()]
        if not jobs:
            return None, 0
        rows = c.execute(
            "SELECT stream_id, (data ->> 'tokens_per_second')::float8 AS tps FROM events WHERE stream_id = ANY(%s) "
            "AND type = 'JobProgressed' AND jsonb_typeof(data -> 'tokens_per_second') = 'number' "
            "ORDER BY global_position DESC LIMIT 500", ([f"job-{j}" for j in jobs],)).fetchall()
    values = [r["tps"] for r in rows if r["tps"] and r["tps"] > 0 and math.isfinite(r["tps"])]
    if not values:
        return None, 0
    return statistics.median(values), len({r["stream_id"] for r in rows})


def _file_tokens(f: dict[str, Any]) -> int:
    """A training file's tokens: from its stats, else (a file built from feedback before they were measured)
    counted once per content and remembered: an estimate a keystroke must not tokenize a file each time."""
    known = int(f["stats"].get("total_tokens") or 0)
    if known or not f["stats"].get("n_examples"):
        return known
    return _counted(f["sha256"])


@functools.lru_cache(maxsize=64)
def _counted(sha256: str) -> int:
    from api.tokens import counter
    from domain.datasets import check_jsonl

    with svc().pool.connection() as c:
        blob = c.execute("SELECT content FROM blobs WHERE sha256 = %s", (sha256,)).fetchone()
    if blob is None:
        return 0
    try:
        report = check_jsonl(bytes(blob["content"]), min_examples=1, max_tokens=10**9,
                             count_tokens=counter(svc().settings.model_dir))
    except ValidationError:
        return 0
    return report.total_tokens


def _estimate_local(body: dict[str, Any]) -> dict[str, Any]:
    from api.openai_compat import _job_fields, _job_files, _resolve_model, check_method_options
    from domain.configs import parse_method

    p = g.principal
    s = svc().settings
    _backend, context_length = _resolve_model(body.get("model"))
    train, valid = _job_files(body, context_length)
    n = train["stats"].get("n_examples") or 0
    if n < s.min_examples:
        raise ValidationError(f"training_file {train['id']} has {n} example(s); at least {s.min_examples} are "
                              "required [too_few_examples]", param="training_file", code="invalid_file_format")
    _job_fields(body)
    method_type, hp = parse_method(body.get("method"), body.get("hyperparameters"))
    check_method_options(method_type, hp, train, valid, context_length or 0)
    resolved = hp.resolve(n)
    world = 1
    if s.training_queue == "gpu" and (os.environ.get("TUNELOG_NPROC_PER_NODE") or "").isdigit():
        world = max(1, int(os.environ["TUNELOG_NPROC_PER_NODE"]))
    epochs, batch = resolved["n_epochs"], resolved["batch_size"]
    steps = math.ceil(n / (batch * world)) * epochs  # as the recipe's Trainer counts them
    tokens = _file_tokens(train) * epochs
    tps, jobs = _measured_tokens_per_second(p.project, body["model"])
    if tps is not None:
        how = f"at {tps:.0f} tokens/s, the median measured in this project's last {jobs} job(s) on this model"
    else:
        queue = "gpu" if s.training_queue == "gpu" else "cpu"
        tps = DEFAULT_TOKENS_PER_SECOND[queue]
        how = f"at a default {tps:.0f} tokens/s for the {queue} queue (no job of this project on this model yet)"
    seconds = round(STARTUP_SECONDS + tokens / tps)
    basis = (f"{n} examples / batch size {batch}{f' x {world} processes' if world > 1 else ''} = "
             f"{math.ceil(n / (batch * world))} steps an epoch x {epochs} epoch(s); {tokens} training tokens {how}, "
             f"plus about {STARTUP_SECONDS} s to load the model")
    return {"backend": "local", "method": method_type, "steps": steps, "n_epochs": epochs, "batch_size": batch,
            "training_tokens": tokens, "estimated_seconds": seconds, "estimated_cost_usd": None, "basis": basis}


def _estimate_provider(body: dict[str, Any]) -> dict[str, Any]:
    from api.openai_compat import (
        _check_delegated_options,
        _check_delegation,
        _estimate_cost,
        _job_fields,
        _job_files,
        _resolve_model,
    )
    from domain.configs import parse_method

    p = g.principal
    _resolve_model(body.get("model"))
    _check_delegation(p.project, body["model"])
    train, valid = _job_files(body, None)
    n = train["stats"].get("n_examples") or 0
    if n < svc().settings.min_examples:
        raise ValidationError(f"training_file {train['id']} has {n} example(s); at least "
                              f"{svc().settings.min_examples} are required [too_few_examples]",
                              param="training_file", code="invalid_file_format")
    _job_fields(body)
    method_type, hp = parse_method(body.get("method"), body.get("hyperparameters"))
    _check_delegated_options(method_type, body.get("method"), train, valid)
    # the same estimate (and budget check, a 400 when it would be exceeded) as creating the job: the charge it
    # returns is appended only by a job's creation, never here
    estimate, _charge = _estimate_cost(p.project, "estimate", body["model"], train, hp)
    if estimate.estimated_cost_usd is not None:
        basis = (f"{estimate.tokens} training tokens x {estimate.n_epochs} epoch(s) at "
                 f"${estimate.price_per_million_usd}/1M tokens (this server's price table); the provider decides "
                 "steps and time")
    else:
        basis = (f"{estimate.tokens} training tokens x {estimate.n_epochs} epoch(s); this server's price table has "
                 "no price for this model, and the provider decides steps and time")
    return {"backend": "provider", "method": method_type, "steps": None, "n_epochs": estimate.n_epochs,
            "batch_size": None, "training_tokens": estimate.tokens * estimate.n_epochs, "estimated_seconds": None,
            "estimated_cost_usd": estimate.estimated_cost_usd, "basis": basis}


def _estimate_dspy(body: dict[str, Any]) -> dict[str, Any]:
    from api.openai_compat import _dspy_calls, _dspy_file, _job_fields, _job_files, _program_runner
    from domain.configs import parse_method

    p = g.principal
    runner = _program_runner(p.project, body.get("model"), "model")
    _method_type, opts = parse_method(body.get("method"), body.get("hyperparameters"))
    if opts.judge_model:
        _program_runner(p.project, opts.judge_model, "method.dspy.judge_model")
    train, valid = _job_files(body, None)
    n_train = _dspy_file(train, "training_file")
    if valid is not None:
        _dspy_file(valid, "validation_file")
    _job_fields(body)
    if opts.seed is not None and body.get("seed") is not None and body["seed"] != opts.seed:
        raise ValidationError(f"seed {body['seed']} and method.dspy.seed {opts.seed} differ; give one",
                              param="method.dspy.seed")
    stored = opts.resolve(n_train)
    n_dev = (valid["stats"].get("n_examples") or 0) if valid else n_train
    calls = _dspy_calls(stored, n_train, n_dev)
    limit = svc().settings.dspy_max_lm_calls
    if calls is not None and calls > limit:  # as creating the job refuses it
        raise ValidationError(f"this optimization would make about {calls} LM calls ({n_train} training and {n_dev} "
                              f"dev examples); this server allows {limit} a job (TUNELOG_DSPY_MAX_LM_CALLS): use "
                              "fewer examples or candidates", param="method.dspy", code="job_too_large")
    trials = {"bootstrap_few_shot": 2,
              "bootstrap_few_shot_with_random_search": (stored.get("num_candidate_programs") or 0) + 3 + 2}.get(
        stored["optimizer"])
    per_call = DSPY_SECONDS_PER_CALL["provider" if runner.backend == "provider" else "local"]
    seconds = round(calls * per_call) if calls is not None else None
    budget = stored.get("time_budget_s")
    if budget:
        seconds = min(seconds, budget) if seconds is not None else budget
    if calls is not None:
        basis = (f"about {calls} LM calls ({trials} evaluations of {n_dev} dev examples, plus one teacher call per "
                 f"training example) at about {per_call} s a call")
    else:
        basis = (f"{stored['optimizer']} plans its trials as it goes: bounded by its time budget"
                 + (f" of {budget} s" if budget else " (TUNELOG_DSPY_MAX_SECONDS)"))
    return {"backend": "dspy", "method": "dspy", "steps": trials, "n_epochs": None, "batch_size": None,
            "training_tokens": None, "lm_calls": calls, "estimated_seconds": seconds, "estimated_cost_usd": None,
            "basis": basis}


@bp.post("/fine_tuning/estimate")
def estimate_job():
    """What `POST /v1/fine_tuning/jobs` with this body would train, for how long and at what cost, checked as
    creating the job checks it (the same 4xx), appending nothing."""
    require("admin", "trainer")
    from api.openai_compat import ALLOWED_JOB_KEYS, _job_body, provider_of

    body = _job_body(ALLOWED_JOB_KEYS)
    method = body.get("method")
    if isinstance(method, dict) and method.get("type") == "dspy":
        out = _estimate_dspy(body)
    elif isinstance(body.get("model"), str) and body["model"] and len(body["model"]) <= 256 \
            and storable(body["model"]) and provider_of(body["model"]) is not None:
        out = _estimate_provider(body)
    else:
        out = _estimate_local(body)
    return jsonify({"object": "fine_tuning.estimate", **out})
