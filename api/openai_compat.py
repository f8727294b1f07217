"""The OpenAI-shaped routes: /v1/files, /v1/fine_tuning/jobs, /v1/models (DESIGN §3)."""
from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import logging
import random
import re
import unicodedata
import uuid
from pathlib import Path
from typing import Any

from flask import Blueprint, g, jsonify, request, send_file

from api.auth import require
from api.common import Idempotent, append_and_respond, json_body, list_page, metadata, now, owned, page_limit, svc
from domain.configs import EXTENSION_KEYS, Hyperparameters, parse_method
from domain.datasets import check_jsonl
from domain.errors import NotFound, PayloadTooLarge, ServiceUnavailable, ValidationError
from domain.events import (
    BudgetCharged,
    CostEstimated,
    FileDeleted,
    FileUploaded,
    JobCreated,
    budget_stream,
    file_stream,
    job_stream,
    upcast,
)
from domain.jobs import JobState, fold
from eventlog.catalog import BASE_MODELS, ModelPathError, hf_model_folder
from eventlog.store import Append, NewEvent

bp = Blueprint("openai", __name__, url_prefix="/v1")
log = logging.getLogger("tunelog.api")

SUFFIX_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
MAX_ID_LENGTH = 200  # ids are short; a longer one names nothing, and is not sent to Postgres


def storable(text: str) -> bool:
    """Whether Postgres can keep this string (text and jsonb refuse NUL, and lone surrogates are no UTF-8)."""
    if "\x00" in text:
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def valid_id(row_id: str) -> bool:
    """An id that may exist: ids with NUL, undecodable characters or of any length are answered 404
    without a query (Postgres would refuse them, and that must not become a 500)."""
    return len(row_id) <= MAX_ID_LENGTH and storable(row_id)


def query_arg(name: str, max_length: int = 1000) -> str | None:
    """A query-string argument, or a 400 if Postgres could not compare it (NUL...) or it is oversized."""
    value = request.args.get(name)
    if value is not None and (len(value) > max_length or not storable(value)):
        raise ValidationError(f"{name} must be text of at most {max_length} characters, without NUL", param=name)
    return value


def clean_filename(name: str | None, default: str) -> str:
    """The last path component of a client's filename, without control characters, at most 255
    characters; `default` if nothing is left (it is shown in lists and sent back in Content-Disposition)."""
    name = Path((name or "").replace("\\", "/")).name
    name = "".join(ch for ch in name if unicodedata.category(ch)[0] != "C")  # controls, surrogates...
    name = name.strip()[:255]
    return default if name in ("", ".", "..") else name


# ---- files --------------------------------------------------------------------------------------------
def file_object(row: dict[str, Any]) -> dict[str, Any]:
    return {"id": row["id"], "object": "file", "bytes": row["bytes"], "created_at": row["created_at"],
            "filename": row["filename"], "purpose": row["purpose"], "status": "processed",
            "status_details": None, "expires_at": None}


def _get_file(file_id: str, param: str | None = None) -> dict[str, Any]:
    """The file, or 404; named by a job's `param` (training_file...), a 400 as OpenAI answers."""
    try:
        if not valid_id(file_id):
            raise NotFound(f"no such file: {file_id!r}", param="file_id")
        return owned("files", file_id, "file", "file_id")
    except NotFound:
        if param:
            raise ValidationError(f"invalid {param}: no file {file_id!r} in this project", param=param,
                                  code="invalid_file") from None
        raise


@bp.post("/files")
def upload_file():
    require("admin", "trainer")
    s = svc().settings
    if request.content_length and request.content_length > s.max_upload_bytes + 64 * 1024:
        raise PayloadTooLarge(f"the file is over the upload limit of {s.max_upload_bytes} bytes", param="file")
    purpose = request.form.get("purpose")
    upload = request.files.get("file")
    if upload is None:
        raise ValidationError("missing multipart field 'file'", param="file")
    if purpose not in ("fine-tune", "evals"):
        raise ValidationError(f"purpose must be 'fine-tune' or 'evals', got {purpose!r}", param="purpose")
    content = upload.read()
    if len(content) > s.max_upload_bytes:
        raise PayloadTooLarge(f"the file is {len(content)} bytes, over the upload limit of {s.max_upload_bytes}",
                              param="file")
    sha = hashlib.sha256(content).hexdigest()
    filename = clean_filename(upload.filename, "upload.jsonl")
    idem = Idempotent({"purpose": purpose, "filename": filename, "sha256": sha})
    from api.tokens import counter

    max_ctx = max(m.context_length for m in BASE_MODELS.values())
    # The minimum example count applies to training files only (a validation file may be small), so
    # it is checked when a job names the file; here a file needs at least one example. Chat or preference
    # (DPO) format, told by the first example: the file's stats say which, and a job checks it against its method.
    if purpose == "evals":  # OpenAI's eval data: {"item": {...}} a line; checked against an eval's schema by a run
        from domain.datasets import eval_lines
        from domain.evals_limits import MAX_RUN_ITEMS

        stats = {"n_items": len(eval_lines(content, max_items=MAX_RUN_ITEMS)), "format": "evals"}
    else:
        stats = check_jsonl(content, min_examples=1, max_tokens=max_ctx, count_tokens=counter(s.model_dir)).stats()
    file_id = "file-" + uuid.uuid4().hex[:24]
    ev = FileUploaded(id=file_id, project=g.principal.project, filename=filename, purpose=purpose,
                      bytes=len(content), sha256=sha, created_at=now(), stats=stats)
    with svc().pool.connection() as c:
        c.execute("INSERT INTO blobs (sha256, content) VALUES (%s, %s) ON CONFLICT DO NOTHING", (sha, content))
    body = file_object(ev.to_data())
    return append_and_respond(idem, 200, body, lambda cmd: svc().store.append(
        file_stream(file_id), 0, [NewEvent(ev.type, ev.to_data(), metadata(file_id))], command=cmd))


@bp.get("/files")
def list_files():
    limit = page_limit(default=10000, maximum=10000)
    purpose = query_arg("purpose")
    sql = "SELECT * FROM files WHERE project = %s"
    params: list[Any] = [g.principal.project]
    if purpose:
        sql += " AND purpose = %s"
        params.append(purpose)
    after = query_arg("after")
    if after:
        # the cursor must be this project's file: another project's id must not tell its position
        sql += " AND (created_at, id) < (SELECT created_at, id FROM files WHERE id = %s AND project = %s)"
        params += [after, g.principal.project]
    sql += " ORDER BY created_at DESC, id DESC LIMIT %s"
    params.append(limit + 1)
    with svc().pool.connection() as c:
        rows = c.execute(sql, params).fetchall()
    return list_page(rows, limit, file_object)


@bp.get("/files/<file_id>")
def get_file(file_id: str):
    return jsonify(file_object(_get_file(file_id)))


@bp.get("/files/<file_id>/content")
def file_content(file_id: str):
    row = _get_file(file_id)
    if (row["stats"] or {}).get("source") == "feedback" and g.principal.role == "viewer" and not g.principal.operator:
        from domain.errors import Forbidden

        # pupils' conversations and teachers' corrections: for the project's trainers and admins
        raise Forbidden("a file built from chat feedback holds pupils' conversations: trainers and admins only",
                        param="file_id")
    with svc().pool.connection() as c:
        blob = c.execute("SELECT content FROM blobs WHERE sha256 = %s", (row["sha256"],)).fetchone()
    # werkzeug quotes the name (an ASCII `filename` plus RFC 5987 `filename*` for the rest); names stored
    # before uploads were cleaned may hold control characters, so clean them here too
    return send_file(io.BytesIO(bytes(blob["content"])), mimetype="application/jsonl", as_attachment=True,
                     download_name=clean_filename(row["filename"], f"{file_id}.jsonl"), etag=row["sha256"],
                     max_age=0)


@bp.delete("/files/<file_id>")
def delete_file(file_id: str):
    require("admin", "trainer")
    _get_file(file_id)
    idem = Idempotent({"file": file_id})
    body = {"id": file_id, "object": "file", "deleted": True}
    ev = FileDeleted(id=file_id, deleted_at=now())
    version = svc().store.stream_version(file_stream(file_id))
    return append_and_respond(idem, 200, body, lambda cmd: svc().store.append(
        file_stream(file_id), version, [NewEvent(ev.type, ev.to_data(), metadata(file_id))], command=cmd))


# ---- fine-tuning jobs ----------------------------------------------------------------------------------
def job_object(j: JobState | dict[str, Any]) -> dict[str, Any]:
    d = j if isinstance(j, dict) else j.__dict__
    hp = d["hyperparameters"]
    return {
        "id": d["id"], "object": "fine_tuning.job", "created_at": d["created_at"], "error": d["error"],
        "fine_tuned_model": d["fine_tuned_model"], "finished_at": d["finished_at"], "hyperparameters": hp,
        "model": d["model"], "organization_id": d["project"], "result_files": [], "seed": d["seed"],
        "status": d["status"], "trained_tokens": d["trained_tokens"], "training_file": d["training_file"],
        "validation_file": d["validation_file"], "estimated_finish": d.get("estimated_finish"), "integrations": [],
        "metadata": d["metadata"], "method": d["method"], "user_provided_suffix": d["suffix"],
        # tunelog's: the job this one re-runs, and a delegated job's provider and remote job
        "rerun_of": d.get("rerun_of"), "remote": d.get("remote"),
    }


def _get_job(job_id: str) -> dict[str, Any]:
    if not valid_id(job_id):
        raise NotFound(f"no such fine-tuning job: {job_id!r}", param="fine_tuning_job_id")
    return owned("jobs", job_id, "fine-tuning job", "fine_tuning_job_id")


def provider_of(model: str):
    """(provider, remote model) when `model` is `<configured provider>/<remote model>`, else None. An unreadable
    providers file is the operator's fault: a 503 naming it, never a model not found."""
    from eventlog import providers

    try:
        return providers.load(svc().settings.data_dir).split(model)
    except providers.ProviderConfigError as e:
        log.error("the providers configuration is invalid: %s", e)  # the operator's to read, with its path
        raise ServiceUnavailable("the provider configuration of this server is invalid; the operator must fix it "
                                 "(the API's log says how)") from None


def is_trained_id(remote_model: str) -> bool:
    """A provider's fine-tuned model or checkpoint (OpenAI's and tunelog's `ft:` ids): someone's training data.
    Only the project whose job trained it may use it (chat, further training); other projects never see it."""
    return remote_model.startswith("ft:") or ":ckpt-step-" in remote_model


def check_remote_model(model: str) -> None:
    """A delegated job may start from the provider's own models, or from a model this project trained there
    (and has not deleted); another project's fine-tuned model at a shared provider is not found (404-like)."""
    _provider, remote = provider_of(model)
    if not is_trained_id(remote):
        return
    with svc().pool.connection() as c:
        mine = c.execute("SELECT 1 FROM models WHERE id = %s AND project = %s AND deleted_at IS NULL",
                         (model, g.principal.project)).fetchone()
    if mine is None:
        raise ValidationError(f"model {model!r} does not exist or cannot be fine-tuned here: a provider's fine-tuned "
                              "model can be trained further only by the project that trained it", param="model",
                              code="model_not_available")


def openai_auto_epochs(n_examples: int) -> int:
    """OpenAI's documented choice for n_epochs "auto" (3, more for small sets up to 100 example passes and at
    most 25, fewer for large ones down to 25,000 passes), used to estimate what the provider will train."""
    n = max(n_examples, 1)
    if n * 3 < 100:
        return min(25, -(-100 // n))
    if n * 3 > 25000:
        return max(1, 25000 // n)
    return 3


def _resolve_model(model: Any) -> tuple[str, int | None]:
    """(backend, context length) for a trainable model name, or a 400 naming the problem. A delegated
    provider's model has no context length here: the provider checks its own."""
    if not isinstance(model, str) or not model:
        raise ValidationError("model is required (e.g. 'smollm2-135m-instruct')", param="model")
    if len(model) > 256 or not storable(model):
        raise ValidationError("model must be a model name of at most 256 characters", param="model")
    if provider_of(model) is not None:
        check_remote_model(model)
        return "provider", None
    if model in BASE_MODELS:
        return "hf-lora", BASE_MODELS[model].context_length
    if model.startswith("hf/"):
        try:
            path = hf_model_folder(svc().settings.model_dir, model)
        except ModelPathError as e:
            raise ValidationError(str(e), param="model", code="model_not_available") from None
        cfg = path / "config.json"
        try:
            found = cfg.is_file()
        except OSError:  # unreadable (permissions): the same answer as missing
            found = False
        if not found:
            raise ValidationError(f"model {model!r}: no Hugging Face model folder (config.json) there",
                                  param="model", code="model_not_available")
        try:
            if cfg.stat().st_size > 1024 * 1024:
                raise ValueError("over 1 MiB")
            config = json.loads(cfg.read_text(encoding="utf-8"))
            context = config.get("max_position_embeddings") or 2048
            if isinstance(context, bool) or not isinstance(context, int) or context < 1:
                raise ValueError(f"max_position_embeddings is {context!r}")
        except (OSError, ValueError, AttributeError, RecursionError) as e:
            raise ValidationError(f"model {model!r}: its config.json is not a readable model configuration "
                                  f"({type(e).__name__})", param="model", code="model_not_available") from None
        return "hf-lora", context
    known = ", ".join(sorted(BASE_MODELS))
    raise ValidationError(f"model {model!r} does not exist or cannot be fine-tuned here; trainable models: "
                          f"{known}, or hf/<path to a local model folder>", param="model", code="model_not_available")


ALLOWED_JOB_KEYS = {"model", "training_file", "validation_file", "suffix", "seed", "metadata", "method",
                    "hyperparameters", "integrations"}
RERUN_KEYS = {"model", "suffix", "seed", "metadata", "method", "hyperparameters"}
# the dataset format each method trains on (domain/datasets.py), and how a message names it
METHOD_FORMAT = {"supervised": "chat", "dpo": "preference"}
FORMAT_NAMES = {"chat": "chat format (messages)",
                "preference": "OpenAI's preference format (input, preferred_output, non_preferred_output)",
                "dspy": "DSPy example format (question, answer, optional context)"}
DSPY_FORMATS = ("chat", "dspy")  # a DSPy job reads question/answer pairs from either
DSPY_MIN_EXAMPLES = 4
DSPY_MAX_EXAMPLES = 2000  # each example costs LM calls in every evaluation


def file_format(row: dict[str, Any]) -> str:
    """A file's dataset format; files uploaded before formats were told apart are chat files."""
    return (row["stats"] or {}).get("format") or "chat"


def qlora_unavailable() -> str | None:
    """Why this server cannot train with 4-bit base weights, or None if it can. QLoRA needs CUDA (training
    goes to the gpu queue) and bitsandbytes; the package is looked up, never imported (nor torch) here."""
    reasons = []
    if svc().settings.training_queue != "gpu":
        reasons.append(f"training goes to the {svc().settings.training_queue!r} queue, not a CUDA ('gpu') one")
    if importlib.util.find_spec("bitsandbytes") is None:
        reasons.append("the bitsandbytes package is not installed")
    return "; ".join(reasons) or None


def check_method_options(method_type: str, hp: Hyperparameters, train: dict[str, Any],
                         valid: dict[str, Any] | None, context_length: int) -> None:
    """What the hyperparameters alone cannot tell: the files' format, a validation file where an option
    needs one, QLoRA on this server, the sequence length against the model's context."""
    need = METHOD_FORMAT[method_type]
    for f, param in ((train, "training_file"), (valid, "validation_file")):
        if f is not None and file_format(f) != need:
            have = file_format(f)
            raise ValidationError(f"{param} {f['id']} is in {FORMAT_NAMES.get(have, have)}; method "
                                  f"\"{method_type}\" needs {FORMAT_NAMES[need]}", param=param,
                                  code="invalid_file_format")
    if valid is None:
        for name in ("early_stopping_patience", "eval_interval"):
            if getattr(hp, name) is not None:
                raise ValidationError(f"{name} needs a validation_file (evaluation, and early stopping on its "
                                      "loss, run on the validation file)", param=hp.param(name))
    if hp.qlora:
        why = qlora_unavailable()
        if why:
            raise ValidationError(f"qlora is not available on this server: {why}", param=hp.param("qlora"),
                                  code="unsupported_hyperparameter")
    if hp.max_seq_len is not None and hp.max_seq_len > context_length:
        raise ValidationError(f"max_seq_len {hp.max_seq_len} is over the model's context length of "
                              f"{context_length}", param=hp.param("max_seq_len"))
    # a bound on one step's activations: batch_size x max_seq_len tokens per process (the worker host's
    # memory is shared with the other workers, and on a small server with Postgres)
    s = svc().settings
    seq = hp.max_seq_len or s.max_seq_len
    if isinstance(hp.batch_size, int) and hp.batch_size * seq > s.max_batch_tokens:
        raise ValidationError(f"batch_size {hp.batch_size} x max_seq_len {seq} = {hp.batch_size * seq} tokens a "
                              f"step, over this server's limit of {s.max_batch_tokens} (TUNELOG_MAX_BATCH_TOKENS)",
                              param=hp.param("batch_size"))


@bp.post("/fine_tuning/jobs")
def create_job():
    p = require("admin", "trainer")
    body = _job_body(ALLOWED_JOB_KEYS)
    return _create_job(p, body, Idempotent(body))


@bp.post("/fine_tuning/jobs/<job_id>/rerun")
def rerun_job(job_id: str):
    """The job's spec (files, method, hyperparameters OpenAI's API shares, seed, suffix, metadata) submitted
    again, to another model or backend: `{"model": "smollm2-135m-instruct"}` trains locally what a provider
    trained (or the reverse). Fields in the body replace the old job's; lineage links the two jobs."""
    p = require("admin", "trainer")
    old = _get_job(job_id)
    patch = _job_body(RERUN_KEYS)
    if "model" not in patch:
        raise ValidationError("model is required: the model (or provider model) the job is re-run on", param="model")
    body: dict[str, Any] = {"model": patch["model"], "training_file": old["training_file"],
                            "validation_file": old["validation_file"], "seed": old["seed"], "suffix": old["suffix"],
                            "metadata": old["metadata"]}
    mtype = (old["method"] or {}).get("type", "supervised")
    if mtype == "dspy" and "method" not in patch:  # the same optimization, on another chat model
        body["method"] = {"type": "dspy", "dspy": {k: v for k, v in (old["method"].get("dspy") or {}).items()
                                                   if v is not None and not (k == "seed" and "seed" in patch)}}
    elif "method" not in patch and "hyperparameters" not in patch:
        hp = {k: v for k, v in (old["hyperparameters"] or {}).items()
              if k in OPENAI_PORTABLE_KEYS or (k == "beta" and mtype == "dpo")}
        body["method"] = {"type": mtype, mtype: {"hyperparameters": hp}}
    body.update({k: v for k, v in patch.items() if k != "model"})
    return _create_job(p, body, Idempotent({"rerun": job_id, **patch}), rerun_of=job_id)


# the hyperparameters every backend takes: what a re-run carries over from the old job
OPENAI_PORTABLE_KEYS = ("n_epochs", "batch_size", "learning_rate_multiplier")


def _job_body(allowed: set[str]) -> dict[str, Any]:
    try:
        body = json_body()
    except RecursionError:  # the json module's limit on nesting; a body that deep is no job request
        raise ValidationError("the request body is nested too deeply", param=None) from None
    unknown = set(body) - allowed
    if unknown:
        raise ValidationError(f"unrecognized request argument(s): {', '.join(sorted(unknown))}",
                              param=sorted(unknown)[0])
    return body


def _create_job(p, body: dict[str, Any], idem: Idempotent, rerun_of: str | None = None):
    raw_method = body.get("method")
    if isinstance(raw_method, dict) and raw_method.get("type") == "dspy":
        return _create_dspy_job(p, body, idem, rerun_of)
    backend, context_length = _resolve_model(body.get("model"))
    if backend == "provider":
        _check_delegation(p.project, body["model"])
    train, valid = _job_files(body, context_length)
    n_train = train["stats"].get("n_examples") or 0
    if n_train < svc().settings.min_examples:
        raise ValidationError(f"training_file {train['id']} has {n_train} example(s); at least "
                              f"{svc().settings.min_examples} are required [too_few_examples]",
                              param="training_file", code="invalid_file_format")
    suffix, seed, meta = _job_fields(body)
    method_type, hp = parse_method(body.get("method"), body.get("hyperparameters"))
    job_id = "ftjob-" + uuid.uuid4().hex[:24]
    extra: list[Append] = []
    follow: list[NewEvent] = []
    if backend == "provider":
        _check_delegated_options(method_type, body.get("method"), train, valid)
        # what the provider is sent (OpenAI's own keys; "auto" left to the provider), and shown as OpenAI does
        stored = {k: getattr(hp, k) for k in (*OPENAI_PORTABLE_KEYS, *(("beta",) if method_type == "dpo" else ()))}
        estimate, charge = _estimate_cost(p.project, job_id, body["model"], train, hp)
        follow.append(NewEvent(estimate.type, estimate.to_data(), metadata(job_id)))
        extra += charge
    else:
        check_method_options(method_type, hp, train, valid, context_length or 0)
        stored = hp.resolve(train["stats"].get("n_examples") or 0)
    ev = JobCreated(
        id=job_id, project=p.project, model=body["model"], backend=backend,
        queue="cpu" if backend == "provider" else svc().settings.training_queue, training_file=train["id"],
        training_file_sha256=train["sha256"], validation_file=valid["id"] if valid else None,
        validation_file_sha256=valid["sha256"] if valid else None, hyperparameters=stored,
        method={"type": method_type, method_type: {"hyperparameters": stored}},
        suffix=suffix, seed=seed, metadata=meta, created_at=now(), rerun_of=rerun_of,
    )
    state = fold([(ev.type, ev.to_data(), 1)] + [(e.type, e.data, 2 + i) for i, e in enumerate(follow)])
    return append_and_respond(idem, 200, job_object(state), lambda cmd: svc().store.append_many(
        [Append(job_stream(job_id), 0, [NewEvent(ev.type, ev.to_data(), metadata(job_id)), *follow]), *extra],
        command=cmd))


def _job_files(body: dict[str, Any], context_length: int | None) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The training and validation files a job names: this project's, for fine-tuning, within the context."""
    if not isinstance(body.get("training_file"), str):
        raise ValidationError("training_file is required (an uploaded file id)", param="training_file")
    if body.get("validation_file") is not None and not isinstance(body["validation_file"], str):
        raise ValidationError("validation_file must be an uploaded file id", param="validation_file")
    train = _get_file(body["training_file"], param="training_file")
    valid = _get_file(body["validation_file"], param="validation_file") if body.get("validation_file") else None
    for f, param in ((train, "training_file"), (valid, "validation_file")):
        if f is not None and f["purpose"] != "fine-tune":
            raise ValidationError(f"{param} {f['id']} has purpose {f['purpose']!r}, not 'fine-tune'", param=param)
        if f is not None and context_length and (f["stats"].get("max_tokens") or 0) > context_length:
            raise ValidationError(f"{param} {f['id']} has an example of {f['stats']['max_tokens']} tokens, over "
                                  f"the model's context length of {context_length}", param=param)
    return train, valid


def _job_fields(body: dict[str, Any]) -> tuple[str | None, int, dict[str, str] | None]:
    """(suffix, seed, metadata) of a job request, checked; a seed is drawn when none is given."""
    suffix = body.get("suffix")
    if suffix is not None and (not isinstance(suffix, str) or not SUFFIX_RE.match(suffix)):
        raise ValidationError("suffix must be 1-64 characters of letters, digits, '-' or '_'", param="suffix")
    seed = body.get("seed")
    if seed is None:
        seed = random.randint(0, 2**31 - 1)
    elif isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**31:
        raise ValidationError("seed must be an integer between 0 and 2147483647", param="seed")
    meta = body.get("metadata")
    if meta is not None and (not isinstance(meta, dict) or len(meta) > 16 or
                             not all(isinstance(k, str) and len(k) <= 64 and isinstance(v, str) and len(v) <= 512
                                     and storable(k) and storable(v) for k, v in meta.items())):
        raise ValidationError("metadata must be an object of at most 16 string keys (<= 64 chars) and "
                              "string values (<= 512 chars), without NUL", param="metadata")
    if body.get("integrations"):
        raise ValidationError("integrations are not supported", param="integrations")
    return suffix, seed, meta


def _program_runner(project: str, name: Any, param: str):
    """The chat model a DSPy program runs on (or is judged by): a bundled model, a fine-tuned model of the
    project, an alias of either (pinned to what it names now), or a delegated provider's model."""
    from api.registry import resolve

    if not isinstance(name, str) or not name or len(name) > 256 or not storable(name):
        raise ValidationError(f"{param} is required: the chat model the program runs on (e.g. "
                              "'smollm2-135m-instruct', a fine-tuned model, or an alias such as 'tutor')", param=param)
    try:
        resolved = resolve(project, name)
    except NotFound:
        raise ValidationError(f"{param} {name!r} does not exist in this project (nor an alias of that name)",
                              param=param, code="model_not_available") from None
    if resolved.backend == "dspy-program":
        raise ValidationError(f"{param} {name!r} is a DSPy program; a program runs on a chat model: give the model "
                              f"it runs on ({resolved.base_model!r})", param=param, code="model_not_available")
    if ":ckpt-step-" in resolved.id:
        raise ValidationError(f"{param} {name!r} is a checkpoint (checkpoints rotate away); give a model",
                              param=param, code="model_not_available")
    if resolved.backend == "provider":
        _check_delegation(project, resolved.id)
    return resolved


def _dspy_file(f: dict[str, Any], param: str) -> int:
    """The number of question/answer pairs in a file a DSPy job names (400 with line numbers otherwise)."""
    from domain.datasets import dspy_examples

    if file_format(f) not in DSPY_FORMATS:
        raise ValidationError(f"{param} {f['id']} is in {FORMAT_NAMES.get(file_format(f), file_format(f))}; "
                              f"method \"dspy\" needs question/answer pairs: {FORMAT_NAMES['dspy']} or "
                              f"{FORMAT_NAMES['chat']}", param=param, code="invalid_file_format")
    with svc().pool.connection() as c:
        blob = c.execute("SELECT content FROM blobs WHERE sha256 = %s", (f["sha256"],)).fetchone()
    from eventlog.programs import MAX_CONTEXT_ITEMS, MAX_DEMO_TEXT

    try:
        found = dspy_examples(bytes(blob["content"]))
    except ValidationError as e:
        raise ValidationError(f"{param} {f['id']}: {e.message}", param=param, code="invalid_file_format") from None
    # an example may become a demo of the program: what a program may hold is checked now, not at the job's end
    over = [e["line"] for e in found if "\x00" in e["question"] + e["answer"] + "".join(e["context"])
            or max(len(e["question"]), len(e["answer"]), sum(len(c) for c in e["context"])) > MAX_DEMO_TEXT
            or len(e["context"]) > MAX_CONTEXT_ITEMS]
    if over:
        lines = ", ".join(str(n) for n in over[:10]) + (f" and {len(over) - 10} more" if len(over) > 10 else "")
        raise ValidationError(f"{param} {f['id']}: a question, answer or context over {MAX_DEMO_TEXT} characters (or "
                              f"over {MAX_CONTEXT_ITEMS} passages, or with NUL) cannot be a program's demo "
                              f"[example_too_long] on line(s) {lines}", param=param, code="invalid_file_format")
    n = len(found)
    low = DSPY_MIN_EXAMPLES if param == "training_file" else 1
    if not low <= n <= DSPY_MAX_EXAMPLES:
        raise ValidationError(f"{param} {f['id']} has {n} example(s); a DSPy job takes {low} to "
                              f"{DSPY_MAX_EXAMPLES} (each costs LM calls in every evaluation)"
                              + (" [too_few_examples]" if n < low else ""), param=param, code="invalid_file_format")
    return n


def _dspy_calls(opts: dict[str, Any], n_train: int, n_dev: int) -> int | None:
    """About how many LM calls an optimizer with a fixed plan makes (the dev set before and after, each
    candidate's evaluation, one teacher call per training example); a judged metric doubles each evaluation."""
    per_eval = n_dev * (2 if opts["metric"] in ("llm_judge", "semantic_f1") else 1)
    if opts["optimizer"] == "bootstrap_few_shot":
        return 2 * per_eval + n_train
    if opts["optimizer"] == "bootstrap_few_shot_with_random_search":
        return (opts["num_candidate_programs"] + 3 + 2) * per_eval + n_train * (opts["num_candidate_programs"] + 1)
    return None  # MIPROv2 and GEPA plan as they go: bounded by TUNELOG_DSPY_MAX_SECONDS


def _create_dspy_job(p, body: dict[str, Any], idem: Idempotent, rerun_of: str | None):
    """method.type "dspy": the tutor program optimized over the chat model `model` (workers/dspy_opt.py)."""
    runner = _program_runner(p.project, body.get("model"), "model")
    _method_type, opts = parse_method(body.get("method"), body.get("hyperparameters"))
    judge = _program_runner(p.project, opts.judge_model, "method.dspy.judge_model") if opts.judge_model else None
    train, valid = _job_files(body, None)
    n_train = _dspy_file(train, "training_file")
    if valid is not None:
        _dspy_file(valid, "validation_file")
    suffix, seed, meta = _job_fields(body)
    if opts.seed is not None:
        if body.get("seed") is not None and body["seed"] != opts.seed:
            raise ValidationError(f"seed {body['seed']} and method.dspy.seed {opts.seed} differ; give one",
                                  param="method.dspy.seed")
        seed = opts.seed
    stored = opts.resolve(n_train)
    stored.update(seed=seed, judge_model=judge.id if judge else None)
    if any(r is not None and r.backend == "provider" for r in (runner, judge)):
        from api.registry import settings_for

        if settings_for(p.project).monthly_budget_usd is not None:
            raise ValidationError("this project has a monthly budget, and a DSPy job's calls to a provider are not "
                                  "budgeted yet; optimize over a local model", param="model", code="budget_exceeded")
    n_dev = (valid["stats"].get("n_examples") or 0) if valid else n_train
    calls = _dspy_calls(stored, n_train, n_dev)
    if calls is not None and calls > svc().settings.dspy_max_lm_calls:
        raise ValidationError(f"this optimization would make about {calls} LM calls ({n_train} training and {n_dev} "
                              f"dev examples); this server allows {svc().settings.dspy_max_lm_calls} a job "
                              "(TUNELOG_DSPY_MAX_LM_CALLS): use fewer examples or candidates", param="method.dspy",
                              code="job_too_large")
    job_id = "ftjob-" + uuid.uuid4().hex[:24]
    ev = JobCreated(
        id=job_id, project=p.project, model=runner.id, backend="dspy", queue="cpu", training_file=train["id"],
        training_file_sha256=train["sha256"], validation_file=valid["id"] if valid else None,
        validation_file_sha256=valid["sha256"] if valid else None, hyperparameters=stored,
        method={"type": "dspy", "dspy": stored}, suffix=suffix, seed=seed, metadata=meta, created_at=now(),
        rerun_of=rerun_of,
    )
    state = fold([(ev.type, ev.to_data(), 1)])
    return append_and_respond(idem, 200, job_object(state), lambda cmd: svc().store.append(
        job_stream(job_id), 0, [NewEvent(ev.type, ev.to_data(), metadata(job_id))], command=cmd))


def _check_delegation(project: str, model: str) -> None:
    """A delegated job may be created: the project allows external providers, and the provider has a key."""
    from api.registry import settings_for

    if settings_for(project).local_only:
        raise ValidationError(f"model {model!r} is trained by an external provider, and this project is local-only "
                              "(settings: local_only); train a local model instead", param="model", code="local_only")
    provider, _ = provider_of(model)
    if provider.api_key() is None:
        raise ValidationError(f"provider {provider.name!r} has no API key configured on this server (the operator "
                              f"sets {provider.key_source})", param="model", code="provider_not_configured")


def _check_delegated_options(method_type: str, raw_method: Any, train: dict[str, Any],
                             valid: dict[str, Any] | None) -> None:
    """A provider takes OpenAI's hyperparameters only: tunelog's local options would be silently dropped."""
    given = (((raw_method or {}).get(method_type) or {}).get("hyperparameters") or {}) \
        if isinstance(raw_method, dict) else {}
    local = sorted(k for k in given if k in EXTENSION_KEYS)
    if local:
        raise ValidationError(f"hyperparameter {local[0]!r} is a local-training option; a delegated job takes "
                              f"OpenAI's n_epochs, batch_size, learning_rate_multiplier"
                              f"{' and beta' if method_type == 'dpo' else ''} only",
                              param=f"method.{method_type}.hyperparameters.{local[0]}",
                              code="unsupported_hyperparameter")
    need = METHOD_FORMAT[method_type]
    for f, param in ((train, "training_file"), (valid, "validation_file")):
        if f is not None and file_format(f) != need:
            raise ValidationError(f"{param} {f['id']} is in {FORMAT_NAMES.get(file_format(f), file_format(f))}; "
                                  f"method \"{method_type}\" needs {FORMAT_NAMES[need]}", param=param,
                                  code="invalid_file_format")


def _estimate_cost(project: str, job_id: str, model: str, train: dict[str, Any], hp):
    """CostEstimated (tokens x epochs x the price table's price), and, where the project has a monthly budget,
    the charge against it: appended with the job to this month's budget stream at its version, so two jobs
    created at once cannot both spend the last of the budget (a 400 when it would be exceeded)."""
    import datetime

    from api.registry import settings_for
    from eventlog import providers

    tokens = int(train["stats"].get("total_tokens") or 0)
    epochs = hp.n_epochs if hp.n_epochs != "auto" else openai_auto_epochs(train["stats"].get("n_examples") or 0)
    price = providers.load(svc().settings.data_dir).price(model)
    cost = round(tokens * epochs * price / 1e6, 6) if price is not None else None
    estimate = CostEstimated(tokens=tokens, n_epochs=epochs, price_per_million_usd=price, estimated_cost_usd=cost,
                             at=now())
    budget = settings_for(project).monthly_budget_usd
    if budget is None:
        return estimate, []
    if cost is None:
        raise ValidationError(f"this project has a monthly budget, and the price table has no price for {model!r}, "
                              "so its cost cannot be checked (the operator adds it under [prices])", param="model",
                              code="budget_exceeded")
    month = datetime.datetime.now(datetime.UTC).strftime("%Y-%m")
    stream = budget_stream(project, month)
    events = svc().store.read_stream(stream)
    spent = sum(e.data["amount_usd"] for e in events if e.type == "BudgetCharged")
    if spent + cost > budget + 1e-9:
        raise ValidationError(f"this job's estimated cost of ${cost:.2f} ({tokens} tokens x {epochs} epoch(s) at "
                              f"${price}/1M) would exceed this project's monthly budget of ${budget:.2f} "
                              f"(${spent:.2f} spent in {month})", param="model", code="budget_exceeded")
    charge = BudgetCharged(job_id=job_id, amount_usd=cost, at=now(), project=project)
    return estimate, [Append(stream, events[-1].stream_version if events else 0,
                             [NewEvent(charge.type, charge.to_data(), metadata(job_id))])]


@bp.get("/fine_tuning/jobs")
def list_jobs():
    limit = page_limit()
    sql = "SELECT * FROM jobs WHERE project = %s"
    params: list[Any] = [g.principal.project]
    after = query_arg("after")
    if after:
        sql += " AND seq < coalesce((SELECT seq FROM jobs WHERE id = %s AND project = %s), 0)"
        params += [after, g.principal.project]
    filters = 0
    for k in request.args:
        m = re.fullmatch(r"metadata\[(.+)\]", k, flags=re.DOTALL)
        if m:
            filters += 1
            if filters > 16 or len(m.group(1)) > 64 or not storable(m.group(1)):
                raise ValidationError("metadata filters are at most 16 metadata[key]=value pairs, keys of at most "
                                      "64 characters without NUL", param="metadata")
            sql += " AND metadata ->> %s = %s"
            params += [m.group(1), query_arg(k, max_length=512)]
    sql += " ORDER BY seq DESC LIMIT %s"
    params.append(limit + 1)
    with svc().pool.connection() as c:
        rows = c.execute(sql, params).fetchall()
    return jsonify({"object": "list", "data": [job_object(r) for r in rows[:limit]], "has_more": len(rows) > limit})


@bp.get("/fine_tuning/jobs/<job_id>")
def get_job(job_id: str):
    return jsonify(job_object(_get_job(job_id)))


MESSAGES = {
    "JobCreated": lambda d: f"Created fine-tuning job: {d['id']}",
    "JobStarted": lambda d: f"Fine-tuning job started (attempt {d['attempt']})",
    "CancelRequested": lambda d: "Cancellation requested",
    "JobCancelled": lambda d: f"Fine-tuning job cancelled: {d['reason']}",
    "JobAttemptLost": lambda d: (f"Attempt {d['attempt']} lost ({d['reason']}); "
                                 + ("re-queued" if d["requeued"] else "no attempts left")),
    "JobFailed": lambda d: f"Fine-tuning job failed: {d['error']['message']}",
    "JobSucceeded": lambda d: f"The job has successfully completed. New fine-tuned model created: "
                              f"{d['fine_tuned_model']}",
    "CheckpointSaved": lambda d: f"Checkpoint created at step {d['step']}",
    "CheckpointDeleted": lambda d: (f"Checkpoint {d['id']} removed (the last {d['keep']} are kept)" if d.get("keep", 3)
                                    else f"Checkpoint {d['id']} removed with its model"),
    "PauseRequested": lambda d: "Pause requested",
    "JobPaused": lambda d: d.get("reason") or (f"Fine-tuning job paused at step {d['step']}" if d.get("step")
                                               else "Fine-tuning job paused"),
    "ResumeRequested": lambda d: "Resume requested",
    "JobResumed": lambda d: "Fine-tuning job resumed: it continues from its latest checkpoint",
    "JobMessage": lambda d: d["message"],
    "CostEstimated": lambda d: (f"Estimated cost: ${d['estimated_cost_usd']:.4f} ({d['tokens']} training tokens x "
                                f"{d['n_epochs']} epoch(s) at ${d['price_per_million_usd']}/1M tokens)"
                                if d.get("estimated_cost_usd") is not None else
                                f"{d['tokens']} training tokens x {d['n_epochs']} epoch(s); no price is known for this "
                                "model, so no cost estimate"),
    "DataRedacted": lambda d: (f"Redacted before upload to the provider from {d['file']}: {d['emails']} email(s), "
                               f"{d['phones']} phone number(s), {d['names']} name(s); the local copy is unchanged"),
    "RemoteJobCreated": lambda d: (f"Remote job {d['remote_job_id']} "
                                   + ("found (an earlier attempt created it)" if d.get("found_existing") else "created")
                                   + f" at provider {d['provider']}: {d['remote_status']}"),
    "RemoteJobUpdated": lambda d: f"Remote job status: {d['remote_status']}",
}
LEVELS = {"JobFailed": "error", "JobAttemptLost": "warn"}


# OpenAI's metrics fields, then tunelog's: a record carries those it measured (an evaluation at the end
# has no training loss), the others are null
METRIC_FIELDS = ("step", "total_steps", "epoch", "train_loss", "train_mean_token_accuracy", "valid_loss",
                 "valid_mean_token_accuracy", "full_valid_loss", "full_valid_mean_token_accuracy", "learning_rate",
                 "tokens_per_second", "estimated_finish")
# a DSPy job's evaluations (workers/dspy_opt.py): the dev set before (phase "baseline"), each candidate
# ("search") and the result ("final"); scores in [0, 1]
DSPY_METRIC_FIELDS = ("trial", "phase", "score", "best_score", "lm_calls", "lm_cache_hits")
METRIC_LABELS = (("train_loss", "training loss"), ("valid_loss", "validation loss"),
                 ("full_valid_loss", "full validation loss"), ("full_valid_mean_token_accuracy",
                                                               "full validation token accuracy"))


def event_object(e: dict[str, Any]) -> dict[str, Any]:
    d = e["data"]
    created = int(e["recorded_at"].timestamp())
    base = {"object": "fine_tuning.job.event", "id": f"ftevent-{e['global_position']}", "created_at": created}
    if e["type"] == "JobProgressed" and d.get("trial") is not None:
        total = f"/{d['total_steps']}" if d.get("total_steps") else ""
        label = {"baseline": "dev set before", "final": "dev set after"}.get(d.get("phase"), "candidate")
        msg = (f"Evaluation {d['trial']}{total} ({label}): score={d['score']:.4f}, best={d['best_score']:.4f}, "
               f"{d['lm_calls']} LM calls ({d['lm_cache_hits']} from the cache)")
        data = {k: d.get(k) for k in (*METRIC_FIELDS, *DSPY_METRIC_FIELDS)}
        return {**base, "level": "info", "message": msg, "type": "metrics", "data": data}
    if e["type"] == "JobProgressed":
        parts = [f"{label}={d[k]:.4f}" for k, label in METRIC_LABELS if isinstance(d.get(k), (int, float))]
        msg = f"Step {d['step']}/{d['total_steps']}: " + ", ".join(parts)
        data = {k: d.get(k) for k in METRIC_FIELDS}
        return {**base, "level": "info", "message": msg, "type": "metrics", "data": data}
    render = MESSAGES.get(e["type"], lambda _d: e["type"])
    level = d.get("level", "info") if e["type"] == "JobMessage" else LEVELS.get(e["type"], "info")
    return {**base, "level": level, "message": render(d), "type": "message", "data": {}}


@bp.get("/fine_tuning/jobs/<job_id>/events")
def job_events(job_id: str):
    _get_job(job_id)
    limit = page_limit()
    sql = "SELECT global_position, type, data, recorded_at FROM events WHERE stream_id = %s"
    params: list[Any] = [job_stream(job_id)]
    after = request.args.get("after")
    if after:
        m = re.fullmatch(r"ftevent-(\d+)", after)
        if not m:
            raise ValidationError(f"after must be an event id like ftevent-123, got {after!r}", param="after")
        sql += " AND global_position < %s"
        params.append(int(m.group(1)))
    kind = request.args.get("type")
    if kind == "metrics":
        sql += " AND type = 'JobProgressed'"
    elif kind == "message":
        sql += " AND type <> 'JobProgressed'"
    elif kind:
        raise ValidationError("type must be 'message' or 'metrics'", param="type")
    sql += " ORDER BY global_position DESC LIMIT %s"
    params.append(limit + 1)
    with svc().pool.connection() as c:
        rows = c.execute(sql, params).fetchall()
    data = []
    for r in rows[:limit]:  # upcast on read, like every reader of the log
        type_, payload = upcast(r["type"], r["data"])
        data.append(event_object({**r, "type": type_, "data": payload}))
    return jsonify({"object": "list", "data": data, "has_more": len(rows) > limit})


@bp.get("/fine_tuning/jobs/<job_id>/checkpoints")
def job_checkpoints(job_id: str):
    _get_job(job_id)
    limit = page_limit(default=10)
    sql = "SELECT * FROM job_checkpoints WHERE job_id = %s"
    params: list[Any] = [job_id]
    after = query_arg("after")
    if after:
        sql += " AND seq < coalesce((SELECT seq FROM job_checkpoints WHERE id = %s AND job_id = %s), 0)"
        params += [after, job_id]
    sql += " ORDER BY seq DESC LIMIT %s"
    params.append(limit + 1)
    with svc().pool.connection() as c:
        rows = c.execute(sql, params).fetchall()
    return list_page(rows, limit, lambda r: {
        "object": "fine_tuning.job.checkpoint", "id": r["id"], "created_at": r["created_at"],
        "fine_tuned_model_checkpoint": r["fine_tuned_model_checkpoint"], "fine_tuning_job_id": r["job_id"],
        "metrics": r["metrics"], "step_number": r["step"]})


# ---- models --------------------------------------------------------------------------------------------
def _models() -> list[dict[str, Any]]:
    out = [{"id": m.id, "object": "model", "created": m.created, "owned_by": "tunelog", "kind": "base"}
           for m in BASE_MODELS.values()]
    with svc().pool.connection() as c:
        rows = c.execute("SELECT * FROM models WHERE project = %s AND deleted_at IS NULL ORDER BY seq",
                         (g.principal.project,)).fetchall()
    out += [{"id": r["id"], "object": "model", "created": r["created_at"], "owned_by": r["project"],
             "kind": "dspy-program" if r["backend"] == "dspy-program" else "fine-tuned", "root": r["base_model"],
             "parent": r["base_model"], "job_id": r["job_id"], "lineage": r["lineage"]} for r in rows]
    from api.registry import DEFAULT_BASE
    from domain.projects import DEFAULT_ALIAS

    with svc().pool.connection() as c:
        aliases = {r["alias"]: r for r in c.execute("SELECT alias, model, updated_at FROM aliases WHERE project = %s",
                                                    (g.principal.project,)).fetchall()}
    aliases.setdefault(DEFAULT_ALIAS, {"alias": DEFAULT_ALIAS, "model": DEFAULT_BASE, "updated_at": None})
    out += _remote_models()
    out += [{"id": a["alias"], "object": "model", "created": a["updated_at"] or 0, "owned_by": g.principal.project,
             "kind": "alias", "target": a["model"]} for a in sorted(aliases.values(), key=lambda a: a["alias"])]
    return out


def _remote_models() -> list[dict[str, Any]]:
    """The base models of each configured provider with a key (cached; `?refresh=true` asks again), unless
    the project is local-only. Models a tunelog job trained there are listed by their own projects only."""
    from api.registry import settings_for
    from eventlog import providers

    if settings_for(g.principal.project).local_only:
        return []
    try:
        config = providers.load(svc().settings.data_dir)
    except providers.ProviderConfigError:
        return []
    # asking every provider again is for the project's admin, at most once a minute (a shared key's rate limit
    # is every project's)
    refresh = request.args.get("refresh") in ("1", "true") and (g.principal.role == "admin" or g.principal.operator)
    with svc().pool.connection() as c:
        trained = {r["id"] for r in c.execute("SELECT id FROM models WHERE backend = 'provider'").fetchall()}
    out = []
    for provider in config.providers.values():
        if provider.api_key() is None:
            continue
        for m in providers.remote_models(provider, refresh=refresh):
            model_id = f"{provider.name}/{m['id']}"
            if model_id not in trained and not is_trained_id(m["id"]):
                out.append({"id": model_id, "object": "model", "created": m["created"], "owned_by": provider.name,
                            "kind": "remote"})
    return out


@bp.get("/models")
def list_models():
    return jsonify({"object": "list", "data": _models()})


@bp.get("/models/<path:model_id>")
def get_model(model_id: str):
    for m in _models():
        if m["id"] == model_id:
            return jsonify(m)
    raise NotFound(f"the model {model_id!r} does not exist", param="model", code="model_not_found")
