"""DSPy programs as files: export a program model's JSON state, import one as a new model.

These map onto the seed's CLI verbs: optimize (a `dspy` fine-tuning job), save (`GET
/api/models/{id}/program`), load (`POST /api/programs`). A program is DSPy's JSON state only, checked by
eventlog/programs.check_state before it is stored: loading one can never run code (no pickles, no LM
configuration, the tutor's fields only).
"""
from __future__ import annotations

import hashlib
import uuid

from flask import Blueprint, Response, g

from api.auth import require
from api.common import Idempotent, append_and_respond, json_body, metadata, now, svc
from api.openai_compat import SUFFIX_RE, _program_runner, storable
from domain.errors import NotFound, ValidationError
from domain.events import model_stream
from eventlog import programs
from eventlog.store import NewEvent

bp = Blueprint("programs", __name__, url_prefix="/api")
IMPORT_KEYS = {"model", "program", "suffix"}


@bp.get("/models/<path:model_id>/program")
def export_program(model_id: str):
    """The program's DSPy JSON state, as `program.save(path, save_program=False)` writes it (and
    `program.load(path)` reads it back)."""
    missing = NotFound(f"no DSPy program {model_id!r} in this project", param="model", code="model_not_found")
    if len(model_id) > 200 or not storable(model_id):
        raise missing
    with svc().pool.connection() as c:
        row = c.execute("SELECT b.content FROM models m JOIN blobs b ON b.sha256 = m.lineage ->> 'program_sha256' "
                        "WHERE m.id = %s AND m.project = %s AND m.deleted_at IS NULL AND m.backend = 'dspy-program'",
                        (model_id, g.principal.project)).fetchone()
    if row is None:
        raise missing
    safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in model_id)
    return Response(bytes(row["content"]), mimetype="application/json",
                    headers={"Content-Disposition": f'attachment; filename="{safe}.json"'})


@bp.post("/programs")
def import_program():
    """`{"model": <the chat model it runs on>, "program": <DSPy JSON state>, "suffix": optional}`: registered as
    a model of kind dspy-program (lineage: imported, with the state's sha256)."""
    p = require("admin", "trainer")
    body = json_body()
    unknown = sorted(set(body) - IMPORT_KEYS)
    if unknown:
        raise ValidationError(f"unknown key(s): {', '.join(unknown[:5])}; allowed: {', '.join(sorted(IMPORT_KEYS))}",
                              param=unknown[0][:200])
    suffix = body.get("suffix")
    if suffix is not None and (not isinstance(suffix, str) or not SUFFIX_RE.match(suffix)):
        raise ValidationError("suffix must be 1-64 characters of letters, digits, '-' or '_'", param="suffix")
    if "program" not in body:
        raise ValidationError("program is required: a DSPy program's JSON state (GET /api/models/{id}/program)",
                          param="program")
    state = programs.check_state(body["program"])
    runner = _program_runner(p.project, body.get("model"), "model")
    content = programs.state_bytes(state)
    sha = hashlib.sha256(content).hexdigest()
    idem = Idempotent({"model": runner.id, "sha256": sha, "suffix": suffix})
    model_id = f"dspy:{p.project}:{suffix or ''}:{uuid.uuid4().hex[:8]}"
    with svc().pool.connection() as c:
        c.execute("INSERT INTO blobs (sha256, content) VALUES (%s, %s) ON CONFLICT DO NOTHING", (sha, content))
    at = now()
    lineage = {"base_model": runner.id, "imported": True, "program_sha256": sha, "program": programs.summary(state),
               "job_id": None}
    data = {"id": model_id, "project": p.project, "base_model": runner.id, "backend": "dspy-program", "job_id": None,
            "artifact_path": None, "created_at": at, "lineage": lineage}
    out = {"id": model_id, "object": "model", "created": at, "owned_by": p.project, "kind": "dspy-program",
           "root": runner.id, "parent": runner.id, "job_id": None, "lineage": lineage}
    return append_and_respond(idem, 201, out, lambda cmd: svc().store.append(
        model_stream(model_id), 0, [NewEvent("ModelRegistered", data, metadata(model_id))], command=cmd))
