"""What the eval gate compares (used by the API's promote and by auto_promote in the worker): the latest completed
run of a model on the gate's eval, counted on the gate's criterion."""
from __future__ import annotations

from typing import Any

from domain.projects import DEFAULT_ALIAS, ProjectSettings

DEFAULT_BASE = "smollm2-135m-instruct"  # what the default alias names before any promotion


def latest_settings(svc, project: str) -> ProjectSettings:
    """A project's settings as projected (the defaults until it changes them); the API reads them the same way."""
    with svc.pool.connection() as c:
        row = c.execute("SELECT settings FROM project_settings WHERE project = %s", (project,)).fetchone()
    return ProjectSettings.from_dict(row["settings"] if row else None)


def alias_target(c, project: str, alias: str) -> str | None:
    row = c.execute("SELECT model FROM aliases WHERE project = %s AND alias = %s", (project, alias)).fetchone()
    if row:
        return row["model"]
    return DEFAULT_BASE if alias == DEFAULT_ALIAS else None


def latest_run(c, project: str, eval_id: str, model: str, criterion: str,
               spec: str | None = None) -> dict[str, Any] | None:
    """{"id", "passed", "total", "spec"} of `model`'s latest completed run of the eval, with spec `spec` when
    given (None: no such run)."""
    row = c.execute("SELECT id, total, per_criteria, spec_sha256 FROM eval_runs WHERE project = %s AND eval_id = %s "
                    "AND model = %s AND status = 'completed' AND (%s::text IS NULL OR spec_sha256 = %s) "
                    "ORDER BY seq DESC LIMIT 1", (project, eval_id, model, spec, spec)).fetchone()
    if row is None:
        return None
    per = (row["per_criteria"] or {}).get(criterion) or {}
    return {"id": row["id"], "passed": int(per.get("passed", 0)), "total": int(row["total"]),
            "spec": row["spec_sha256"]}


def pending_run(c, project: str, eval_id: str, model: str) -> bool:
    return c.execute("SELECT 1 FROM eval_runs WHERE project = %s AND eval_id = %s AND model = %s AND status IN "
                     "('queued', 'in_progress') LIMIT 1", (project, eval_id, model)).fetchone() is not None


def gate_numbers(svc, project: str, gate: dict[str, Any], model: str, alias: str) -> dict[str, Any]:
    """The runs the gate compares: the candidate's latest completed run (of the pinned spec, when the gate pins
    one), and the current target's latest completed run of the same spec (same items, template, sampling and
    judges). A current target no run can sample (deleted, a DSPy program, a provider's model) has nothing to
    beat: `current_model` is None then, and `unrunnable` names it."""
    with svc.pool.connection() as c:
        current_model = alias_target(c, project, alias)
        runnable = current_model is not None and _servable(c, project, current_model) is not None
        candidate = latest_run(c, project, gate["eval_id"], model, gate["criterion"], gate.get("spec_sha256"))
        current = latest_run(c, project, gate["eval_id"], current_model, gate["criterion"], candidate["spec"]) \
            if candidate is not None and runnable and candidate["spec"] else None
        return {
            "candidate": candidate,
            "current_model": current_model if runnable else None,
            "unrunnable": None if runnable else current_model,
            "current": current,
            "current_pending": runnable and current_model != model
            and pending_run(c, project, gate["eval_id"], current_model),
        }


def model_score(c, project: str, model: str) -> float | None:
    row = c.execute("SELECT lineage FROM models WHERE id = %s AND project = %s", (model, project)).fetchone()
    return ((row["lineage"] or {}).get("final_metrics") or {}).get("valid_loss") if row else None


# ---- auto_evaluate: a run of the gate's eval when a fine-tune succeeds (started by the dispatcher) ----------
SERVED_BACKENDS = {"hf-base", "hf-lora", "hf-full"}


def _servable(c, project: str, name: str, programs: bool = True) -> dict[str, Any] | None:
    """A model of the serving tier by id or alias (the subset of api/registry.resolve a run can sample)."""
    from eventlog.catalog import BASE_MODELS

    alias = None
    if name not in BASE_MODELS:
        target = alias_target(c, project, name)
        if target is not None:
            alias, name = name, target
    if name in BASE_MODELS:
        return {"id": name, "alias": alias, "backend": "hf-base", "base_model": name, "artifact_path": None}
    row = c.execute("SELECT id, backend, base_model, artifact_path, lineage FROM models WHERE id = %s AND "
                    "project = %s AND deleted_at IS NULL", (name, project)).fetchone()
    if row is not None and row["backend"] == "dspy-program":
        return program_target(c, project, row, alias) if programs else None
    if row is None or row["backend"] not in SERVED_BACKENDS:
        return None
    return {"id": row["id"], "backend": row["backend"], "base_model": row["base_model"],
            "artifact_path": row["artifact_path"], "alias": alias}


def program_target(c, project: str, row: dict[str, Any], alias: str | None = None) -> dict[str, Any] | None:
    """A DSPy program as a run samples it: its state by hash, and the model of the serving tier it runs on (the
    chat model it was optimized on, resolved now). None when that model is gone or is not a served one."""
    sha = (row["lineage"] or {}).get("program_sha256")
    runner = _servable(c, project, row["base_model"], programs=False)  # (a program on a program: none)
    if not sha or runner is None:
        return None
    return {"id": row["id"], "alias": alias, "backend": "dspy-program", "base_model": runner["base_model"],
            "artifact_path": runner["artifact_path"], "runner": runner["id"], "program_sha256": sha}


def auto_run_id(eval_id: str, model: str, trigger_model: str) -> str:
    import hashlib

    return "evalrun_" + hashlib.sha256(f"auto:{eval_id}:{model}:{trigger_model}".encode()).hexdigest()[:24]


def auto_evaluate(svc, registered: dict[str, Any], log) -> list[str]:
    """Runs created for a ModelRegistered (ids derived from it: a repeat appends nothing): the new model's, and the
    current target's when must_beat_current needs one it doesn't have. [] when the project doesn't ask."""
    import json
    import time

    from domain.datasets import eval_lines
    from domain.errors import ConcurrencyConflict, DomainError
    from domain.evals_limits import MAX_RUN_ITEMS
    from domain.events import EvalRunCreated, eval_run_stream
    from eventlog.item_schema import ItemChecker
    from eventlog.store import NewEvent

    if registered.get("job_id") is None or registered.get("backend") not in SERVED_BACKENDS:
        return []
    project, model = registered["project"], registered["id"]
    settings = latest_settings(svc, project)
    gate = settings.promotion_eval
    if not settings.auto_evaluate or gate is None:
        return []
    alias = gate.get("alias", DEFAULT_ALIAS)
    with svc.pool.connection() as c:
        ev_row = c.execute("SELECT * FROM evals WHERE id = %s AND project = %s AND deleted_at IS NULL",
                           (gate["eval_id"], project)).fetchone()
        if ev_row is None:
            log.warning("auto_evaluate of %s: the gate's eval %s is gone", model, gate["eval_id"])
            return []
        last = c.execute("SELECT r.data_source, e.data FROM eval_runs r JOIN events e ON e.stream_id = "
                         "'evalrun-' || r.id AND e.stream_version = 1 WHERE r.eval_id = %s AND r.project = %s AND "
                         "r.data_source ->> 'type' = 'completions' ORDER BY r.seq DESC LIMIT 1",
                         (gate["eval_id"], project)).fetchone()
        models: dict[str, dict[str, Any]] = {}
        for crit in ev_row["testing_criteria"]:
            if crit.get("type") in ("score_model", "label_model"):
                judge = _servable(c, project, crit["model"])
                if judge is None:
                    log.warning("auto_evaluate of %s: judge model %s can't be served", model, crit["model"])
                    return []
                models[crit["model"]] = judge
        current = alias_target(c, project, alias)
        current_target = _servable(c, project, current) if current else None
        need_current = (gate.get("must_beat_current", True) and current_target is not None and current != model
                        and latest_run(c, project, gate["eval_id"], current, gate["criterion"]) is None
                        and not pending_run(c, project, gate["eval_id"], current))
        if gate.get("data_source") is not None:
            ds = dict(gate["data_source"])
            source = ds.get("source") or {}
            if source.get("type") == "file_id":
                f = c.execute("SELECT b.content FROM files f JOIN blobs b ON b.sha256 = f.sha256 WHERE f.id = %s "
                              "AND f.project = %s", (source.get("id"), project)).fetchone()
                content = bytes(f["content"]) if f else b""
            else:
                content = "\n".join(json.dumps(x) for x in source.get("content") or []).encode()
        elif last is not None:
            ds = dict(last["data_source"])
            blob = c.execute("SELECT content FROM blobs WHERE sha256 = %s", (last["data"]["items_sha256"],)).fetchone()
            content = bytes(blob["content"]) if blob else b""
        else:
            log.warning("auto_evaluate of %s: eval %s has no completions run to take the data source from, and "
                        "promotion_eval has no data_source", model, gate["eval_id"])
            return []
    try:
        rows = eval_lines(content, max_items=MAX_RUN_ITEMS, check_item=ItemChecker(
            ev_row["data_source_config"]["item_schema"]).errors)
    except DomainError as e:
        log.warning("auto_evaluate of %s: the data source's items are invalid: %s", model, e)
        return []
    normalized = "\n".join(json.dumps(r, ensure_ascii=False, sort_keys=True) for r in rows).encode()
    import hashlib

    sha = hashlib.sha256(normalized).hexdigest()
    with svc.pool.connection() as c:
        c.execute("INSERT INTO blobs (sha256, content) VALUES (%s, %s) ON CONFLICT DO NOTHING", (sha, normalized))
    targets = []
    if need_current:
        targets.append((current, current_target, {"reason": "auto_evaluate: the current target, to compare with",
                                                  "for_model": model, "alias": alias}))
    candidate = {k: registered.get(k) for k in ("id", "backend", "base_model", "artifact_path")}
    targets.append((model, {**candidate, "alias": None}, {
        "reason": "auto_evaluate", "job_id": registered["job_id"], "alias": alias,
        "auto_promote": bool(settings.auto_promote)}))
    created = []
    from domain.eval_sources import input_messages, sampling_params

    try:
        ds = {"type": "completions", "input_messages": input_messages(ds.get("input_messages")),
              "sampling_params": sampling_params(ds.get("sampling_params")), "source": ds.get("source")}
    except DomainError as e:
        log.warning("auto_evaluate of %s: the data source is invalid: %s", model, e)
        return []
    from domain.eval_runs import spec_sha256

    judges = [c["model"] for c in ev_row["testing_criteria"] if c.get("type") in ("score_model", "label_model")]
    shown = ({"type": "file_content", "content": []} if (ds.get("source") or {}).get("type") != "file_id"
             else {"type": "file_id", "id": ds["source"].get("id")})
    for name, target, trigger in targets:
        run_id = auto_run_id(gate["eval_id"], name, model)
        ds_run = {**{k: v for k, v in ds.items() if k not in ("model", "source")}, "model": name, "type": "completions",
                  "source": shown}
        ev = EvalRunCreated(id=run_id, eval_id=gate["eval_id"], project=project,
                            name=f"auto: {name} on {ev_row['name']}"[:256], data_source=ds_run, items_sha256=sha,
                            n_items=len(rows), model=target["id"], requested_model=name,
                            models={**models, name: target}, metadata=None, created_at=int(time.time()),
                            trigger=trigger, spec_sha256=spec_sha256(ds_run, sha, models, judges))
        try:
            svc.store.append(eval_run_stream(run_id), 0, [NewEvent(ev.type, ev.to_data(), {
                "actor": "auto_evaluate", "correlation_id": registered["job_id"]})])
            created.append(run_id)
        except ConcurrencyConflict:
            pass  # created before (a repeated event, a restarted dispatcher)
    return created
