"""Evaluations in OpenAI's Evals shapes (`client.evals` of the unmodified openai SDK is a client): evals with
a custom data source and testing criteria, runs graded by a durable job on the cpu queue (workers/evals.py),
and each run's output items. docs/evals.md."""
from __future__ import annotations

import hashlib
import json
import uuid
from typing import Any

from flask import Blueprint, g, jsonify, request

from api.auth import require
from api.common import Idempotent, append_and_respond, json_body, list_page, metadata, now, page_limit, svc
from api.openai_compat import query_arg
from api.registry import resolve, settings_for
from domain.datasets import eval_lines
from domain.errors import Conflict, NotFound, TooManyRequests, ValidationError
from domain.eval_runs import fold as fold_run
from domain.eval_runs import spec_sha256
from domain.eval_sources import input_messages, sampling_params
from domain.evals_limits import MAX_FILE_CONTENT_BYTES, MAX_RUN_ITEMS
from domain.events import (
    EvalCreated,
    EvalDeleted,
    EvalRunCanceled,
    EvalRunCancelRequested,
    EvalRunCreated,
    EvalUpdated,
    eval_run_stream,
    eval_stream,
)
from eventlog.store import NewEvent

bp = Blueprint("evals", __name__, url_prefix="/v1")
SERVED_BACKENDS = {"hf-base", "hf-lora", "hf-full"}  # what a run can sample or ask to judge (the serving tier)
MAX_OPEN_RUNS = 32  # queued or in-progress runs of one project: one project cannot fill the cpu queue


# ---- objects as OpenAI answers them ------------------------------------------------------------------------
def eval_object(row: dict[str, Any]) -> dict[str, Any]:
    config = dict(row["data_source_config"])
    config.pop("item_schema", None)
    config.pop("include_sample_schema", None)
    return {"object": "eval", "id": row["id"], "name": row["name"], "data_source_config": config,
            "testing_criteria": row["testing_criteria"], "metadata": row.get("metadata"),
            "created_at": row["created_at"]}


def run_object(row: dict[str, Any]) -> dict[str, Any]:
    per = row.get("per_criteria") or {}
    criteria = row.get("criteria_names") or list(per)
    return {
        "object": "eval.run", "id": row["id"], "eval_id": row["eval_id"], "name": row["name"],
        "status": row["status"], "model": row.get("model") or "", "data_source": row["data_source"],
        "metadata": row.get("metadata"), "created_at": row["created_at"],
        "result_counts": {"total": row["total"], "passed": row["passed"], "failed": row["failed"],
                          "errored": row["errored"]},
        "per_testing_criteria_results": [
            {"testing_criteria": name, "passed": (per.get(name) or {}).get("passed", 0),
             "failed": (per.get(name) or {}).get("failed", 0)} for name in criteria],
        "per_model_usage": row.get("usage") or [],
        "error": row.get("error") or {"code": "", "message": ""},
        "report_url": f"/ui/#evals/{row['eval_id']}/{row['id']}",
        "tunelog": {"attempt": row.get("attempt"), "started_at": row.get("started_at"),
                    "finished_at": row.get("finished_at"), "requested_model": row.get("requested_model")},
    }


def item_object(row: dict[str, Any]) -> dict[str, Any]:
    return {"object": "eval.run.output_item", "id": row["id"], "run_id": row["run_id"], "eval_id": row["eval_id"],
            "created_at": row["created_at"], "status": row["status"],
            "datasource_item_id": row["datasource_item_id"], "datasource_item": row["datasource_item"],
            "results": row["results"], "sample": row["sample"]}


def _order() -> str:
    order = request.args.get("order", "asc")
    if order not in ("asc", "desc"):
        raise ValidationError("order must be 'asc' or 'desc'", param="order")
    return order


def _eval_row(eval_id: str) -> dict[str, Any]:
    with svc().pool.connection() as c:
        row = c.execute("SELECT * FROM evals WHERE id = %s AND project = %s AND deleted_at IS NULL",
                        (eval_id, g.principal.project)).fetchone()
    if row is None:
        raise NotFound(f"no such eval: {eval_id}", param="eval_id")
    return row


def _run_row(eval_id: str, run_id: str) -> dict[str, Any]:
    with svc().pool.connection() as c:
        row = c.execute("SELECT r.*, e.testing_criteria FROM eval_runs r JOIN evals e ON e.id = r.eval_id "
                        "WHERE r.id = %s AND r.eval_id = %s AND r.project = %s", (run_id, eval_id,
                                                                                g.principal.project)).fetchone()
    if row is None:
        raise NotFound(f"no such run: {run_id}", param="run_id")
    row["criteria_names"] = [c["name"] for c in row.pop("testing_criteria")]
    return row


def _models_of(criteria: list[dict[str, Any]], project: str) -> dict[str, dict[str, Any]]:
    """What each judge model (score_model / label_model) resolves to now: 400 naming it if it can't judge."""
    out: dict[str, dict[str, Any]] = {}
    for i, crit in enumerate(criteria):
        if crit.get("type") in ("score_model", "label_model"):
            out[crit["model"]] = _servable(project, crit["model"], f"testing_criteria[{i}].model")
    return out


def _servable(project: str, name: str, param: str, program_ok: bool = False) -> dict[str, Any]:
    """What a run samples (`program_ok`: a DSPy program too, through the model it runs on) or asks to judge."""
    try:
        r = resolve(project, name)
    except NotFound:
        raise ValidationError(f"the model {name!r} does not exist in this project (nor an alias of that name)",
                              param=param, code="model_not_found") from None
    if r.backend == "dspy-program" and program_ok:
        from eventlog.evals import program_target

        with svc().pool.connection() as c:
            row = c.execute("SELECT id, base_model, lineage FROM models WHERE id = %s AND project = %s",
                            (r.id, project)).fetchone()
            target = program_target(c, project, row, r.alias) if row else None
        if target is None:
            raise ValidationError(f"the program {name!r} runs on {row['base_model'] if row else '?'!r}, which is "
                                  "gone or not a model of the serving tier", param=param, code="model_not_available")
        return target
    if r.backend not in SERVED_BACKENDS:
        raise ValidationError(f"the model {name!r} is served by {r.backend!r}: evaluation runs sample base models, "
                              "local fine-tunes and DSPy programs, and judge with the first two; provider models "
                              "are not supported in runs yet", param=param, code="model_not_supported")
    return {"id": r.id, "alias": r.alias, "backend": r.backend, "base_model": r.base_model,
            "artifact_path": r.artifact_path}


# ---- evals -------------------------------------------------------------------------------------------------
@bp.post("/evals")
def create_eval():
    from domain.evals import validate_eval
    from eventlog.item_schema import check_item_schema

    p = require("admin", "trainer")
    body = json_body()
    spec = validate_eval(body)
    check_item_schema(spec["data_source_config"]["item_schema"])
    _models_of(spec["testing_criteria"], p.project)
    idem = Idempotent(body)
    eval_id = "eval_" + uuid.uuid4().hex[:24]
    ev = EvalCreated(id=eval_id, project=p.project, name=spec["name"], data_source_config=spec["data_source_config"],
                     testing_criteria=spec["testing_criteria"], metadata=spec.get("metadata"), created_at=now())
    out = eval_object(ev.to_data())
    return append_and_respond(idem, 200, out, lambda cmd: svc().store.append(
        eval_stream(eval_id), 0, [NewEvent(ev.type, ev.to_data(), metadata(eval_id))], command=cmd))


def _by_seq(table: str, where: str, params: list[Any], limit: int) -> list[dict[str, Any]]:
    """`limit + 1` rows of `table` matching `where`, in log order (`?order=asc|desc`), after the cursor `?after=`
    (an id of the caller's project: another project's id is no cursor here)."""
    order = _order()
    sql = f"SELECT * FROM {table} WHERE {where}"
    after = query_arg("after")
    if after:
        sql += f" AND seq {'>' if order == 'asc' else '<'} (SELECT seq FROM {table} WHERE id = %s AND project = %s)"
        params = [*params, after, g.principal.project]
    sql += f" ORDER BY seq {order.upper()} LIMIT %s"
    with svc().pool.connection() as c:
        return c.execute(sql, [*params, limit + 1]).fetchall()


@bp.get("/evals")
def list_evals():
    limit = page_limit(default=20, maximum=100)
    if request.args.get("order_by", "created_at") not in ("created_at", "updated_at"):
        raise ValidationError("order_by must be 'created_at' or 'updated_at'", param="order_by")
    rows = _by_seq("evals", "project = %s AND deleted_at IS NULL", [g.principal.project], limit)
    return list_page(rows, limit, eval_object)


@bp.get("/evals/<eval_id>")
def get_eval(eval_id: str):
    return jsonify(eval_object(_eval_row(eval_id)))


@bp.post("/evals/<eval_id>")
def update_eval(eval_id: str):
    from domain.evals import validate_eval_update

    require("admin", "trainer")
    row = _eval_row(eval_id)
    body = json_body()
    patch = validate_eval_update(body)
    idem = Idempotent({"eval": eval_id, **body})
    ev = EvalUpdated(id=eval_id, name=patch.get("name", row["name"]),
                     metadata=patch["metadata"] if "metadata" in patch else row.get("metadata"), at=now())
    out = eval_object({**row, "name": ev.name, "metadata": ev.metadata})
    stream = eval_stream(eval_id)
    return append_and_respond(idem, 200, out, lambda cmd: svc().store.append(
        stream, svc().store.stream_version(stream), [NewEvent(ev.type, ev.to_data(), metadata(eval_id))],
        command=cmd))


@bp.delete("/evals/<eval_id>")
def delete_eval(eval_id: str):
    p = require("admin", "trainer")
    _eval_row(eval_id)
    settings = settings_for(p.project)
    if settings.promotion_eval and settings.promotion_eval.get("eval_id") == eval_id:
        raise Conflict(f"the eval {eval_id} gates promotion in this project's settings (promotion_eval); change "
                       "the setting first", param="eval_id", code="eval_in_use")
    idem = Idempotent({"delete": eval_id})
    ev = EvalDeleted(id=eval_id, at=now())
    stream = eval_stream(eval_id)
    return append_and_respond(idem, 200, {"object": "eval.deleted", "deleted": True, "eval_id": eval_id},
                              lambda cmd: svc().store.append(stream, svc().store.stream_version(stream), [
                                  NewEvent(ev.type, ev.to_data(), metadata(eval_id))], command=cmd))


# ---- runs --------------------------------------------------------------------------------------------------
def _source_items(source: Any, checker, need_sample: bool) -> tuple[bytes, list[dict[str, Any]]]:
    """The run's items as JSONL bytes (kept in the blobs table) and parsed, each checked against the schema."""
    if not isinstance(source, dict):
        raise ValidationError("data_source.source must be an object: {\"type\": \"file_id\", \"id\": ...} or "
                              "{\"type\": \"file_content\", \"content\": [...]}", param="data_source.source")
    kind = source.get("type")
    if kind == "file_id":
        fid = source.get("id")
        if not isinstance(fid, str):
            raise ValidationError("data_source.source.id must be a file id", param="data_source.source.id")
        with svc().pool.connection() as c:
            f = c.execute("SELECT f.purpose, b.content FROM files f JOIN blobs b ON b.sha256 = f.sha256 "
                          "WHERE f.id = %s AND f.project = %s",
                          (fid, g.principal.project)).fetchone()
        if f is None:
            raise NotFound(f"no such file: {fid}", param="data_source.source.id")
        if f["purpose"] != "evals":
            raise ValidationError(f"file {fid} has purpose {f['purpose']!r}; upload eval data with purpose 'evals'",
                                  param="data_source.source.id")
        content = bytes(f["content"])
    elif kind == "file_content":
        lines = source.get("content")
        if not isinstance(lines, list):
            raise ValidationError("data_source.source.content must be a list of {\"item\": {...}} objects",
                                  param="data_source.source.content")
        content = "\n".join(json.dumps(x, ensure_ascii=False) for x in lines).encode()
        if len(content) > MAX_FILE_CONTENT_BYTES:
            raise ValidationError(f"data_source.source.content is over {MAX_FILE_CONTENT_BYTES} bytes; upload a "
                                  "file (purpose 'evals') instead", param="data_source.source.content")
    elif kind == "stored_completions":
        raise ValidationError("stored_completions sources are not supported here: give file_id or file_content",
                              param="data_source.source.type", code="unsupported_data_source")
    else:
        raise ValidationError(f"data_source.source.type must be 'file_id' or 'file_content', got {kind!r}",
                              param="data_source.source.type")
    rows = eval_lines(content, max_items=MAX_RUN_ITEMS, check_item=checker.errors, need_sample=need_sample,
                      what="eval data" if kind == "file_content" else f"eval file {source.get('id')}")
    normalized = "\n".join(json.dumps(r, ensure_ascii=False, sort_keys=True) for r in rows).encode()
    return normalized, rows


def plan_run(project: str, eval_row: dict[str, Any], data_source: Any) -> dict[str, Any]:
    """Check a run's data source against its eval (400 naming the problem, line numbers for items) and return
    what EvalRunCreated records: the normalized data source, the items (bytes and count), the models."""
    from eventlog.item_schema import ItemChecker

    if not isinstance(data_source, dict):
        raise ValidationError("data_source is required: {\"type\": \"completions\" | \"jsonl\", ...}",
                              param="data_source")
    kind = data_source.get("type")
    config = eval_row["data_source_config"]
    checker = ItemChecker(config["item_schema"])
    criteria = eval_row["testing_criteria"]
    models = _models_of(criteria, project)
    if kind == "jsonl":
        unknown = {k for k, v in data_source.items() if v is not None} - {"type", "source"}
        if unknown:
            raise ValidationError(f"data_source: unknown key(s) {', '.join(sorted(unknown))} for a jsonl run",
                                  param="data_source." + sorted(unknown)[0])
        content, rows = _source_items(data_source.get("source"), checker, need_sample=True)
        shown = {"type": "jsonl", "source": _shown_source(data_source["source"])}
        return {"data_source": shown, "content": content, "n": len(rows), "model": None, "requested": None,
                "models": models}
    if kind == "completions":
        unknown = {k for k, v in data_source.items() if v is not None} - {"type", "source", "model", "input_messages",
                                                                               "sampling_params"}
        if unknown:
            raise ValidationError(f"data_source: unknown key(s) {', '.join(sorted(unknown))} for a completions run",
                                  param="data_source." + sorted(unknown)[0])
        name = data_source.get("model")
        if not isinstance(name, str) or not name:
            raise ValidationError("data_source.model is required: a model id or alias of this project",
                                  param="data_source.model")
        target = _servable(project, name, "data_source.model", program_ok=True)
        models[name] = target
        messages = input_messages(data_source.get("input_messages"))
        sampling = sampling_params(data_source.get("sampling_params"))
        content, rows = _source_items(data_source.get("source"), checker, need_sample=False)
        shown = {"type": "completions", "model": name, "input_messages": messages, "sampling_params": sampling,
                 "source": _shown_source(data_source["source"])}
        return {"data_source": shown, "content": content, "n": len(rows), "model": target["id"],
                "requested": name, "models": models}
    if kind == "responses":
        raise ValidationError("responses data sources are not supported here: use completions (tunelog samples the "
                              "model) or jsonl (samples given)", param="data_source.type",
                              code="unsupported_data_source")
    raise ValidationError(f"data_source.type must be 'completions' or 'jsonl', got {kind!r}", param="data_source.type")


def _shown_source(source: dict[str, Any]) -> dict[str, Any]:
    if source.get("type") == "file_content":  # the items themselves are in the blob (and the output items)
        return {"type": "file_content", "content": source.get("content", [])[:0]}
    return {"type": "file_id", "id": source.get("id")}


def _metadata(raw: Any) -> dict[str, str] | None:
    if raw is None:
        return None
    if not isinstance(raw, dict) or len(raw) > 16 or not all(
            isinstance(k, str) and isinstance(v, str) and len(k) <= 64 and len(v) <= 512 for k, v in raw.items()):
        raise ValidationError("metadata must be at most 16 string keys (64 characters) and string values (512)",
                              param="metadata")
    return raw


def new_run_event(project: str, eval_row: dict[str, Any], plan: dict[str, Any], name: str | None,
                  meta: dict[str, str] | None, run_id: str | None = None,
                  trigger: dict[str, Any] | None = None) -> tuple[EvalRunCreated, str]:
    sha = hashlib.sha256(plan["content"]).hexdigest()
    run_id = run_id or "evalrun_" + uuid.uuid4().hex[:24]
    ev = EvalRunCreated(
        id=run_id, eval_id=eval_row["id"], project=project,
        name=name or f"{plan['requested'] or 'jsonl'} on {eval_row['name']}"[:256],
        data_source=plan["data_source"], items_sha256=sha, n_items=plan["n"], model=plan["model"],
        requested_model=plan["requested"], models=plan["models"], metadata=meta, created_at=now(), trigger=trigger,
        spec_sha256=plan_spec(eval_row, plan))
    return ev, sha


def plan_spec(eval_row: dict[str, Any], plan: dict[str, Any]) -> str:
    judges = [c["model"] for c in eval_row["testing_criteria"] if c.get("type") in ("score_model", "label_model")]
    return spec_sha256(plan["data_source"], hashlib.sha256(plan["content"]).hexdigest(), plan["models"], judges)


@bp.post("/evals/<eval_id>/runs")
def create_run(eval_id: str):
    p = require("admin", "trainer")
    row = _eval_row(eval_id)
    body = json_body()
    unknown = set(body) - {"data_source", "name", "metadata"}
    if unknown:
        raise ValidationError(f"unknown key(s) {', '.join(sorted(unknown))}", param=sorted(unknown)[0])
    name = body.get("name")
    if name is not None and (not isinstance(name, str) or len(name) > 256):
        raise ValidationError("name must be text of at most 256 characters", param="name")
    meta = _metadata(body.get("metadata"))
    idem = Idempotent({"eval": eval_id, **body})  # a retry is answered before the items are checked again
    with svc().pool.connection() as c:
        open_runs = c.execute("SELECT count(*) AS n FROM eval_runs WHERE project = %s AND status IN "
                              "('queued', 'in_progress')", (p.project,)).fetchone()["n"]
    if open_runs >= MAX_OPEN_RUNS:
        raise TooManyRequests(f"this project has {open_runs} eval runs queued or in progress (at most "
                              f"{MAX_OPEN_RUNS}); wait for one to finish, or cancel one", retry_after=30,
                              code="too_many_runs")
    plan = plan_run(p.project, row, body.get("data_source"))
    ev, sha = new_run_event(p.project, row, plan, name, meta)
    with svc().pool.connection() as c:
        c.execute("INSERT INTO blobs (sha256, content) VALUES (%s, %s) ON CONFLICT DO NOTHING", (sha, plan["content"]))
    out = run_object({**ev.to_data(), "status": "queued", "total": 0, "passed": 0, "failed": 0, "errored": 0,
                      "per_criteria": {}, "criteria_names": [c["name"] for c in row["testing_criteria"]],
                      "attempt": 1})
    return append_and_respond(idem, 200, out, lambda cmd: svc().store.append(
        eval_run_stream(ev.id), 0, [NewEvent(ev.type, ev.to_data(), metadata(ev.id))], command=cmd))


@bp.get("/evals/<eval_id>/runs")
def list_runs(eval_id: str):
    names = [c["name"] for c in _eval_row(eval_id)["testing_criteria"]]
    limit = page_limit(default=20, maximum=100)
    where, params = "eval_id = %s AND project = %s", [eval_id, g.principal.project]
    status = request.args.get("status")
    if status is not None:
        if status not in ("queued", "in_progress", "completed", "canceled", "failed"):
            raise ValidationError("status must be one of queued, in_progress, completed, canceled, failed",
                                  param="status")
        where += " AND status = %s"
        params.append(status)
    rows = _by_seq("eval_runs", where, params, limit)
    return list_page(rows, limit, lambda r: run_object({**r, "criteria_names": names}))


@bp.get("/evals/<eval_id>/runs/<run_id>")
def get_run(eval_id: str, run_id: str):
    return jsonify(run_object(_run_row(eval_id, run_id)))


@bp.post("/evals/<eval_id>/runs/<run_id>")
@bp.post("/evals/<eval_id>/runs/<run_id>/cancel")
def cancel_run(eval_id: str, run_id: str):
    """Cancel: a queued run is canceled at once; a running one is asked, and its worker stops before its next
    item (within seconds); a finished one is left as it is (answered as it stands)."""
    p = require("admin", "trainer")
    row = _run_row(eval_id, run_id)
    stream = eval_run_stream(run_id)
    for _ in range(10):
        events = svc().store.read_stream(stream)
        state = fold_run([(e.type, e.data, e.stream_version) for e in events])
        if state.terminal or state.cancel_requested:
            break
        if state.status == "queued":  # at the version read: a worker starting it at once wins, then we ask it
            new = [NewEvent("EvalRunCanceled", EvalRunCanceled(reason="canceled before it started", at=now())
                            .to_data(), metadata(run_id))]
            expected: int | None = state.version
        else:  # a flag: appended whatever the worker appended meanwhile (a busy run must not outrun a cancel)
            new = [NewEvent("EvalRunCancelRequested", EvalRunCancelRequested(actor=p.key_id, at=now()).to_data(),
                            metadata(run_id))]
            expected = None
        try:
            svc().store.append(stream, expected, new)
            break
        except Conflict:
            continue
    else:
        raise Conflict("the run changed on every try; cancel again", code="concurrency_conflict")
    from api.common import fresh

    fresh(svc().pool)
    return jsonify(run_object(_run_row(eval_id, row["id"])))


@bp.delete("/evals/<eval_id>/runs/<run_id>")
def delete_run(eval_id: str, run_id: str):
    require("admin", "trainer")
    _run_row(eval_id, run_id)
    raise Conflict("runs are kept: they are the evidence promotions were decided on (docs/evals.md); cancel a "
                   "running one instead", param="run_id", code="run_kept")


@bp.get("/evals/<eval_id>/runs/<run_id>/output_items")
def list_items(eval_id: str, run_id: str):
    _run_row(eval_id, run_id)
    limit = page_limit(default=20, maximum=1000)
    order = _order()
    sql = "SELECT * FROM eval_output_items WHERE run_id = %s AND project = %s"
    params: list[Any] = [run_id, g.principal.project]
    status = request.args.get("status")
    if status is not None:
        if status not in ("pass", "fail", "error"):
            raise ValidationError("status must be 'pass', 'fail' or 'error'", param="status")
        sql += " AND status = %s"
        params.append(status)
    after = query_arg("after")
    if after:
        sql += (f" AND datasource_item_id {'>' if order == 'asc' else '<'} (SELECT datasource_item_id FROM "
                "eval_output_items WHERE id = %s AND run_id = %s)")
        params += [after, run_id]
    sql += f" ORDER BY datasource_item_id {order.upper()} LIMIT %s"
    params.append(limit + 1)
    with svc().pool.connection() as c:
        rows = c.execute(sql, params).fetchall()
    return list_page(rows, limit, item_object)


@bp.get("/evals/<eval_id>/runs/<run_id>/output_items/<item_id>")
def get_item(eval_id: str, run_id: str, item_id: str):
    _run_row(eval_id, run_id)
    with svc().pool.connection() as c:
        row = c.execute("SELECT * FROM eval_output_items WHERE id = %s AND run_id = %s AND project = %s",
                        (item_id, run_id, g.principal.project)).fetchone()
    if row is None:
        raise NotFound(f"no such output item: {item_id}", param="output_item_id")
    return jsonify(item_object(row))
