"""The model registry's moving parts: aliases (promotion with reason and history) and project settings."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from flask import Blueprint, g, jsonify, request

from api.auth import require
from api.common import Idempotent, append_and_respond, json_body, metadata, now, svc
from domain.errors import ConcurrencyConflict, Conflict, NotFound, PreconditionFailed, ValidationError
from domain.events import AliasPromoted, ProjectSettingsChanged, alias_stream, project_stream
from domain.projects import DEFAULT_ALIAS, ProjectSettings, check_eval_gate, check_promotion, fold_settings
from eventlog import evals as evals_reads  # the settings and alias reads the eval gate's worker shares
from eventlog.catalog import BASE_MODELS
from eventlog.store import NewEvent

bp = Blueprint("registry", __name__, url_prefix="/api")
ALIAS_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
DEFAULT_BASE = evals_reads.DEFAULT_BASE  # what the default alias names before any promotion


@dataclass(frozen=True)
class ResolvedModel:
    id: str
    alias: str | None
    backend: str  # hf-base | hf-lora | hf-full | provider
    base_model: str
    artifact_path: str | None
    score: float | None  # final validation loss, lower is better


def settings_for(project: str) -> ProjectSettings:
    return evals_reads.latest_settings(svc(), project)


def alias_target(project: str, alias: str) -> str | None:
    with svc().pool.connection() as c:
        return evals_reads.alias_target(c, project, alias)


def _checkpoint(c, project: str, name: str) -> dict[str, Any] | None:
    """A job checkpoint by its `fine_tuned_model_checkpoint` id (the newest save of that step), served like
    a model: an adapter, or full weights, in the checkpoint's folder. Not once its model was deleted."""
    row = c.execute(
        "SELECT k.path AS artifact_path, k.fine_tuned_model_checkpoint AS id, j.model AS base_model, "
        "CASE WHEN j.backend = 'provider' THEN 'provider' "
        "WHEN coalesce((j.hyperparameters ->> 'lora')::boolean, true) THEN 'hf-lora' ELSE 'hf-full' END "
        "AS backend, k.metrics FROM job_checkpoints k JOIN jobs j ON j.id = k.job_id "
        "WHERE k.fine_tuned_model_checkpoint = %s AND k.project = %s AND NOT EXISTS ("
        "  SELECT 1 FROM models m WHERE m.job_id = k.job_id AND m.deleted_at IS NOT NULL) "
        "ORDER BY k.seq DESC LIMIT 1", (name, project)).fetchone()
    if row is None:
        return None
    return {**row, "lineage": {"final_metrics": row.pop("metrics") or {}}}


def _remote_base(c, name: str) -> bool:
    """`<provider>/<model>` that no tunelog job trained: a provider's own model, answered through it. A model
    (or checkpoint) another project trained at a shared provider is not: it is that project's."""
    from api.openai_compat import is_trained_id, provider_of

    found = provider_of(name)
    if found is None or is_trained_id(found[1]):  # someone's fine-tuned model: only its own project's row serves it
        return False
    return c.execute("SELECT 1 FROM models WHERE id = %s UNION ALL SELECT 1 FROM job_checkpoints "
                     "WHERE fine_tuned_model_checkpoint = %s LIMIT 1", (name, name)).fetchone() is None


def resolve(project: str, name: str) -> ResolvedModel:
    """A model id or an alias of this project -> what serves it. 404 when unknown."""
    alias = None
    target = alias_target(project, name) if ALIAS_RE.match(name) and name not in BASE_MODELS else None
    if target is not None:
        alias, name = name, target
    if name in BASE_MODELS:
        return ResolvedModel(name, alias, "hf-base", name, None, None)
    with svc().pool.connection() as c:
        row = c.execute("SELECT * FROM models WHERE id = %s AND project = %s AND deleted_at IS NULL",
                        (name, project)).fetchone()
        if row is None and ":ckpt-step-" in name:
            row = _checkpoint(c, project, name)
        if row is None and _remote_base(c, name):
            return ResolvedModel(name, alias, "provider", name, None, None)
    if row is None:
        raise NotFound(f"the model {name!r} does not exist (nor an alias of that name)", param="model",
                       code="model_not_found")
    score = (row["lineage"].get("final_metrics") or {}).get("valid_loss")
    return ResolvedModel(row["id"], alias, row["backend"], row["base_model"], row["artifact_path"], score)


def _history(project: str, alias: str) -> list[dict[str, Any]]:
    # through the store: events are upcast on read, never read as raw jsonb
    events = [e for e in svc().store.read_stream(alias_stream(project, alias)) if e.type == "AliasPromoted"]
    out = []
    if alias == DEFAULT_ALIAS:
        out.append({"model": DEFAULT_BASE, "previous": None, "reason": "default: the bundled base model",
                    "actor": "system", "at": None, "position": None})
    for e in events:
        d = e.data
        out.append({"model": d["model"], "previous": d["previous"], "reason": d["reason"],
                    "actor": e.metadata.get("actor"), "at": d["at"], "position": e.global_position})
    return out


@bp.get("/aliases")
def list_aliases():
    with svc().pool.connection() as c:
        rows = c.execute("SELECT alias, model, updated_at FROM aliases WHERE project = %s ORDER BY alias",
                         (g.principal.project,)).fetchall()
    data = [{"object": "alias", **r} for r in rows]
    if not any(r["alias"] == DEFAULT_ALIAS for r in rows):
        data.insert(0, {"object": "alias", "alias": DEFAULT_ALIAS, "model": DEFAULT_BASE, "updated_at": None})
    return jsonify({"object": "list", "data": data})


@bp.get("/aliases/<alias>")
def get_alias(alias: str):
    target = alias_target(g.principal.project, alias)
    if target is None:
        raise NotFound(f"no alias {alias!r} in this project", param="alias")
    return jsonify({"object": "alias", "alias": alias, "model": target})


@bp.get("/aliases/<alias>/history")
def alias_history(alias: str):
    history = _history(g.principal.project, alias)
    if not history:
        raise NotFound(f"no alias {alias!r} in this project", param="alias")
    return jsonify({"object": "list", "alias": alias, "data": history})


@bp.post("/aliases/<alias>")
def promote(alias: str):
    p = require("admin", "trainer")
    if not ALIAS_RE.match(alias) or alias in BASE_MODELS:
        raise ValidationError("an alias is 1-64 characters of a-z, 0-9, '-' or '_', and not a model id",
                              param="alias")
    body = json_body()
    model, reason = body.get("model"), body.get("reason")
    if not isinstance(model, str) or not model:
        raise ValidationError("model is required", param="model")
    if not isinstance(reason, str) or not reason.strip():
        raise ValidationError("reason is required: say why this model is promoted", param="reason")
    idem = Idempotent(body)
    new = resolve(p.project, model)
    if new.alias is not None:
        raise ValidationError(f"{model!r} is an alias; promote a model id", param="model")
    if ":ckpt-step-" in new.id:  # checkpoints rotate away (the last 3 are kept): an alias would break with it
        raise ValidationError(f"{model!r} is a checkpoint; promote a model (a finished job's fine_tuned_model)",
                              param="model")
    settings = settings_for(p.project)
    stream = alias_stream(p.project, alias)
    for _ in range(10):
        version = svc().store.stream_version(stream)
        current = alias_target(p.project, alias)
        try:  # the current target may be gone (a deleted model): the alias can always be moved on
            cur = resolve(p.project, current) if current is not None else None
        except NotFound:
            cur = None
        if cur is not None:
            check_promotion(settings, alias, new.id, new.score, cur.id, cur.score)
        else:
            check_promotion(settings, alias, new.id, new.score, "(none)", None)
        gate = ""
        if settings.promotion_eval is not None:  # eval-gated: the latest completed runs decide (docs/evals.md)
            from eventlog.evals import gate_numbers

            numbers = gate_numbers(svc(), p.project, settings.promotion_eval, new.id, alias)
            gate = check_eval_gate(settings.promotion_eval, alias, new.id, numbers["candidate"],
                                   numbers["current_model"], numbers["current"])
            if gate and numbers["unrunnable"]:
                gate += (f"; the current target {numbers['unrunnable']} can't be evaluated (deleted, or not a "
                         "model of the serving tier), so there was nothing to beat")
        ev = AliasPromoted(project=p.project, alias=alias, model=new.id, previous=current, reason=reason.strip(),
                           at=now())
        body_out = {"object": "alias", "alias": alias, "model": new.id, "previous": current, "reason": ev.reason}
        if gate:
            body_out["eval_gate"] = gate
        try:
            return append_and_respond(idem, 200, body_out, lambda cmd, v=version, ev=ev: svc().store.append(
                stream, v, [NewEvent(ev.type, ev.to_data(), metadata(stream))], command=cmd))
        except ConcurrencyConflict:
            continue
    raise Conflict("the alias is being changed concurrently; try again", code="concurrency_conflict")


def _settings_at(project: str) -> tuple[ProjectSettings, int]:
    """The project's settings folded from its own stream, and that stream's version."""
    events = svc().store.read_stream(project_stream(project))
    return fold_settings(events), (events[-1].stream_version if events else 0)


def _settings_response(project: str, settings: ProjectSettings, version: int, status: int = 200):
    shown = settings.to_dict()
    p = g.principal
    if p.role != "admin" and not p.operator:  # pupils' names: a viewer (a pupil's key) sees how many, not whom
        shown["pii_roster"] = None
    shown["pii_roster_count"] = len(settings.pii_roster)
    resp = jsonify({"object": "settings", "project": project, **shown, "version": version})
    resp.status_code = status
    resp.headers["ETag"] = f'"{version}"'
    return resp


@bp.get("/settings")
def get_settings():
    current, version = _settings_at(g.principal.project)
    return _settings_response(g.principal.project, current, version)


def _check_gate_eval(project: str, gate: dict[str, Any]) -> str | None:
    """The gate's eval exists in this project and has the criterion; a data_source for auto_evaluate is a run's
    (then the spec of such runs is returned: only runs of that spec count at the gate)."""
    with svc().pool.connection() as c:
        row = c.execute("SELECT * FROM evals WHERE id = %s AND project = %s AND deleted_at IS NULL",
                        (gate["eval_id"], project)).fetchone()
    if row is None:
        raise ValidationError(f"promotion_eval.eval_id: no such eval: {gate['eval_id']}",
                              param="promotion_eval.eval_id")
    names = [c["name"] for c in row["testing_criteria"]]
    if gate["criterion"] not in names:
        raise ValidationError(f"promotion_eval.criterion: the eval {gate['eval_id']} has no criterion "
                              f"{gate['criterion']!r} (it has {', '.join(map(repr, names))})",
                              param="promotion_eval.criterion")
    if gate.get("data_source") is not None:
        from api.evals import plan_run

        ds = gate["data_source"]
        if ds.get("type") != "completions" or "model" in ds:
            raise ValidationError("promotion_eval.data_source must be a completions data source without a model "
                                  "(auto_evaluate fills in the new model)", param="promotion_eval.data_source")
        from api.evals import plan_spec

        return plan_spec(row, plan_run(project, row, {**ds, "model": DEFAULT_BASE}))
    return None


@bp.put("/settings")
@bp.patch("/settings")
def put_settings():
    """Change settings with an expected version: `If-Match: "<version>"` (from GET's ETag or `version`)
    refuses with 412 if someone changed them since; without it, the change is applied to the latest
    settings atomically (read, merge, append at that version, retried on a concurrent change)."""
    p = require("admin")
    patch = json_body()
    ProjectSettings().updated(patch)  # validate before anything else
    pinned = None  # the spec runs must have to count at the gate, when the gate names its data source
    if isinstance(patch.get("promotion_eval"), dict):
        pinned = _check_gate_eval(p.project, ProjectSettings().updated({"promotion_eval": patch["promotion_eval"]})
                                  .promotion_eval)
    if_match = request.headers.get("If-Match")
    expected: int | None = None
    if if_match is not None and if_match.strip() != "*":
        raw = if_match.strip().removeprefix("W/").strip('"')
        if not raw.isdigit():
            raise ValidationError('If-Match must be the settings\' ETag, e.g. "3"', param="If-Match")
        expected = int(raw)
    idem = Idempotent({"patch": patch, "if_match": expected})
    stream = project_stream(p.project)
    for _ in range(10):
        current, version = _settings_at(p.project)
        if expected is not None and expected != version:
            raise PreconditionFailed(f"the settings are at version {version}, not {expected}: someone changed "
                                     "them; GET them again and retry", param="If-Match")
        new = current.updated(patch)
        if pinned is not None and new.promotion_eval is not None:
            new.promotion_eval["spec_sha256"] = pinned
        ev = ProjectSettingsChanged(project=p.project, settings=new.to_dict(), at=now())
        body = {"object": "settings", "project": p.project, **new.to_dict(), "version": version + 1}
        try:
            return append_and_respond(idem, 200, body, lambda cmd, v=version, ev=ev: svc().store.append(
                stream, v, [NewEvent(ev.type, ev.to_data(), metadata(p.project))], command=cmd))
        except ConcurrencyConflict:
            if expected is not None:
                raise PreconditionFailed("the settings changed while this request was applied; GET them again "
                                         "and retry", param="If-Match") from None
    raise Conflict("the settings are being changed concurrently; try again", code="concurrency_conflict")
