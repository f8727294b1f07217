"""`python -m workers.serving`: a serving replica. Generation for chat runs here, never in the API's threads.

It speaks OpenAI's chat-completions protocol (streamed or not) and vLLM's adapter routes, so the API talks to it
exactly as it talks to a vLLM server or a provider:

    POST /v1/chat/completions        model = a base model, or a name given to /v1/load_lora_adapter
    POST /v1/load_lora_adapter       {"lora_name", "lora_path"}: an adapter (or a full model) in the data directory
    POST /v1/unload_lora_adapter     {"lora_name"}
    GET  /v1/models, GET /health     (health: running and waiting requests, for least-loaded routing)

Every route but /health needs `Authorization: Bearer <serving token>` (TUNELOG_SERVING_TOKEN, or derived from the
instance key in the data directory: eventlog/serving.serving_token). Requests are batched continuously
(workers/batching.py); a full waiting line answers 429 with Retry-After. The final chunk (and a non-streamed
answer) carries `usage` and `tunelog: {queue_ms, ttft_ms}`.
"""
from __future__ import annotations

import hmac
import json
import logging
import os
import queue
import re
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from flask import Flask, Response, jsonify, request, stream_with_context

from workers.batching import Busy, Engine, Request

log = logging.getLogger("tunelog.serving")
NAME = re.compile(r"[A-Za-z0-9_-]{1,100}")  # an adapter's name: peft makes module keys of it


def _error(status: int, message: str, code: str, param: str | None = None, **headers: str):
    resp = jsonify({"error": {"message": message, "type": "invalid_request_error" if status < 500 else "server_error",
                              "param": param, "code": code}})
    resp.status_code = status
    for k, v in headers.items():
        resp.headers[k.replace("_", "-")] = v
    return resp


def _number(body: dict[str, Any], name: str, default: float, lo: float, hi: float) -> float:
    v = body.get(name, default)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, int | float) or not lo <= v <= hi:
        raise ValueError(f"{name} must be a number from {lo:g} to {hi:g}")
    return float(v)


def create_app(engine: Engine | None = None) -> Flask:
    from eventlog.serving import serving_token
    from eventlog.settings import directories

    if engine is None:
        # a replica needs no database or Redis: only the models and the artifact store (shared with the API's hosts)
        data_dir, model_dir = directories()
        engine = Engine(model_dir, data_dir, max_batch=int(os.environ.get("TUNELOG_SERVING_MAX_BATCH", "16")),
                        max_waiting=int(os.environ.get("TUNELOG_SERVING_MAX_WAITING", "32")),
                        adapter_bytes=int(os.environ.get("TUNELOG_SERVING_ADAPTER_MB", "512")) * 1024 * 1024,
                        prefill_batch=int(os.environ.get("TUNELOG_SERVING_PREFILL_BATCH", "8")))
        engine.start()
    data_dir = engine.data_dir
    token = serving_token(data_dir)
    app = Flask("tunelog-serving")
    app.config["MAX_CONTENT_LENGTH"] = 8 * 1024 * 1024  # a prompt larger than any model's window is refused unread
    app.extensions["engine"] = engine
    max_tokens_cap = int(os.environ.get("TUNELOG_SERVING_MAX_TOKENS", "4096"))  # above the API's own cap (2048)
    time_cap = float(os.environ.get("TUNELOG_SERVING_TIME_LIMIT", "300"))

    @app.before_request
    def _auth():
        if request.path == "/health":
            return None
        given = request.headers.get("Authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            return _error(401, "a valid serving token is required", "invalid_api_key")
        return None

    @app.get("/health")
    def health():
        load = engine.load()
        if load["engine"] != "running":  # a replica whose engine died must not look healthy
            resp = jsonify({"status": "down", **load})
            resp.status_code = 503
            return resp
        return jsonify({"status": "ok", **load})

    @app.get("/v1/models")
    def models():
        with engine.lock:
            names = engine.base_names() + sorted(engine.served)
        return jsonify({"object": "list", "data": [{"id": n, "object": "model", "owned_by": "tunelog"} for n in names]})

    @app.post("/v1/load_lora_adapter")
    def load_adapter():
        body = request.get_json(silent=True) or {}
        name, path = body.get("lora_name"), body.get("lora_path")
        if not isinstance(name, str) or not NAME.fullmatch(name) or not isinstance(path, str) or not path:
            return _error(400, "lora_name (letters, digits, - and _, at most 100) and lora_path are required",
                          "invalid_value")
        if name in engine.base_names():
            return _error(400, f"{name!r} is a base model's name", "invalid_value", "lora_name")
        from eventlog.artifacts import resolve_rel

        try:  # confined to the artifact store: a path outside it is refused before anything is opened
            folder = resolve_rel(data_dir, os.path.relpath(path, data_dir) if os.path.isabs(path) else path)
            kind = engine.register(name, Path(folder))
        except (ValueError, FileNotFoundError, PermissionError) as e:
            return _error(400, f"cannot load {name!r}: {e}", "invalid_value", "lora_path")
        return jsonify({"object": "lora_adapter", "name": name, "kind": kind})

    @app.post("/v1/unload_lora_adapter")
    def unload_adapter():
        body = request.get_json(silent=True) or {}
        if not engine.unregister(str(body.get("lora_name"))):
            return _error(404, "no such adapter", "model_not_found", "lora_name")
        return jsonify({"object": "lora_adapter", "name": body.get("lora_name"), "deleted": True})

    @app.post("/v1/chat/completions")
    def chat():
        body = request.get_json(silent=True)
        if not isinstance(body, dict):
            return _error(400, "the body must be a JSON object", "invalid_json")
        messages = body.get("messages")
        if (not isinstance(messages, list) or not messages or not all(
                isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                for m in messages)):
            return _error(400, "messages must be a non-empty list of {role, content} strings", "invalid_value",
                          "messages")
        try:
            max_tokens = int(_number(body, "max_tokens", 256, 1, max_tokens_cap))
            temperature = _number(body, "temperature", 0.0, 0, 2)
            top_p = _number(body, "top_p", 1.0, 0, 1)
        except ValueError as e:
            return _error(400, str(e), "invalid_value")
        seed = body.get("seed")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            return _error(400, "seed must be an integer", "invalid_value", "seed")
        model = body.get("model")
        user = body.get("user")
        req = Request(model=str(model), messages=[{"role": m["role"], "content": m["content"]} for m in messages],
                      max_tokens=max_tokens, temperature=temperature, top_p=top_p, seed=seed, time_limit=time_cap,
                      namespace=user[:200] if isinstance(user, str) else "")
        try:
            engine.submit(req)
        except KeyError:
            return _error(404, f"the model {model!r} is not served here", "model_not_found", "model")
        except Busy as e:
            return _error(429, f"the serving replica is full: {e}", "serving_busy", Retry_After="1")
        chat_id = "chatcmpl-" + uuid.uuid4().hex[:24]
        created = int(time.time())
        wait = time_cap + 60

        def items():
            """The engine's items; ("ping",) every 2 s of silence (a streamed answer sends a comment, so a client
            gone is noticed and its request cancelled even before its first token)."""
            deadline = time.monotonic() + wait
            while True:
                try:
                    item = req.out.get(timeout=2.0)
                except queue.Empty:
                    if time.monotonic() > deadline:
                        yield ("error", "no token within the time limit")
                        return
                    yield ("ping",)
                    continue
                yield item
                if item[0] != "text":
                    return

        if not body.get("stream"):
            try:
                parts, end = [], None
                for item in items():
                    if item[0] == "text":
                        parts.append(item[1])
                    elif item[0] != "ping":
                        end = item
                if end is None or end[0] == "error":
                    return _error(500, end[1] if end else "no answer", "generation_failed")
                _, reason, usage = end
                return jsonify({
                    "id": chat_id, "object": "chat.completion", "created": created, "model": req.model,
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": "".join(parts)},
                                 "finish_reason": reason, "logprobs": None}],
                    "usage": _usage(usage), "tunelog": _timing(usage)})
            finally:
                req.cancel()

        def chunk(delta: dict[str, Any], finish: str | None = None, **more: Any) -> str:
            return "data: " + json.dumps({"id": chat_id, "object": "chat.completion.chunk", "created": created,
                                          "model": req.model, "choices": [{"index": 0, "delta": delta,
                                                                           "finish_reason": finish}], **more}) + "\n\n"

        def sse():
            try:
                yield chunk({"role": "assistant", "content": ""})
                first = True
                for item in items():
                    if item[0] == "ping":
                        yield ": ping\n\n"
                        continue
                    if item[0] == "text":
                        if first:  # the wait and the time to this token, for the caller's Server-Timing
                            first = False
                            # (and the prompt's tokens: a caller that stops reading early still knows them)
                            yield chunk({"content": item[1]}, tunelog={"queue_ms": req.queue_ms,
                                                                       "ttft_ms": req.ttft_ms,
                                                                       "prompt_tokens": len(req.prompt_ids)})
                            continue
                        yield chunk({"content": item[1]})
                    elif item[0] == "end":
                        _, reason, usage = item
                        yield chunk({}, "stop" if reason == "cancelled" else reason, usage=_usage(usage),
                                    tunelog=_timing(usage))
                    else:
                        yield "data: " + json.dumps({"error": {"message": item[1], "type": "server_error",
                                                               "code": "generation_failed"}}) + "\n\n"
                yield "data: [DONE]\n\n"
            finally:  # the client went away (or the answer ended): the request leaves the batch
                req.cancel()

        return Response(stream_with_context(sse()), mimetype="text/event-stream",
                        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    return app


def _usage(u: dict[str, Any]) -> dict[str, int]:
    return {"prompt_tokens": u["prompt_tokens"], "completion_tokens": u["completion_tokens"],
            "total_tokens": u["prompt_tokens"] + u["completion_tokens"]}


def _timing(u: dict[str, Any]) -> dict[str, Any]:
    return {"queue_ms": u.get("queue_ms"), "ttft_ms": u.get("ttft_ms")}


def _use_vllm() -> bool:
    """TUNELOG_SERVING=vllm, or =auto with vLLM installed and a CUDA device."""
    mode = os.environ.get("TUNELOG_SERVING", "builtin").strip().lower()
    if mode == "vllm":
        return True
    if mode != "auto":
        return False
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        return False
    import torch

    return torch.cuda.is_available()


def vllm_command(host: str, port: str) -> list[str]:
    """vLLM's OpenAI server on the bundled base, LoRA on, adapters loaded at run time (its key, our serving token,
    goes in VLLM_API_KEY)."""
    from eventlog.catalog import BASE_MODELS, model_path
    from eventlog.settings import directories

    _, model_dir = directories()
    base = os.environ.get("TUNELOG_SERVING_BASE") or next(iter(BASE_MODELS))
    return [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_path(model_dir, base)),
            "--served-model-name", base, "--host", host, "--port", port, "--enable-lora",
            "--max-lora-rank", os.environ.get("TUNELOG_SERVING_MAX_LORA_RANK", "64"),
            "--max-loras", os.environ.get("TUNELOG_SERVING_MAX_LORAS", "8")]


def main() -> None:
    from api.__main__ import gunicorn_args

    port = os.environ.get("TUNELOG_SERVING_PORT", "8100")
    host = os.environ.get("TUNELOG_SERVING_HOST", "127.0.0.1")
    # generation takes every core it is given; a little below the API's priority, the API answers promptly
    # (health checks, job reads) however busy the batch is
    os.nice(int(os.environ.get("TUNELOG_SERVING_NICE", "5")))
    if _use_vllm():
        os.environ["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] = "True"  # /v1/load_lora_adapter
        cmd = vllm_command(host, port)
        from eventlog.serving import serving_token
        from eventlog.settings import directories

        # the key in the environment, not on a command line every local user can read
        os.environ["VLLM_API_KEY"] = serving_token(directories()[0])
        os.execvp(cmd[0], cmd)
    args = gunicorn_args("workers.serving:create_app()", host, port)
    # one process (one engine: every request joins its batch); a thread for every request it may hold
    threads = int(os.environ.get("TUNELOG_SERVING_MAX_BATCH", "16")) + int(
        os.environ.get("TUNELOG_SERVING_MAX_WAITING", "32")) + 16
    args[args.index("--threads") + 1] = str(threads)
    os.execvp(sys.executable, [sys.executable, "-m", *args])


if __name__ == "__main__":
    main()
