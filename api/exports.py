"""A fine-tuned model's files: export (merged safetensors, GGUF) and deletion. The routes append commands;
workers/export.py does the work and appends the outcome.

- `POST /api/models/{model}/export` `{"format": "safetensors" | "gguf"}` -> 202, a `model.export` (queued)
- `GET /api/models/{model}/exports`, and `.../exports/{export_id}/files/{name}` to download a file
- `DELETE /v1/models/{model}` (OpenAI's shape) -> `{"id", "object": "model", "deleted": true}`; the model is
  gone from lists and chat at once, its files are removed by a worker, and its history stays in the log.
"""
from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

from flask import Blueprint, Flask, g, jsonify, request, send_file

from api.auth import require
from api.common import Idempotent, append_and_respond, json_body, metadata, now, svc
from domain.errors import ConcurrencyConflict, Conflict, NotFound, ValidationError
from domain.events import model_stream
from eventlog import artifacts
from eventlog.catalog import BASE_MODELS, hf_model_folder, local_model_path
from eventlog.store import NewEvent, RecordedEvent

bp = Blueprint("exports", __name__, url_prefix="/api")
v1 = Blueprint("model_deletion", __name__, url_prefix="/v1")  # beside openai_compat's GET /v1/models/<id>
FORMATS = ("safetensors", "gguf")
MAX_ID_LENGTH = 200


def register(app: Flask) -> None:
    app.register_blueprint(bp)
    app.register_blueprint(v1)


def _is_base(model_id: str) -> bool:
    return model_id in BASE_MODELS or model_id.startswith("hf/")


def _not_found(model_id: str) -> NotFound:
    return NotFound(f"the model {model_id!r} does not exist", param="model", code="model_not_found")


def _live_model(model_id: str) -> tuple[list[RecordedEvent], dict[str, Any]]:
    """The model's stream and its registration, read from the log itself (no projection lag), if it is a
    fine-tuned model of the caller's project that is not deleted; 404 otherwise (another project's model
    is invisible, not forbidden)."""
    if len(model_id) > MAX_ID_LENGTH or "\x00" in model_id:
        raise _not_found(model_id[:MAX_ID_LENGTH])
    events = svc().store.read_stream(model_stream(model_id))
    reg = next((e.data for e in events if e.type == "ModelRegistered"), None)
    if reg is None or reg["project"] != g.principal.project or any(e.type == "ModelDeleted" for e in events):
        raise _not_found(model_id)
    return events, reg


def _model_row(model_id: str) -> dict[str, Any]:
    if len(model_id) > MAX_ID_LENGTH or "\x00" in model_id:
        raise _not_found(model_id[:MAX_ID_LENGTH])
    with svc().pool.connection() as c:
        row = c.execute("SELECT id, exports FROM models WHERE id = %s AND project = %s AND deleted_at IS NULL",
                        (model_id, g.principal.project)).fetchone()
    if row is None:
        raise _not_found(model_id)
    return row


def _pending_or_done(events: list[RecordedEvent], fmt: str) -> dict[str, Any] | None:
    """The model's export in `fmt` that is queued or succeeded, if there is one."""
    found: dict[str, dict[str, Any]] = {}
    for e in events:
        d = e.data
        if e.type == "ModelExportRequested" and d["format"] == fmt:
            found[d["id"]] = {"id": d["id"], "format": fmt, "status": "queued", "created_at": d["at"]}
        elif e.type == "ModelExported" and d["id"] in found:
            found[d["id"]].update(status="succeeded", files=d["files"], finished_at=d["at"])
        elif e.type == "ModelExportFailed":
            found.pop(d["id"], None)
    return next(reversed(found.values()), None)


def export_object(model_id: str, x: dict[str, Any]) -> dict[str, Any]:
    return {"object": "model.export", "id": x["id"], "model": model_id, "format": x["format"],
            "status": x["status"], "files": x.get("files") or [], "error": x.get("error"),
            "created_at": x["created_at"], "finished_at": x.get("finished_at")}


def _gguf_unsupported(base_model: str) -> str | None:
    """Why a GGUF of a model of this base cannot be written (only llama-architecture models can), from the
    base's config.json; None when it can, or when the base's folder cannot be read here (the worker decides)."""
    model_dir = svc().settings.model_dir
    try:
        folder = hf_model_folder(model_dir, base_model) if base_model.startswith("hf/") else \
            local_model_path(model_dir, base_model)
        model_type = json.loads((folder / "config.json").read_text()).get("model_type")
    except (OSError, ValueError):
        return None
    if model_type != "llama":
        return f"GGUF export supports llama-architecture models; {base_model} is {model_type!r}"
    return None


@bp.post("/models/<path:model_id>/export")
def request_export(model_id: str):
    require("admin", "trainer")
    body = json_body() if request.content_length else {}
    fmt = body.get("format", "safetensors")
    if fmt not in FORMATS:
        raise ValidationError(f"format must be one of {', '.join(FORMATS)}", param="format")
    idem = Idempotent({"model": model_id, "format": fmt})
    if _is_base(model_id):
        raise ValidationError(f"{model_id!r} is a base model: there is nothing to export", param="model")
    stream = model_stream(model_id)
    export_id = "export-" + uuid.uuid4().hex[:24]
    for _ in range(10):
        events, reg = _live_model(model_id)
        if reg.get("backend") == "dspy-program":
            raise ValidationError(f"{model_id!r} is a DSPy program: it has no weights; its JSON state is at "
                                  f"GET /api/models/{model_id}/program", param="model", code="unsupported_format")
        if reg.get("backend") == "provider":
            raise ValidationError(f"{model_id!r} was trained by a delegated provider, which keeps its weights: there "
                                  "is nothing here to export (re-run its job on a local model to own the weights)",
                                  param="model", code="unsupported_format")
        if fmt == "gguf" and (why := _gguf_unsupported(reg["base_model"])):
            raise ValidationError(why, param="format", code="unsupported_format")
        if (same := _pending_or_done(events, fmt)) is not None:
            # one export per model and format (a failed one may be asked again): a loop of requests must
            # not fill the disk with merged copies
            return jsonify(export_object(model_id, same)), 200
        at = now()
        data = {"id": export_id, "model": model_id, "format": fmt, "at": at}
        out = export_object(model_id, {"id": export_id, "format": fmt, "status": "queued", "created_at": at})
        try:
            return append_and_respond(idem, 202, out, lambda cmd, v=events[-1].stream_version, d=data:
                                      svc().store.append(stream, v, [NewEvent("ModelExportRequested", d,
                                                                              metadata(export_id))], command=cmd))
        except ConcurrencyConflict:
            continue
    raise Conflict("the model is being changed concurrently; try again", code="concurrency_conflict")


@bp.get("/models/<path:model_id>/exports")
def list_exports(model_id: str):
    row = _model_row(model_id)
    data = [export_object(model_id, x) for x in reversed(row["exports"])]  # newest first
    return jsonify({"object": "list", "data": data})


@bp.get("/models/<path:model_id>/exports/<export_id>/files/<path:name>")
def export_file(model_id: str, export_id: str, name: str):
    """A file of a finished export: only the names its ModelExported listed, resolved inside the store."""
    row = _model_row(model_id)
    x = next((x for x in row["exports"] if x.get("id") == export_id), None)
    missing = NotFound(f"no file {name!r} in export {export_id!r}", param="name")
    if x is None or x.get("status") != "succeeded" or name not in (x.get("files") or []):
        raise missing
    try:
        path = artifacts.resolve_rel(svc().settings.data_dir, f"{x['path']}/{name}")
    except ValueError:
        raise missing from None
    if not path.is_file():
        raise missing
    return send_file(path, mimetype="application/octet-stream", as_attachment=True, download_name=Path(name).name,
                     max_age=0, conditional=True)


@v1.delete("/models/<path:model_id>")
def delete_model(model_id: str):
    """As OpenAI's: a fine-tuned model of the caller's project. Refused for base models (400) and while an
    alias of the project points at it (409 model_in_use: promote another model to that alias first)."""
    p = require("admin", "trainer")
    idem = Idempotent({"delete": model_id})
    if _is_base(model_id):
        raise ValidationError(f"{model_id!r} is a base model; only fine-tuned models can be deleted", param="model")
    stream = model_stream(model_id)
    body = {"id": model_id, "object": "model", "deleted": True}
    for _ in range(10):
        events, _reg = _live_model(model_id)
        with svc().pool.connection() as c:
            aliases = [r["alias"] for r in c.execute(
                "SELECT alias FROM aliases WHERE project = %s AND model = %s ORDER BY alias",
                (p.project, model_id)).fetchall()]
        if aliases:
            raise Conflict(f"the model is in use by the alias(es) {', '.join(aliases)}; promote another model to "
                           "them first", param="model", code="model_in_use")
        data = {"id": model_id, "at": now()}
        try:
            return append_and_respond(idem, 200, body, lambda cmd, v=events[-1].stream_version, d=data:
                                      svc().store.append(stream, v, [NewEvent("ModelDeleted", d, metadata(model_id))],
                                                         command=cmd))
        except ConcurrencyConflict:
            continue
    raise Conflict("the model is being changed concurrently; try again", code="concurrency_conflict")
