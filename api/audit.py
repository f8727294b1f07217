"""Audit and time travel over the log: a model's history and lineage, the registry as it stood at any point,
and what produced a chat answer.

Everything here is read from the event log itself (upcast on read, like every reader); `registry?as_of=`
folds the log up to that point and never reads the live tables. A key sees its own project only (another
project's model or chat is a 404); readers who are not the project's admin never see chat text, key hashes or
pupils' names.
"""
from __future__ import annotations

import datetime
import re
from typing import Any

from flask import Blueprint, g, jsonify, request

from api.common import svc
from domain.errors import NotFound, ValidationError
from domain.events import chat_stream, job_stream, model_stream, upcast

bp = Blueprint("audit", __name__, url_prefix="/api")

# what shapes a model (progress and messages are in the job's own event list)
JOB_HISTORY_TYPES = ("JobCreated", "JobStarted", "PauseRequested", "JobPaused", "ResumeRequested", "JobResumed",
                     "CancelRequested", "JobCancelled", "JobAttemptLost", "JobFailed", "JobSucceeded",
                     "CheckpointSaved", "CheckpointDeleted", "RemoteJobCreated", "CostEstimated", "DataRedacted")
MAX_CHATS_IN_LINEAGE = 200


def _reader_view(type_: str, data: dict[str, Any]) -> dict[str, Any]:
    """An event as a reader who is not the project's admin may see it: no chat text, no key hashes, no names."""
    p = g.principal
    if p.role == "admin" or p.operator:
        return data
    hidden = {"ChatAnswered": ("messages", "answer"), "FeedbackGiven": ("messages", "corrected_answer", "comment"),
              "FeedbackRejected": ("reason",),  # a teacher's note on a pupil's suggestion
              "KeyCreated": ("key_hash", "name"),  # a key's name may be a pupil's
              "WebhookCreated": ("url",),  # a URL may carry the receiver's token
              "WebhookDeliveryFailed": ("error",)}.get(type_, ())
    out = {k: (None if k in hidden else v) for k, v in data.items()}
    if type_ == "ProjectSettingsChanged" and isinstance(out.get("settings"), dict):
        out["settings"] = {**out["settings"], "pii_roster": None}
    return out


def _item(r: dict[str, Any]) -> dict[str, Any]:
    type_, data = upcast(r["type"], r["data"])
    meta = r.get("metadata") or {}
    return {"position": r["global_position"], "stream": r["stream_id"], "version": r["stream_version"],
            "type": type_, "at": r["recorded_at"].isoformat(), "actor": meta.get("actor"),
            "reason": data.get("reason"), "data": _reader_view(type_, data)}


COLS = "global_position, stream_id, stream_version, type, data, metadata, recorded_at"


def _registration(model_id: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The model's own stream and its registration, if it is the caller's project's (deleted or not)."""
    if len(model_id) > 300 or "\x00" in model_id:
        raise NotFound("no such model", param="model", code="model_not_found")
    with svc().pool.connection() as c:
        rows = c.execute(f"SELECT {COLS} FROM events WHERE stream_id = %s ORDER BY stream_version",
                         (model_stream(model_id),)).fetchall()
    reg = next((upcast(r["type"], r["data"])[1] for r in rows if r["type"] == "ModelRegistered"), None)
    if reg is None or (reg["project"] != g.principal.project):
        raise NotFound(f"the model {model_id!r} does not exist in this project", param="model",
                       code="model_not_found")
    return rows, reg


@bp.get("/models/<path:model_id>/history")
def model_history(model_id: str):
    """Every event that shaped the model, in log order: its job's submission, state changes and checkpoints,
    its registration, exports, promotions to and demotions from aliases, its deletion; with actor, reason, time."""
    rows, reg = _registration(model_id)
    with svc().pool.connection() as c:
        if reg.get("job_id"):
            rows += c.execute(f"SELECT {COLS} FROM events WHERE stream_id = %s AND type = ANY(%s)",
                              (job_stream(reg["job_id"]), list(JOB_HISTORY_TYPES))).fetchall()
        rows += c.execute(f"SELECT {COLS} FROM events WHERE type = 'AliasPromoted' AND data->>'project' = %s "
                          "AND (data->>'model' = %s OR data->>'previous' = %s)",
                          (reg["project"], model_id, model_id)).fetchall()
    items = []
    for r in sorted(rows, key=lambda r: r["global_position"]):
        item = _item(r)
        if item["type"] == "AliasPromoted":  # said from this model's side
            d = item["data"]
            item["change"] = "promoted" if d["model"] == model_id else "demoted"
        items.append(item)
    return jsonify({"object": "list", "model": model_id, "data": items})


def _node(nodes: dict[str, dict[str, Any]], key: str, kind: str, **attrs: Any) -> str:
    nodes.setdefault(key, {"id": key, "kind": kind, **attrs})
    return key


@bp.get("/models/<path:model_id>/lineage")
def model_lineage(model_id: str):
    """The model's lineage as a graph: files (sha256) -> job -> checkpoints -> model -> aliases -> chats it
    answered -> feedback -> training files built from that feedback -> the models trained on them; and, when
    this model was itself trained from feedback, the models whose answers that feedback was about."""
    _rows, reg = _registration(model_id)
    project = reg["project"]
    nodes: dict[str, dict[str, Any]] = {}
    edges: list[dict[str, str]] = []

    def edge(a: str, b: str, kind: str) -> None:
        edges.append({"from": a, "to": b, "kind": kind})

    me = _node(nodes, f"model:{model_id}", "model", model=model_id, backend=reg["backend"],
               base_model=reg["base_model"])
    with svc().pool.connection() as c:
        deleted = c.execute("SELECT deleted_at FROM models WHERE id = %s", (model_id,)).fetchone()
        nodes[me]["deleted_at"] = deleted["deleted_at"] if deleted else None
        job_id = reg.get("job_id")
        if job_id:
            job = c.execute("SELECT id, status, training_file, validation_file, method, model FROM jobs WHERE id = %s",
                            (job_id,)).fetchone()
            if job:
                j = _node(nodes, f"job:{job_id}", "job", job=job_id, status=job["status"],
                          method=(job["method"] or {}).get("type"), model=job["model"])
                edge(j, me, "produced")
                for role in ("training_file", "validation_file"):
                    if job[role]:
                        f = c.execute("SELECT id, sha256, filename, stats FROM files WHERE id = %s",
                                      (job[role],)).fetchone()
                        fk = _node(nodes, f"file:{job[role]}", "file", file=job[role],
                                   sha256=f["sha256"] if f else None, filename=f["filename"] if f else None,
                                   source=((f["stats"] or {}).get("source") if f else None))
                        edge(fk, j, role)
                        if f and role == "training_file" and (f["stats"] or {}).get("source") == "feedback":
                            _previous_models(c, project, f, fk, nodes, edge)
                for k in c.execute("SELECT id, step, fine_tuned_model_checkpoint FROM job_checkpoints "
                                   "WHERE job_id = %s ORDER BY seq", (job_id,)).fetchall():
                    edge(j, _node(nodes, f"checkpoint:{k['id']}", "checkpoint", checkpoint=k["id"], step=k["step"],
                                  model=k["fine_tuned_model_checkpoint"]), "checkpoint")
        for a in c.execute("SELECT DISTINCT data->>'alias' AS alias FROM events WHERE type = 'AliasPromoted' "
                           "AND data->>'project' = %s AND data->>'model' = %s", (project, model_id)).fetchall():
            now = c.execute("SELECT model FROM aliases WHERE project = %s AND alias = %s",
                            (project, a["alias"])).fetchone()
            edge(me, _node(nodes, f"alias:{a['alias']}", "alias", alias=a["alias"],
                           current=bool(now and now["model"] == model_id)), "promoted")
        n_chats = c.execute("SELECT count(*) AS n FROM chat_answers WHERE project = %s AND model = %s",
                            (project, model_id)).fetchone()["n"]
        nodes[me]["chats_answered"] = n_chats
        chats = c.execute("SELECT id FROM chat_answers WHERE project = %s AND model = %s ORDER BY seq DESC LIMIT %s",
                          (project, model_id, MAX_CHATS_IN_LINEAGE)).fetchall()
        chat_ids = [r["id"] for r in chats]
        for cid in chat_ids:
            edge(me, _node(nodes, f"chat:{cid}", "chat", chat=cid), "answered")
        feedback = c.execute("SELECT id, chat_id, rating, approved, corrected_answer IS NOT NULL AS corrected "
                             "FROM chat_feedback WHERE project = %s AND chat_id = ANY(%s) ORDER BY seq",
                             (project, chat_ids)).fetchall() if chat_ids else []
        for fb in feedback:
            edge(f"chat:{fb['chat_id']}", _node(nodes, f"feedback:{fb['id']}", "feedback", feedback=fb["id"],
                                                rating=fb["rating"], approved=fb["approved"],
                                                corrected=fb["corrected"]), "feedback")
        fb_ids = [fb["id"] for fb in feedback]
        if fb_ids:  # training files built from that feedback, and what was trained on them
            for f in c.execute("SELECT id, sha256, filename, stats FROM files WHERE project = %s AND "
                               "stats->>'source' = 'feedback' AND stats->'feedback_ids' ?| %s",
                               (project, fb_ids)).fetchall():
                fk = _node(nodes, f"file:{f['id']}", "file", file=f["id"], sha256=f["sha256"], filename=f["filename"],
                           source="feedback")
                for fid in set(f["stats"].get("feedback_ids") or []) & set(fb_ids):
                    edge(f"feedback:{fid}", fk, "dataset")
                for j in c.execute("SELECT id, status, fine_tuned_model FROM jobs WHERE training_file = %s",
                                   (f["id"],)).fetchall():
                    jk = _node(nodes, f"job:{j['id']}", "job", job=j["id"], status=j["status"])
                    edge(fk, jk, "training_file")
                    if j["fine_tuned_model"]:
                        edge(jk, _node(nodes, f"model:{j['fine_tuned_model']}", "model", model=j["fine_tuned_model"]),
                             "produced")
    return jsonify({"object": "lineage", "model": model_id, "nodes": list(nodes.values()), "edges": edges})


def _previous_models(c, project: str, f: dict[str, Any], fk: str, nodes, edge) -> None:
    """A training file built from feedback: the feedback, its chats, and the models that gave those answers."""
    fb_ids = (f["stats"] or {}).get("feedback_ids") or []
    for fb in c.execute("SELECT f.id, f.chat_id, a.model FROM chat_feedback f LEFT JOIN chat_answers a "
                        "ON a.id = f.chat_id WHERE f.project = %s AND f.id = ANY(%s)", (project, fb_ids)).fetchall():
        fbk = _node(nodes, f"feedback:{fb['id']}", "feedback", feedback=fb["id"])
        edge(fbk, fk, "dataset")
        ck = _node(nodes, f"chat:{fb['chat_id']}", "chat", chat=fb["chat_id"])
        edge(ck, fbk, "feedback")
        if fb["model"]:
            edge(_node(nodes, f"model:{fb['model']}", "model", model=fb["model"], previous=True), ck, "answered")


def _as_of() -> tuple[str, Any]:
    raw = request.args.get("as_of")
    if raw is None or not raw.strip():
        raise ValidationError("as_of is required: an ISO time (2026-11-30T12:00:00Z) or a global position",
                              param="as_of")
    raw = raw.strip()
    if re.fullmatch(r"[0-9]{1,19}", raw):
        return "position", int(raw)
    return "time", iso_time(raw, "as_of", "an ISO time or a global position")


def iso_time(raw: str, param: str, expected: str = "an ISO time (e.g. 2026-11-30T12:00:00Z)") -> datetime.datetime:
    """An ISO time from a query argument (`Z` or an offset; none: UTC), or a 400 naming `param`."""
    try:
        when = datetime.datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise ValidationError(f"{param} must be {expected}, got {raw[:40]!r}", param=param) from None
    return when if when.tzinfo else when.replace(tzinfo=datetime.UTC)


@bp.get("/registry")
def registry_as_of():
    """Every model and alias of the project as they stood at `as_of`, folded from the log up to that point
    (the live tables are not read)."""
    kind, value = _as_of()
    with svc().pool.connection() as c:
        return jsonify(registry_at(c, g.principal.project, kind, value))


def registry_at(c, project: str, kind: str, value: Any) -> dict[str, Any]:
    """The project's models and aliases folded from the registry's events up to a position or a time."""
    from api.registry import DEFAULT_BASE
    from domain.projects import DEFAULT_ALIAS

    if kind == "time":  # the last event recorded by then (through the index on recorded_at), then by position
        row = c.execute("SELECT global_position FROM events WHERE recorded_at <= %s ORDER BY recorded_at DESC, "
                        "global_position DESC LIMIT 1", (value,)).fetchone()
        value = row["global_position"] if row else 0
    rows = c.execute(
        f"SELECT {COLS} FROM events WHERE global_position <= %s AND type IN ('ModelRegistered', 'ModelDeleted', "
        "'AliasPromoted') ORDER BY global_position", (value,)).fetchall()
    last = c.execute("SELECT global_position AS p, recorded_at AS t FROM events WHERE global_position <= %s "
                     "ORDER BY global_position DESC LIMIT 1", (value,)).fetchone() or {"p": 0, "t": None}
    models: dict[str, dict[str, Any]] = {}
    aliases: dict[str, dict[str, Any]] = {DEFAULT_ALIAS: {"alias": DEFAULT_ALIAS, "model": DEFAULT_BASE,
                                                          "since": None, "reason": "default"}}
    for r in rows:
        type_, d = upcast(r["type"], r["data"])
        if type_ == "ModelRegistered" and d["project"] == project:
            models[d["id"]] = {"id": d["id"], "backend": d["backend"], "base_model": d["base_model"],
                               "job_id": d.get("job_id"), "registered_at": r["recorded_at"].isoformat(),
                               "position": r["global_position"]}
        elif type_ == "ModelDeleted" and d["id"] in models:
            models.pop(d["id"])
        elif type_ == "AliasPromoted" and d["project"] == project:
            aliases[d["alias"]] = {"alias": d["alias"], "model": d["model"], "since": r["recorded_at"].isoformat(),
                                   "reason": d["reason"], "actor": (r["metadata"] or {}).get("actor"),
                                   "position": r["global_position"]}
    return {"object": "registry", "project": project,
            "as_of": {"position": last["p"] or 0, "time": last["t"].isoformat() if last["t"] else None},
            "models": list(models.values()), "aliases": sorted(aliases.values(), key=lambda a: a["alias"])}


@bp.get("/chats/<chat_id>")
def chat_record(chat_id: str):
    """What produced an answer: the model (its kind, base, job and content hash), the sampling settings, and
    the retrieved chunks with the version (sha256) of the document each came from."""
    if len(chat_id) > 200 or "\x00" in chat_id:
        raise NotFound("no such chat answer", param="chat_id")
    with svc().pool.connection() as c:
        rows = c.execute(f"SELECT {COLS} FROM events WHERE stream_id = %s ORDER BY stream_version",
                         (chat_stream(chat_id),)).fetchall()
        answered = next((r for r in rows if r["type"] == "ChatAnswered"), None)
        if answered is None or answered["data"].get("project") != g.principal.project:
            raise NotFound(f"no chat answer {chat_id!r} in this project", param="chat_id")
        _t, d = upcast("ChatAnswered", answered["data"])
        reg_row = c.execute("SELECT data FROM events WHERE stream_id = %s AND type = 'ModelRegistered'",
                            (model_stream(d["model"]),)).fetchone()
        chunks = []
        for cid in d.get("chunk_ids") or []:
            doc_id, _, idx = cid.rpartition(":")
            added = c.execute("SELECT data, recorded_at FROM events WHERE stream_id = %s AND type = 'DocumentAdded'",
                              (f"document-{doc_id}",)).fetchone()
            chunks.append({"chunk_id": cid, "document_id": doc_id, "chunk": int(idx) if idx.isdigit() else None,
                           "title": added["data"].get("title") if added else None,
                           "document_sha256": added["data"].get("sha256") if added else None,
                           "document_added_at": added["recorded_at"].isoformat() if added else None})
    reg = upcast("ModelRegistered", reg_row["data"])[1] if reg_row else None
    lineage = (reg or {}).get("lineage") or {}
    model = {"id": d["model"], "alias": d.get("alias"), "kind": reg["backend"] if reg else "base",
             "base_model": reg["base_model"] if reg else d["model"], "job_id": (reg or {}).get("job_id"),
             "content_sha256": lineage.get("program_sha256") or lineage.get("artifact_sha256"),
             "provider": d.get("provider")}
    view = _reader_view("ChatAnswered", d)
    return jsonify({"object": "chat.record", "id": chat_id, "at": answered["recorded_at"].isoformat(),
                    "position": answered["global_position"], "actor": (answered["metadata"] or {}).get("actor"),
                    "model": model, "sampling": d.get("sampling"), "chunks": chunks,
                    "usage": {"prompt_tokens": d["prompt_tokens"], "completion_tokens": d["completion_tokens"]},
                    "latency_ms": d["latency_ms"], "redactions": d.get("redactions"),
                    "messages": view.get("messages"), "answer": view.get("answer"),
                    "feedback": [_item(r) for r in rows if r["type"] != "ChatAnswered"]})
