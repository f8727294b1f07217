"""An in-process emulator of OpenAI's fine-tuning API, for tests that cannot reach OpenAI.

Written from OpenAI's published API reference (the Files, Fine-tuning, Models and Chat Completions
sections) and from the request and response types of the official ``openai`` Python SDK, so that the
unmodified SDK (``OpenAI(base_url=provider.start(), api_key=KEY)``) talks to it as it would to OpenAI.
It is a protocol emulator, not a model: nothing is trained and answers are deterministic.

What it emulates, under ``/v1``:

- Files: ``POST /files`` (multipart, ``purpose``), ``GET /files`` (``purpose``, ``limit``, ``after``,
  ``order``), ``GET /files/{id}``, ``GET /files/{id}/content``, ``DELETE /files/{id}``.
- Fine-tuning: ``POST /fine_tuning/jobs`` (``model``, ``training_file``, ``validation_file``, ``suffix``,
  ``seed``, ``metadata``, ``method`` supervised|dpo, legacy ``hyperparameters``), ``GET /fine_tuning/jobs``
  (``after``, ``limit``, ``metadata[k]=v``; newest first), ``GET /fine_tuning/jobs/{id}``,
  ``POST .../cancel``, ``POST .../pause``, ``POST .../resume``, ``GET .../events`` and
  ``GET .../checkpoints`` (``after``, ``limit``; newest first).
- Models: ``GET /models``, ``GET /models/{id}``, ``DELETE /models/{id}`` (fine-tuned models only).
- Chat: ``POST /chat/completions``, plain and streamed (server-sent ``chat.completion.chunk`` events
  ending in ``data: [DONE]``, with a usage chunk when ``stream_options.include_usage`` is set).
- Auth by ``Authorization: Bearer <key>``; errors always as ``{"error": {message, type, param, code}}``.

A job moves through ``validating_files -> queued -> running -> succeeded`` on the wall clock (or the
injected ``clock``): each read brings it up to date, so there is no background thread. Each event,
checkpoint and result file is made once, when its scheduled time has passed, so ids and timestamps are
stable across reads. Tests script faults with ``fail_next``, ``job_failure``, ``fine_tuning_unavailable``
and ``hold``, and inspect ``requests``, ``created_jobs``, ``chat_requests``, ``uploads``, ``file_bytes``.

Choices where the reference is silent (each as observed from OpenAI where known):

- unknown or non-fine-tunable ``model`` on create, or ``fine_tuning_unavailable``: 400
  ``invalid_request_error``, code ``model_not_available``, param ``model``,
  "Model X is not available for fine-tuning or does not exist.";
- unknown ``training_file``/``validation_file``: 400 "invalid training_file: X", param
  ``training_file`` (or ``validation_file``), code null, as OpenAI answers;
- unknown job: 404 code ``fine_tune_not_found``, param ``fine_tune_id``; unknown file: 404
  "No such File object: X", param ``id``; unknown model: 404 code ``model_not_found``;
- cancelling a finished job: 400 code ``job_not_cancellable`` (message names the status); pausing a job
  that is not running or resuming one that is not paused: 400 ``job_not_pausable``/``job_not_resumable``;
- ids follow the reference's examples: ``file-``, ``ftjob-``, ``ft-event-``, ``ftckpt_``, ``chatcmpl-``;
- ``requests`` records every request, before authentication; ``created_jobs`` only the accepted creates;
- a training file with a line that is not a JSON object of the method's shape fails the job in
  validation with code ``invalid_training_file``; fewer than ``min_examples`` (OpenAI's minimum, 10)
  lines fail it with code ``invalid_n_examples``;
- result files are base64-encoded CSV (``step_metrics.csv``, purpose ``fine-tune-results``), as
  OpenAI's are.
"""
from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
import string
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException
from werkzeug.serving import WSGIRequestHandler, make_server

ORGANIZATION_ID = "org-emulator"
ORG_NAME = "emulator"  # the organization part of fine-tuned model names: ft:<model>:<org>:<suffix>:<id>

# Base models the emulator serves and can fine-tune, with their `created` times, and the aliases that
# OpenAI resolves to a dated snapshot (the job's `model` shows the snapshot).
BASE_MODELS: dict[str, int] = {
    "gpt-4o-mini-2024-07-18": 1721172741,
    "gpt-4o-2024-08-06": 1722814719,
    "gpt-4.1-mini-2025-04-14": 1744317547,
    "gpt-4.1-nano-2025-04-14": 1744321025,
}
MODEL_ALIASES: dict[str, str] = {
    "gpt-4o-mini": "gpt-4o-mini-2024-07-18",
    "gpt-4o": "gpt-4o-2024-08-06",
    "gpt-4.1-mini": "gpt-4.1-mini-2025-04-14",
    "gpt-4.1-nano": "gpt-4.1-nano-2025-04-14",
}
FILE_PURPOSES = ("assistants", "batch", "fine-tune", "vision", "user_data", "evals")
TERMINAL = ("succeeded", "failed", "cancelled")
HYPERPARAMETER_BOUNDS = {  # name: (lowest, highest, integer only), as the reference bounds them
    "n_epochs": (1, 50, True), "batch_size": (1, 256, True), "learning_rate_multiplier": (1e-9, 1e9, False),
    "beta": (1e-9, 2, False),
}
AUTO_HYPERPARAMETERS = {"n_epochs": 3, "batch_size": 1, "learning_rate_multiplier": 2.0, "beta": 0.1}

_ALPHABET = string.ascii_letters + string.digits


class _QuietHandler(WSGIRequestHandler):
    """Keeps the access log out of test output; errors are still logged."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass


def _new_id(prefix: str, n: int = 24) -> str:
    return prefix + "".join(secrets.choice(_ALPHABET) for _ in range(n))


def _mask_key(key: str) -> str:
    """OpenAI's way of naming a wrong key without repeating it: sk-*****ZXY."""
    if len(key) <= 8:
        return "*" * len(key)
    return key[:3] + "*" * (len(key) - 7) + key[-4:]


class ApiError(Exception):
    """An error answered as OpenAI's error object."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def _fault(status: int, retry_after: float | None, message: str | None) -> ApiError:
    headers = {}
    if status == 429 and retry_after is None:
        retry_after = 1
    if retry_after is not None:
        headers["Retry-After"] = str(int(retry_after) if float(retry_after).is_integer() else retry_after)
    if status == 429:
        return ApiError(429, message or "Rate limit reached for requests per min (RPM). Please try again later.",
                        type="requests", code="rate_limit_exceeded", headers=headers)
    if status == 503:
        return ApiError(503, message or "The server is overloaded or not ready yet.", type="server_error",
                        headers=headers)
    if status >= 500:
        return ApiError(status, message or "The server had an error while processing your request. Sorry about that!",
                        type="server_error", headers=headers)
    return ApiError(status, message or f"Emulated failure (HTTP {status}).", headers=headers)


def _page(items: list[dict[str, Any]], after: str | None, limit: int, *, ids: bool) -> dict[str, Any]:
    """One page of a list already in the order served; `after` is the id of the last item seen."""
    if after:
        index = next((i for i, item in enumerate(items) if item["id"] == after), None)
        items = [] if index is None else items[index + 1:]
    data = items[:limit]
    page: dict[str, Any] = {"object": "list", "data": data, "has_more": len(items) > limit}
    if ids:
        page["first_id"] = data[0]["id"] if data else None
        page["last_id"] = data[-1]["id"] if data else None
    return page


def _int_arg(name: str, default: int, maximum: int) -> int:
    raw = request.args.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(400, f"Invalid '{name}': expected an integer, got {raw!r}.", param=name) from None
    if not 1 <= value <= maximum:
        raise ApiError(400, f"Invalid '{name}': must be between 1 and {maximum}.", param=name)
    return value


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(part.get("text", "") for part in content if isinstance(part, dict))
    return ""


class EmulatedProvider:
    """OpenAI's fine-tuning API on a loopback port; see the module docstring.

    Timings are read when a job is created, so a test may change them between jobs; `hold` and
    `fine_tuning_unavailable` are read on each request.
    """

    def __init__(self, api_key: str, *, validation_seconds: float = 0.5, queue_seconds: float = 0.3, steps: int = 4,
                 step_seconds: float = 0.3, checkpoint_count: int = 3, min_examples: int = 10,
                 clock: Callable[[], float] = time.time, max_upload_bytes: int = 64 * 1024 * 1024) -> None:
        if not api_key:
            raise ValueError("api_key must be a non-empty string")
        self.api_key = api_key
        self.validation_seconds = validation_seconds
        self.queue_seconds = queue_seconds
        self.steps = steps
        self.step_seconds = step_seconds
        self.checkpoint_count = checkpoint_count
        self.min_examples = min_examples
        self.clock = clock
        self.max_upload_bytes = max_upload_bytes
        # scriptable behaviour
        self.job_failure: dict[str, Any] | None = None  # {"code", "message", "param"?}: new jobs fail in validation
        self.fine_tuning_unavailable = False  # create answers 400 model_not_available
        self.hold = False  # running jobs stop before their last step until this is cleared
        self.responder: Callable[[str, list[dict[str, Any]]], str] | None = None  # (model, messages) -> answer text
        # what the tests read
        self.requests: list[tuple[str, str]] = []
        self.created_jobs: list[dict[str, Any]] = []
        self.chat_requests: list[dict[str, Any]] = []
        self.uploads: list[tuple[str, bytes]] = []
        self._faults: list[dict[str, Any]] = []
        self._files: dict[str, dict[str, Any]] = {}
        self._contents: dict[str, bytes] = {}
        self._jobs: dict[str, dict[str, Any]] = {}
        self._deleted_models: set[str] = set()
        self._lock = threading.RLock()
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self.base_url: str | None = None

    # ---- lifecycle -----------------------------------------------------------------------------

    def start(self) -> str:
        """Serve on a free loopback port in a daemon thread; returns the base URL (``http://127.0.0.1:P/v1``)."""
        if self._server is not None:
            assert self.base_url is not None
            return self.base_url
        self._server = make_server("127.0.0.1", 0, self._make_app(), threaded=True,
                                   request_handler=_QuietHandler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="openai-emulator", daemon=True)
        self._thread.start()
        self.base_url = f"http://127.0.0.1:{self._server.server_port}/v1"
        return self.base_url

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server, self._thread = None, None

    def __enter__(self) -> EmulatedProvider:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- test helpers --------------------------------------------------------------------------

    def fail_next(self, n: int, status: int, path_contains: str | None = None, retry_after: float | None = None, *,
                  method: str | None = None, message: str | None = None) -> None:
        """Answer the next `n` authenticated requests whose path contains `path_contains` (and whose method is
        `method`, if given) with `status` and OpenAI's error body for it, without handling them: 429 carries
        ``Retry-After`` (1 unless given) and code ``rate_limit_exceeded``; 5xx are ``server_error``s."""
        with self._lock:
            self._faults.append({"n": n, "status": status, "path": path_contains, "retry_after": retry_after,
                                 "method": method.upper() if method else None, "message": message})

    def file_bytes(self, file_id: str) -> bytes:
        """The stored contents of a file (uploaded or made by a job), even after it was deleted."""
        with self._lock:
            return self._contents[file_id]

    def get_job(self, job_id: str) -> dict[str, Any]:
        """The job object as a retrieve would answer it now."""
        with self._lock:
            return json.loads(json.dumps(self._public_job(self._advanced(job_id))))

    @property
    def last_chat_messages(self) -> list[dict[str, Any]] | None:
        with self._lock:
            return self.chat_requests[-1].get("messages") if self.chat_requests else None

    # ---- the HTTP application ------------------------------------------------------------------

    def _make_app(self) -> Flask:
        app = Flask("openai_emulator")
        app.config["MAX_CONTENT_LENGTH"] = self.max_upload_bytes
        p = self

        @app.before_request
        def _gate() -> Response | None:
            with p._lock:
                p.requests.append((request.method, request.path))
            header = request.headers.get("Authorization", "")
            if not header.startswith("Bearer ") or not header[7:].strip():
                raise ApiError(401, "You didn't provide an API key. You need to provide your API key in an "
                               "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).")
            given = header[7:].strip()
            if not secrets.compare_digest(given.encode(), p.api_key.encode()):
                raise ApiError(401, f"Incorrect API key provided: {_mask_key(given)}. You can find your API key at "
                               "https://platform.openai.com/account/api-keys.", code="invalid_api_key")
            fault = p._take_fault(request.method, request.path)
            if fault is not None:
                raise fault
            return None

        @app.errorhandler(ApiError)
        def _api_error(e: ApiError) -> Response:
            return p._json(e.body(), e.status, e.headers)

        @app.errorhandler(HTTPException)
        def _http_error(e: HTTPException) -> Response:
            status = e.code or 500
            if status in (404, 405):
                message = f"Invalid URL ({request.method} {request.path})"
            elif status == 413:
                message = f"File too large: the emulator accepts at most {p.max_upload_bytes} bytes."
            else:
                message = e.description or e.name
            return p._json(ApiError(status, message).body(), status)

        r = app.add_url_rule
        r("/v1/files", view_func=p._upload_file, methods=["POST"])
        r("/v1/files", view_func=p._list_files, methods=["GET"])
        r("/v1/files/<file_id>", view_func=p._retrieve_file, methods=["GET"])
        r("/v1/files/<file_id>", view_func=p._delete_file, methods=["DELETE"])
        r("/v1/files/<file_id>/content", view_func=p._file_content, methods=["GET"])
        r("/v1/fine_tuning/jobs", view_func=p._create_job, methods=["POST"])
        r("/v1/fine_tuning/jobs", view_func=p._list_jobs, methods=["GET"])
        r("/v1/fine_tuning/jobs/<job_id>", view_func=p._retrieve_job, methods=["GET"])
        r("/v1/fine_tuning/jobs/<job_id>/cancel", view_func=p._cancel_job, methods=["POST"])
        r("/v1/fine_tuning/jobs/<job_id>/pause", view_func=p._pause_job, methods=["POST"])
        r("/v1/fine_tuning/jobs/<job_id>/resume", view_func=p._resume_job, methods=["POST"])
        r("/v1/fine_tuning/jobs/<job_id>/events", view_func=p._list_events, methods=["GET"])
        r("/v1/fine_tuning/jobs/<job_id>/checkpoints", view_func=p._list_checkpoints, methods=["GET"])
        r("/v1/models", view_func=p._list_models, methods=["GET"])
        r("/v1/models/<path:model_id>", view_func=p._retrieve_model, methods=["GET"])
        r("/v1/models/<path:model_id>", view_func=p._delete_model, methods=["DELETE"])
        r("/v1/chat/completions", view_func=p._chat, methods=["POST"])
        return app

    @staticmethod
    def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
        response = Response(json.dumps(body), status=status, mimetype="application/json")
        response.headers["x-request-id"] = "req_" + secrets.token_hex(16)
        for name, value in (headers or {}).items():
            response.headers[name] = value
        return response

    def _take_fault(self, method: str, path: str) -> ApiError | None:
        with self._lock:
            for rule in self._faults:
                if rule["n"] <= 0 or (rule["path"] and rule["path"] not in path):
                    continue
                if rule["method"] and rule["method"] != method:
                    continue
                rule["n"] -= 1
                return _fault(rule["status"], rule["retry_after"], rule["message"])
        return None

    @staticmethod
    def _body() -> dict[str, Any]:
        body = request.get_json(silent=True)
        if not isinstance(body, dict):
            raise ApiError(400, "We could not parse the JSON body of your request. (HINT: This likely means you "
                           "aren't using your HTTP library correctly. The OpenAI API expects a JSON payload.)")
        return body

    # ---- files -----------------------------------------------------------------------------------

    def _store_file(self, filename: str, data: bytes, purpose: str) -> dict[str, Any]:
        file_obj = {"id": _new_id("file-", 22), "object": "file", "bytes": len(data), "created_at": int(self.clock()),
                    "filename": filename, "purpose": purpose, "status": "processed", "expires_at": None,
                    "status_details": None}
        self._files[file_obj["id"]] = file_obj
        self._contents[file_obj["id"]] = data
        return file_obj

    def _upload_file(self) -> Response:
        purpose = request.form.get("purpose")
        upload = request.files.get("file")
        if not purpose:
            raise ApiError(400, "Missing required parameter: 'purpose'.", param="purpose",
                           code="missing_required_parameter")
        if purpose not in FILE_PURPOSES:
            raise ApiError(400, f"'{purpose}' is not one of {list(FILE_PURPOSES)} - 'purpose'", param="purpose")
        if upload is None:
            raise ApiError(400, "Missing required parameter: 'file'.", param="file", code="missing_required_parameter")
        filename = upload.filename or "upload"
        if purpose == "fine-tune" and not filename.endswith(".jsonl"):
            raise ApiError(400, "Invalid file format for Fine-Tuning API. Must be .jsonl", param="file")
        data = upload.read()
        with self._lock:
            self.uploads.append((filename, data))
            return self._json(self._store_file(filename, data, purpose))

    def _file_or_404(self, file_id: str) -> dict[str, Any]:
        file_obj = self._files.get(file_id)
        if file_obj is None:
            raise ApiError(404, f"No such File object: {file_id}", param="id")
        return file_obj

    def _list_files(self) -> Response:
        purpose = request.args.get("purpose")
        order = request.args.get("order", "desc")
        if order not in ("asc", "desc"):
            raise ApiError(400, f"Invalid 'order': {order!r} is not one of ['asc', 'desc'].", param="order")
        limit = _int_arg("limit", 10000, 10000)
        with self._lock:
            files = [f for f in self._files.values() if purpose is None or f["purpose"] == purpose]
            if order == "desc":
                files.reverse()  # dicts keep upload order, which is created_at order
            return self._json(_page(files, request.args.get("after"), limit, ids=True))

    def _retrieve_file(self, file_id: str) -> Response:
        with self._lock:
            return self._json(self._file_or_404(file_id))

    def _delete_file(self, file_id: str) -> Response:
        with self._lock:
            self._file_or_404(file_id)
            del self._files[file_id]
            return self._json({"id": file_id, "object": "file", "deleted": True})

    def _file_content(self, file_id: str) -> Response:
        with self._lock:
            self._file_or_404(file_id)
            data = self._contents[file_id]
        return Response(data, mimetype="application/octet-stream")

    # ---- fine-tuning jobs --------------------------------------------------------------------

    def _fine_tunable(self, model: str) -> str | None:
        """The snapshot a fine-tuning job on `model` trains, or None if it cannot be fine-tuned."""
        model = MODEL_ALIASES.get(model, model)
        if model in BASE_MODELS:
            return model
        if any(j["fine_tuned_model"] == model for j in self._jobs.values()) and model not in self._deleted_models:
            return model  # OpenAI fine-tunes a fine-tuned model further
        return None

    def _create_job(self) -> Response:
        body = self._body()
        for name in ("model", "training_file"):
            if not isinstance(body.get(name), str) or not body[name]:
                raise ApiError(400, f"Missing required parameter: '{name}'.", param=name,
                               code="missing_required_parameter")
        suffix = body.get("suffix")
        if suffix is not None and (not isinstance(suffix, str) or len(suffix) > 64):
            raise ApiError(400, "Invalid 'suffix': expected a string of at most 64 characters.", param="suffix")
        metadata = body.get("metadata")
        if metadata is not None and (
                not isinstance(metadata, dict) or len(metadata) > 16
                or any(not isinstance(v, str) or len(k) > 64 or len(v) > 512 for k, v in metadata.items())):
            raise ApiError(400, "Invalid 'metadata': at most 16 pairs, keys up to 64 characters and string "
                           "values up to 512 characters.", param="metadata")
        seed = body.get("seed")
        if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
            raise ApiError(400, "Invalid 'seed': expected an integer.", param="seed")
        method = self._method_of(body)
        with self._lock:
            model = None if self.fine_tuning_unavailable else self._fine_tunable(body["model"])
            if model is None:
                raise ApiError(400, f"Model {body['model']} is not available for fine-tuning or does not exist.",
                               param="model", code="model_not_available")
            for name in ("training_file", "validation_file"):
                file_id = body.get(name)
                if file_id is None:
                    continue
                file_obj = self._files.get(file_id) if isinstance(file_id, str) else None
                if file_obj is None or file_obj["purpose"] != "fine-tune":
                    raise ApiError(400, f"invalid {name}: {file_id}", param=name)
            job = self._new_job(body, model, method)
            self._jobs[job["id"]] = job
            self.created_jobs.append(json.loads(json.dumps(body)))
            return self._json(self._public_job(job))

    @staticmethod
    def _method_of(body: dict[str, Any]) -> dict[str, Any]:
        method = body.get("method")
        legacy = body.get("hyperparameters")
        if legacy is not None and not isinstance(legacy, dict):
            raise ApiError(400, "Invalid 'hyperparameters': expected an object.", param="hyperparameters")
        if method is None:
            method = {"type": "supervised"}
        if not isinstance(method, dict) or method.get("type") not in ("supervised", "dpo"):
            kind = method.get("type") if isinstance(method, dict) else method
            raise ApiError(400, f"Invalid 'method.type': {kind!r} is not one of ['supervised', 'dpo'].",
                           param="method.type")
        kind = method["type"]
        settings = method.get(kind) or {}
        hyper = settings.get("hyperparameters") if isinstance(settings, dict) else None
        if hyper is not None and not isinstance(hyper, dict):
            raise ApiError(400, f"Invalid 'method.{kind}.hyperparameters': expected an object.",
                           param=f"method.{kind}.hyperparameters")
        hyper = dict(hyper or legacy or {})
        for name, (low, high, integer) in HYPERPARAMETER_BOUNDS.items():
            value = hyper.get(name, "auto")
            number_ok = isinstance(value, int | float) and not isinstance(value, bool) and low <= value <= high
            if value != "auto" and not (number_ok and (not integer or isinstance(value, int))):
                raise ApiError(400, f"Invalid '{name}': expected 'auto' or a number in [{low}, {high}].",
                               param=f"method.{kind}.hyperparameters.{name}")
        return {"type": kind, kind: {"hyperparameters": hyper}}

    def _new_job(self, body: dict[str, Any], model: str, method: dict[str, Any]) -> dict[str, Any]:
        now = self.clock()
        job_id = _new_id("ftjob-")
        kind = method["type"]
        hyper = method[kind]["hyperparameters"]
        names = ["n_epochs", "batch_size", "learning_rate_multiplier"] + (["beta"] if kind == "dpo" else [])
        hyper = {name: hyper.get(name, "auto") for name in names} | {k: v for k, v in hyper.items() if k not in names}
        method = {"type": kind, kind: {"hyperparameters": hyper}}
        seed = body.get("seed")
        if seed is None:
            seed = int.from_bytes(hashlib.sha256(job_id.encode()).digest()[:4], "big") >> 1
        suffix = body.get("suffix")
        job: dict[str, Any] = {
            "object": "fine_tuning.job", "id": job_id, "created_at": int(now), "error": None,
            "fine_tuned_model": None, "finished_at": None,
            "hyperparameters": {k: hyper[k] for k in ("n_epochs", "batch_size", "learning_rate_multiplier")},
            "model": model, "organization_id": ORGANIZATION_ID, "result_files": [], "seed": seed,
            "status": "validating_files", "trained_tokens": None, "training_file": body["training_file"],
            "validation_file": body.get("validation_file"), "integrations": [], "metadata": body.get("metadata"),
            "method": method, "estimated_finish": None, "user_provided_suffix": suffix,
            # private state, dropped from answers
            "_t0": now, "_events": [], "_checkpoints": [], "_milestones": [], "_next": 0, "_paused_at": None,
            "_steps": self.steps,
        }
        message = f"Validating training file: {job['training_file']}"
        if job["validation_file"]:
            message += f" and validation file: {job['validation_file']}"
        self._event(job, now, message)
        failure = self.job_failure or self._validate_files(job, kind)
        v, q, s, n = self.validation_seconds, self.queue_seconds, self.step_seconds, self.steps
        if failure is not None:
            job["_milestones"] = [(v, "failed", dict(failure))]
        else:
            first_checkpoint = max(1, n - self.checkpoint_count + 1)
            plan: list[tuple[float, str, Any]] = [(v, "validated", None), (v + q, "started", None)]
            for step in range(1, n + 1):
                plan.append((v + q + step * s, "step", step))
                if self.checkpoint_count > 0 and step >= first_checkpoint:
                    plan.append((v + q + step * s, "checkpoint", step))
            plan.append((v + q + n * s, "succeeded", None))
            job["_milestones"] = plan
        return job

    def _validate_files(self, job: dict[str, Any], kind: str) -> dict[str, Any] | None:
        """What OpenAI checks while `validating_files`: JSONL of the method's shape, enough examples."""
        for param in ("training_file", "validation_file"):
            file_id = job[param]
            if not file_id:
                continue
            lines = [line for line in self._contents[file_id].decode("utf-8", "replace").splitlines() if line.strip()]
            for number, line in enumerate(lines, start=1):
                try:
                    example = json.loads(line)
                except ValueError:
                    example = None
                if kind == "dpo":
                    ok = isinstance(example, dict) and all(
                        k in example for k in ("input", "preferred_output", "non_preferred_output"))
                else:
                    ok = isinstance(example, dict) and isinstance(example.get("messages"), list)
                if not ok:
                    shape = ("an object with input, preferred_output and non_preferred_output" if kind == "dpo"
                             else "an object with a messages list")
                    return {"code": f"invalid_{param}", "param": param,
                            "message": f"Invalid file format. Line {number}: expected {shape}."}
            if param == "training_file" and len(lines) < self.min_examples:
                return {"code": "invalid_n_examples", "param": param,
                        "message": f"Training file has {len(lines)} example(s), but must have at least "
                                   f"{self.min_examples} examples"}
        return None

    def _event(self, job: dict[str, Any], at: float, message: str, *, level: str = "info",
               data: dict[str, Any] | None = None) -> None:
        job["_events"].append({"object": "fine_tuning.job.event", "id": _new_id("ft-event-"), "created_at": int(at),
                               "level": level, "message": message, "data": data,
                               "type": "metrics" if data is not None else "message"})

    def _metrics(self, job: dict[str, Any], step: int) -> dict[str, Any]:
        total = job["_steps"]
        metrics: dict[str, Any] = {"step": step, "train_loss": round(2.5 / (1 + 0.6 * step), 4),
                                   "total_steps": total,
                                   "train_mean_token_accuracy": round(0.5 + 0.4 * step / max(total, 1), 4)}
        if job["validation_file"]:
            metrics["valid_loss"] = round(metrics["train_loss"] + 0.1, 4)
            metrics["valid_mean_token_accuracy"] = round(metrics["train_mean_token_accuracy"] - 0.05, 4)
        return metrics

    def _model_name(self, job: dict[str, Any]) -> str:
        base = job["model"].split(":")[1] if job["model"].startswith("ft:") else job["model"]
        return f"ft:{base}:{ORG_NAME}:{job['user_provided_suffix'] or ''}:{job['id'][-8:]}"

    def _advanced(self, job_id: str) -> dict[str, Any]:
        job = self._jobs.get(job_id)
        if job is None:
            raise ApiError(404, f"Could not find fine tune: {job_id}", param="fine_tune_id",
                           code="fine_tune_not_found")
        self._advance(job)
        return job

    def _advance(self, job: dict[str, Any]) -> None:
        """Apply every milestone whose time has passed (never twice: `_next` only moves forward)."""
        now = self.clock()
        plan = job["_milestones"]
        while job["_next"] < len(plan) and job["status"] not in TERMINAL and job["_paused_at"] is None:
            offset, kind, arg = plan[job["_next"]]
            at = job["_t0"] + offset
            if at > now:
                break
            if self.hold and (kind == "succeeded" or (kind in ("step", "checkpoint") and arg >= job["_steps"])):
                break
            self._apply(job, at, kind, arg)
            job["_next"] += 1

    def _apply(self, job: dict[str, Any], at: float, kind: str, arg: Any) -> None:
        if kind == "failed":
            job.update(status="failed", finished_at=int(at), estimated_finish=None,
                       error={"code": arg.get("code") or "failed", "message": arg.get("message") or "Job failed.",
                              "param": arg.get("param")})
            self._event(job, at, job["error"]["message"], level="error")
        elif kind == "validated":
            job["status"] = "queued"
            self._event(job, at, "Files validated, moving job to queued state")
        elif kind == "started":
            method = job["method"]
            hyper = method[method["type"]]["hyperparameters"]
            for name, value in list(hyper.items()):
                if value == "auto" and name in AUTO_HYPERPARAMETERS:
                    hyper[name] = AUTO_HYPERPARAMETERS[name]
            job["hyperparameters"] = {k: hyper[k] for k in ("n_epochs", "batch_size", "learning_rate_multiplier")}
            job["status"] = "running"
            job["estimated_finish"] = int(job["_t0"] + job["_milestones"][-1][0]) + 1
            self._event(job, at, "Fine-tuning job started")
        elif kind == "step":
            metrics = self._metrics(job, arg)
            message = f"Step {arg}/{job['_steps']}: training loss={metrics['train_loss']:.4f}"
            if "valid_loss" in metrics:
                message += f", validation loss={metrics['valid_loss']:.4f}"
            self._event(job, at, message, data=metrics)
        elif kind == "checkpoint":
            name = f"{self._model_name(job)}:ckpt-step-{arg}"
            metrics = {k: v for k, v in self._metrics(job, arg).items() if k != "total_steps"}
            if "valid_loss" in metrics:
                metrics["full_valid_loss"] = metrics["valid_loss"]
                metrics["full_valid_mean_token_accuracy"] = metrics["valid_mean_token_accuracy"]
            job["_checkpoints"].append({"object": "fine_tuning.job.checkpoint", "id": _new_id("ftckpt_"),
                                        "created_at": int(at), "fine_tuned_model_checkpoint": name,
                                        "fine_tuning_job_id": job["id"], "metrics": metrics, "step_number": arg})
            self._event(job, at, f"Checkpoint created at step {arg} with Snapshot ID: {name}")
        elif kind == "succeeded":
            name = self._model_name(job)
            self._event(job, at, f"New fine-tuned model created: {name}")
            rows = ["step,train_loss,train_accuracy,valid_loss,valid_mean_token_accuracy"]
            for step in range(1, job["_steps"] + 1):
                m = self._metrics(job, step)
                rows.append(f"{step},{m['train_loss']},{m['train_mean_token_accuracy']},"
                            f"{m.get('valid_loss', '')},{m.get('valid_mean_token_accuracy', '')}")
            results = self._store_file("step_metrics.csv", base64.b64encode("\n".join(rows).encode() + b"\n"),
                                       "fine-tune-results")
            words = len(self._contents[job["training_file"]].split())
            job.update(status="succeeded", fine_tuned_model=name, finished_at=int(at), estimated_finish=None,
                       trained_tokens=words * int(job["hyperparameters"]["n_epochs"]), result_files=[results["id"]])
            self._event(job, at, "The job has successfully completed")

    @staticmethod
    def _public_job(job: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in job.items() if not k.startswith("_")}

    def _list_jobs(self) -> Response:
        limit = _int_arg("limit", 20, 100)
        wanted: dict[str, str] = {}
        null_metadata = False
        for key, value in request.args.items(multi=True):
            match = re.fullmatch(r"metadata\[(.+)\]", key)
            if match:
                wanted[match.group(1)] = value
            elif key == "metadata" and value == "null":
                null_metadata = True
        with self._lock:
            jobs = []
            for job in reversed(list(self._jobs.values())):  # newest first
                self._advance(job)
                metadata = job["metadata"]
                if null_metadata and metadata is not None:
                    continue
                if any((metadata or {}).get(k) != v for k, v in wanted.items()):
                    continue
                jobs.append(self._public_job(job))
            return self._json(_page(jobs, request.args.get("after"), limit, ids=False))

    def _retrieve_job(self, job_id: str) -> Response:
        with self._lock:
            return self._json(self._public_job(self._advanced(job_id)))

    def _cancel_job(self, job_id: str) -> Response:
        with self._lock:
            job = self._advanced(job_id)
            if job["status"] in TERMINAL:
                raise ApiError(400, f"Job {job_id} has already {job['status']} and cannot be cancelled.",
                               param="fine_tune_id", code="job_not_cancellable")
            now = self.clock()
            job.update(status="cancelled", finished_at=int(now), estimated_finish=None, _paused_at=None)
            self._event(job, now, "Fine tuning process stopping due to job cancellation", level="warn")
            return self._json(self._public_job(job))

    def _pause_job(self, job_id: str) -> Response:
        with self._lock:
            job = self._advanced(job_id)
            if job["status"] != "running":
                raise ApiError(400, f"Job {job_id} is {job['status']}; only a running job can be paused.",
                               param="fine_tune_id", code="job_not_pausable")
            now = self.clock()
            job.update(status="paused", _paused_at=now)
            self._event(job, now, "Fine-tuning job paused")
            return self._json(self._public_job(job))

    def _resume_job(self, job_id: str) -> Response:
        with self._lock:
            job = self._advanced(job_id)
            if job["status"] != "paused":
                raise ApiError(400, f"Job {job_id} is {job['status']}; only a paused job can be resumed.",
                               param="fine_tune_id", code="job_not_resumable")
            now = self.clock()
            job["_t0"] += now - job["_paused_at"]  # the rest of the schedule moves by the pause
            finish = int(job["_t0"] + job["_milestones"][-1][0]) + 1
            job.update(status="running", _paused_at=None, estimated_finish=finish)
            self._event(job, now, "Fine-tuning job resumed")
            return self._json(self._public_job(job))

    def _list_events(self, job_id: str) -> Response:
        limit = _int_arg("limit", 20, 100)
        with self._lock:
            events = list(reversed(self._advanced(job_id)["_events"]))
            return self._json(_page(events, request.args.get("after"), limit, ids=False))

    def _list_checkpoints(self, job_id: str) -> Response:
        limit = _int_arg("limit", 10, 100)
        with self._lock:
            checkpoints = list(reversed(self._advanced(job_id)["_checkpoints"]))
            return self._json(_page(checkpoints, request.args.get("after"), limit, ids=True))

    # ---- models ----------------------------------------------------------------------------------

    def _fine_tuned_models(self) -> list[dict[str, Any]]:
        models = []
        for job in self._jobs.values():
            self._advance(job)
            name = job["fine_tuned_model"]
            if job["status"] == "succeeded" and name not in self._deleted_models:
                models.append({"id": name, "object": "model", "created": job["finished_at"],
                               "owned_by": ORGANIZATION_ID})
        return models

    def _servable(self, model: str) -> str | None:
        """The model a chat request on `model` runs: a base model, a fine-tuned model or one of its checkpoints."""
        if model in MODEL_ALIASES or model in BASE_MODELS:
            return MODEL_ALIASES.get(model, model)
        if any(m["id"] == model for m in self._fine_tuned_models()):
            return model
        for job in self._jobs.values():
            if any(c["fine_tuned_model_checkpoint"] == model for c in job["_checkpoints"]):
                return model
        return None

    @staticmethod
    def _model_not_found(model_id: str) -> ApiError:
        return ApiError(404, f"The model `{model_id}` does not exist or you do not have access to it.",
                        code="model_not_found")

    def _list_models(self) -> Response:
        with self._lock:
            models = [{"id": m, "object": "model", "created": c, "owned_by": "system"} for m, c in BASE_MODELS.items()]
            return self._json({"object": "list", "data": models + self._fine_tuned_models()})

    def _retrieve_model(self, model_id: str) -> Response:
        with self._lock:
            if model_id in BASE_MODELS:
                return self._json({"id": model_id, "object": "model", "created": BASE_MODELS[model_id],
                                   "owned_by": "system"})
            for model in self._fine_tuned_models():
                if model["id"] == model_id:
                    return self._json(model)
            raise self._model_not_found(model_id)

    def _delete_model(self, model_id: str) -> Response:
        with self._lock:
            if not any(m["id"] == model_id for m in self._fine_tuned_models()):
                raise self._model_not_found(model_id)
            self._deleted_models.add(model_id)
            return self._json({"id": model_id, "object": "model", "deleted": True})

    # ---- chat completions ----------------------------------------------------------------------

    def _answer(self, model: str, messages: list[dict[str, Any]], max_tokens: int | None) -> tuple[list[str], str]:
        if self.responder is not None:
            text = self.responder(model, messages)
        else:
            last_user = next((_text_of(m.get("content")) for m in reversed(messages) if m.get("role") == "user"), "")
            text = f"[{model}] {last_user}".strip()
        words = text.split(" ")
        if max_tokens is not None and len(words) > max_tokens:
            return words[:max_tokens], "length"
        return words, "stop"

    def _chat(self) -> Response:
        body = self._body()
        model, messages = body.get("model"), body.get("messages")
        if not isinstance(model, str) or not model:
            raise ApiError(400, "Missing required parameter: 'model'.", param="model",
                           code="missing_required_parameter")
        if not isinstance(messages, list) or not messages:
            raise ApiError(400, "Missing required parameter: 'messages'.", param="messages",
                           code="missing_required_parameter")
        with self._lock:
            self.chat_requests.append(json.loads(json.dumps(body)))
            served = self._servable(model)
            if served is None:
                raise self._model_not_found(model)
            max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
            words, finish = self._answer(model, messages, max_tokens if isinstance(max_tokens, int) else None)
        n = body.get("n") if isinstance(body.get("n"), int) and body["n"] > 0 else 1
        prompt_tokens = sum(len(_text_of(m.get("content")).split()) + 3 for m in messages if isinstance(m, dict))
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": len(words) * n,
                 "total_tokens": prompt_tokens + len(words) * n,
                 "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
                 "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                               "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}}
        head = {"id": _new_id("chatcmpl-", 29), "created": int(self.clock()), "model": served,
                "system_fingerprint": "fp_emulator"}
        if not body.get("stream"):
            choices = [{"index": i, "message": {"role": "assistant", "content": " ".join(words), "refusal": None,
                                                "annotations": []},
                        "logprobs": None, "finish_reason": finish} for i in range(n)]
            return self._json({**head, "object": "chat.completion", "choices": choices, "usage": usage})
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        return Response(self._stream(head, words, finish, n, usage if include_usage else None),
                        mimetype="text/event-stream", headers={"Cache-Control": "no-cache",
                                                               "x-request-id": "req_" + secrets.token_hex(16)})

    @staticmethod
    def _stream(head: dict[str, Any], words: list[str], finish: str, n: int,
                usage: dict[str, Any] | None) -> Iterator[str]:
        def chunk(choices: list[dict[str, Any]], last_usage: dict[str, Any] | None = None) -> str:
            payload = {**head, "object": "chat.completion.chunk", "choices": choices}
            if usage is not None:
                payload["usage"] = last_usage
            return f"data: {json.dumps(payload)}\n\n"

        for i in range(n):
            yield chunk([{"index": i, "delta": {"role": "assistant", "content": "", "refusal": None},
                          "logprobs": None, "finish_reason": None}])
        for position, word in enumerate(words):
            piece = word if position == 0 else " " + word
            for i in range(n):
                yield chunk([{"index": i, "delta": {"content": piece}, "logprobs": None, "finish_reason": None}])
        for i in range(n):
            yield chunk([{"index": i, "delta": {}, "logprobs": None, "finish_reason": finish}])
        if usage is not None:
            yield chunk([], usage)
        yield "data: [DONE]\n\n"
