"""POST /v1/chat/completions (OpenAI shape, streaming or not) with retrieval over the knowledge base,
answered by the model an id or alias names; every answer becomes a ChatAnswered event. Feedback on
answers, and training files built from approved corrections."""
from __future__ import annotations

import json
import time
import uuid
from contextlib import ExitStack
from typing import Any

from flask import Blueprint, Response, g, jsonify, request, stream_with_context
from prometheus_client import Histogram

from api.auth import require
from api.common import Idempotent, append_and_respond, fingerprint, json_body, metadata, now, owned, page_limit, svc
from api.registry import ResolvedModel, resolve, settings_for
from domain.errors import Conflict, IdempotencyMismatch, NotFound, ServiceUnavailable, ValidationError
from domain.events import ChatAnswered, FeedbackApproved, FeedbackGiven, chat_stream
from eventlog.store import AppendResult, Command, NewEvent

bp = Blueprint("chat", __name__)

SYSTEM_PROMPT = (
    "You are the tutor of this school. Explain clearly and step by step at the student's level, check "
    "understanding with a short question, encourage the student, and never invent facts about the school."
)
MAX_TOKENS_LIMIT = 2048
FEEDBACK_MAX_CHARS = 16_000  # a comment or a corrected answer
FEEDBACK_MAX_MESSAGES = 64  # the conversation a correction carries


def _text(content: Any) -> str:
    """OpenAI content: a string, or a list of parts of which the text ones count."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return ""


def parse_request(body: dict[str, Any], max_messages: int = 256, max_text_bytes: int = 64 * 1024) -> dict[str, Any]:
    """The request, checked; the bounds on messages are checked first, before any work scales with them."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise ValidationError("model is required (a model id or an alias such as 'tutor')", param="model")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ValidationError("messages must be a non-empty list", param="messages")
    if len(messages) > max_messages:
        raise ValidationError(f"messages has {len(messages)} items; the limit is {max_messages} messages",
                              param="messages", code="array_above_max_length")
    clean = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ("system", "developer", "user", "assistant", "tool"):
            raise ValidationError(f"messages[{i}] needs a role of system, developer, user, assistant or tool",
                                  param=f"messages[{i}].role")
        text = _text(m.get("content"))
        if m.get("content") is not None and not isinstance(m.get("content"), (str, list)):
            raise ValidationError(f"messages[{i}].content must be a string or a list of parts",
                                  param=f"messages[{i}].content")
        clean.append({"role": "system" if m["role"] == "developer" else m["role"], "content": text})
    size = sum(len(m["content"].encode()) for m in clean)
    if size > max_text_bytes:
        raise ValidationError(f"the messages hold {size} bytes of text; the limit is {max_text_bytes} bytes "
                              f"({max_text_bytes // 1024} KiB) in all", param="messages",
                              code="string_above_max_length")
    if not any(m["role"] == "user" for m in clean):
        raise ValidationError("messages need at least one user message", param="messages")
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens", 256))
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or not 1 <= max_tokens <= MAX_TOKENS_LIMIT:
        raise ValidationError(f"max_tokens must be an integer between 1 and {MAX_TOKENS_LIMIT}", param="max_tokens")
    temperature = body.get("temperature", 0.7)
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not 0 <= temperature <= 2:
        raise ValidationError("temperature must be a number between 0 and 2", param="temperature")
    top_p = body.get("top_p", 1.0)
    if isinstance(top_p, bool) or not isinstance(top_p, (int, float)) or not 0 < top_p <= 1:
        raise ValidationError("top_p must be a number greater than 0 and at most 1", param="top_p")
    if body.get("n", 1) != 1:
        raise ValidationError("only n = 1 is supported", param="n")
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise ValidationError("seed must be an integer", param="seed")
    retrieval = body.get("retrieval", True)
    top_k = 4
    if isinstance(retrieval, dict):
        top_k = retrieval.get("top_k", 4)
        retrieval = retrieval.get("enabled", True)
    if not isinstance(retrieval, bool):
        raise ValidationError("retrieval must be true, false or {\"enabled\", \"top_k\"}", param="retrieval")
    if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= 20:
        raise ValidationError("retrieval.top_k must be an integer between 1 and 20", param="retrieval.top_k")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise ValidationError("stream must be true or false", param="stream")
    include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
    return {"model": model, "messages": clean, "max_tokens": max_tokens, "temperature": float(temperature),
            "top_p": float(top_p), "seed": seed, "retrieval": retrieval, "top_k": top_k, "stream": stream,
            "include_usage": include_usage}


def search(conn, project: str, vector, top_k: int) -> list[dict[str, Any]]:
    """Top-k chunks of this project's documents by cosine similarity: HNSW with ef_search 128, and an
    iterative scan so that the project filter cannot starve the result."""
    with conn.transaction():  # pool connections have pgvector's adapters (eventlog/db.py)
        conn.execute("SET LOCAL hnsw.ef_search = 128")
        conn.execute("SET LOCAL hnsw.iterative_scan = relaxed_order")
        rows = conn.execute(
            "SELECT c.id, c.document_id, c.idx, c.text, d.title, 1 - (c.embedding <=> %(v)s) AS score "
            "FROM chunks c JOIN documents d ON d.id = c.document_id "
            "WHERE c.project = %(p)s ORDER BY c.embedding <=> %(v)s LIMIT %(k)s",
            {"v": vector, "p": project, "k": top_k}).fetchall()
    return [{"chunk_id": r["id"], "document_id": r["document_id"], "chunk": r["idx"], "title": r["title"],
             "score": round(float(r["score"]), 4), "text": r["text"]} for r in rows]


def retrieve(project: str, query: str, top_k: int) -> list[dict[str, Any]]:
    from eventlog.embeddings import embedder

    vector = embedder().encode([query])[0]
    with svc().pool.connection() as c:
        return search(c, project, vector, top_k)


def build_prompt(messages: list[dict[str, str]], sources: list[dict[str, Any]]) -> list[dict[str, str]]:
    system = SYSTEM_PROMPT
    if sources:
        passages = "\n".join(f"[{i + 1}] ({s['title']}) {s['text']}" for i, s in enumerate(sources))
        system += ("\n\nUse these passages from the school's documents when they help, and cite them as [1], "
                   f"[2]:\n{passages}")
    own = [m["content"] for m in messages if m["role"] == "system" and m["content"]]
    if own:
        system += "\n\n" + "\n".join(own)
    return [{"role": "system", "content": system}] + [m for m in messages if m["role"] != "system"]


def _public_sources(sources: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"document_id": s["document_id"], "chunk": s["chunk"], "chunk_id": s["chunk_id"], "title": s["title"],
             "score": s["score"], "text": s["text"]} for s in sources]


def check_context(server, base_model: str, prompt: list[dict[str, str]], max_tokens: int,
                  cap: int | None) -> int:
    """400 context_length_exceeded (OpenAI's code) unless the prompt as the model sees it (system prompt
    and retrieved passages included) plus max_tokens fits the context window. Returns the prompt's tokens."""
    window = server.context_window(base_model)
    if cap:
        window = min(window, cap)
    n = server.count_prompt_tokens(base_model, prompt)
    if n + max_tokens > window:
        raise ValidationError(
            f"This model's maximum context length is {window} tokens. However, you requested {n + max_tokens} "
            f"tokens ({n} in the messages, {max_tokens} in the completion). Please reduce the length of the "
            "messages or completion.", param="messages", code="context_length_exceeded")
    return n


class ChatCommand:
    """Idempotency-Key for chat: the first answer is recorded with the command, so a retry generates and
    appends nothing. The stored response holds the answer only where the project stores chat text
    (privacy); otherwise only the chat id, and a retry gets 409 idempotent_replay_unavailable."""

    def __init__(self, body: dict[str, Any]):
        key = request.headers.get("Idempotency-Key")
        self.command_id = f"{g.principal.key_id}:{key}" if key else None
        # streamed or not, it is the same question: a retry may switch (the answer is replayed either way)
        self.request_hash = fingerprint({k: v for k, v in body.items() if k not in ("stream", "stream_options")})

    def lookup(self) -> dict[str, Any] | None:
        if not self.command_id:
            return None
        row = svc().store.lookup_command(self.command_id)
        if row is None:
            return None
        if row["request_hash"] != self.request_hash:
            raise IdempotencyMismatch("this Idempotency-Key was already used with a different request",
                                      param="Idempotency-Key")
        return row["response"]

    def command(self, chat_id: str, body: dict[str, Any] | None) -> Command | None:
        if not self.command_id:
            return None
        return Command(self.command_id, self.request_hash, {"status": 200, "chat_id": chat_id, "body": body})


def _replay(stored: dict[str, Any], stream: bool, include_usage: bool):
    body = stored.get("body")
    if body is None:
        raise Conflict(f"this Idempotency-Key was already answered as {stored.get('chat_id')}, but this project "
                       "does not store chat text, so the answer cannot be sent again; send a new "
                       "Idempotency-Key to ask again", param="Idempotency-Key", code="idempotent_replay_unavailable")
    headers = {"Idempotent-Replayed": "true"}
    if not stream:
        resp = jsonify(body)
        resp.headers.update(headers)
        return resp
    extra = {k: body[k] for k in ("sources", "tunelog") if k in body}
    choice = body["choices"][0]
    sse = SSEChunks(body["id"], body["created"], body["model"])

    def events():
        yield sse.chunk({"role": "assistant", "content": ""}, **extra)
        if choice["message"]["content"]:
            yield sse.chunk({"content": choice["message"]["content"]})
        yield sse.chunk({}, choice["finish_reason"])
        if include_usage:
            yield sse.usage(body["usage"])
        yield "data: [DONE]\n\n"

    return Response(events(), mimetype="text/event-stream",
                    headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **headers})


class SSEChunks:
    """chat.completion.chunk events of one completion."""

    def __init__(self, chat_id: str, created: int, model: str):
        self.head = {"id": chat_id, "object": "chat.completion.chunk", "created": created, "model": model}

    def chunk(self, delta: dict[str, Any], finish: str | None = None, **more: Any) -> str:
        body = {**self.head, "system_fingerprint": None,
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}], **more}
        return f"data: {json.dumps(body)}\n\n"

    def usage(self, usage: dict[str, int]) -> str:
        return "data: " + json.dumps({**self.head, "choices": [], "usage": usage}) + "\n\n"


def _delegated(project: str, resolved: ResolvedModel):
    """(provider, remote model, project settings) for a model a delegated provider serves, else None; a
    local-only project is refused such a model (400 local_only)."""
    if resolved.backend != "provider":
        return None
    from api.openai_compat import provider_of

    project_settings = settings_for(project)
    if project_settings.local_only:
        raise ValidationError(f"the model {resolved.id!r} is served by an external provider, and this project is "
                              "local-only (settings: local_only)", param="model", code="local_only")
    found = provider_of(resolved.id)
    if found is None:
        raise ServiceUnavailable(f"the provider of {resolved.id!r} is no longer configured on this server")
    return found[0], found[1], project_settings


def _program_of(project: str, resolved: ResolvedModel) -> tuple[dict[str, Any], ResolvedModel]:
    """A DSPy program's checked state (from Postgres, by the hash its lineage names) and the chat model it runs
    on; 409 if that model was deleted since (the program is only as good as the model it was optimized on)."""
    from eventlog.programs import check_state

    with svc().pool.connection() as c:
        row = c.execute("SELECT m.lineage ->> 'program_sha256' AS sha, b.content FROM models m LEFT JOIN blobs b "
                        "ON b.sha256 = m.lineage ->> 'program_sha256' WHERE m.id = %s AND m.project = %s",
                        (resolved.id, project)).fetchone()
    if row is None or row["content"] is None:
        raise ServiceUnavailable(f"the program of {resolved.id!r} is missing from the store")
    state = check_state(bytes(row["content"]))
    try:
        runner = resolve(project, resolved.base_model)
    except NotFound:
        raise Conflict(f"the program {resolved.id!r} runs on {resolved.base_model!r}, which was deleted; optimize it "
                       "again on another model (POST /v1/fine_tuning/jobs/{job}/rerun)", param="model",
                       code="model_not_available") from None
    return state, runner


def program_prompt(state: dict[str, Any], messages: list[dict[str, str]],
                   sources: list[dict[str, Any]]) -> list[dict[str, str]]:
    """The program's prompt for the latest question, the retrieved passages as its context (a program answers
    one question: earlier turns are not part of its signature)."""
    from eventlog.programs import render

    question = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
    own = "\n".join(m["content"] for m in messages if m["role"] == "system" and m["content"])
    return render(state, question, [f"({s['title']}) {s['text']}" for s in sources], own)


def _record(resolved: ResolvedModel, req: dict[str, Any], chat_id: str, sources: list, gen, started: float,
            created: int, principal, request_meta: dict[str, Any], cmd: ChatCommand,
            body: dict[str, Any], redactions: dict[str, Any] | None = None,
            serving: dict[str, Any] | None = None) -> AppendResult:
    """ChatAnswered (text only where the project stores it), with the idempotent command in the same append."""
    store_text = settings_for(principal.project).store_chat_text
    ev = ChatAnswered(
        id=chat_id, project=principal.project, model=resolved.id, alias=resolved.alias,
        chunk_ids=[s["chunk_id"] for s in sources], latency_ms=round((time.perf_counter() - started) * 1000, 1),
        prompt_tokens=gen.prompt_tokens, completion_tokens=gen.completion_tokens, created_at=created,
        messages=req["messages"] if store_text else None, answer=gen.text if store_text else None,
        provider=(redactions or {}).get("provider"),
        redactions={k: v for k, v in redactions.items() if k != "provider"} if redactions else None,
        sampling={k: req[k] for k in ("temperature", "top_p", "max_tokens", "seed", "retrieval", "top_k")},
        serving=serving)
    return svc().store.append(chat_stream(chat_id), 0, [NewEvent(ev.type, ev.to_data(), request_meta)],
                              command=cmd.command(chat_id, body if store_text else None))


QUEUE = Histogram("tunelog_chat_queue_seconds", "Time a chat waited on the serving tier before its prefill",
                  buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30))
TTFT = Histogram("tunelog_chat_time_to_first_token_seconds", "Time from a chat's arrival on the serving tier to "
                 "its first token", buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60))


def _observe(serving: dict[str, Any]) -> None:
    if serving.get("queue_ms") is not None:
        QUEUE.observe(serving["queue_ms"] / 1000)
    if serving.get("ttft_ms") is not None:
        TTFT.observe(serving["ttft_ms"] / 1000)


def _serving_timing(serving: dict[str, Any] | None) -> str:
    if not serving:
        return ""
    return "".join(f", {name};dur={serving[k]:.1f}" for name, k in (("queue", "queue_ms"), ("ttft", "ttft_ms"))
                   if serving.get(k) is not None)


@bp.post("/v1/chat/completions")
def chat_completions():
    """Bounded at every step (api/limits.py): rate per key (before this view), request size, one answer
    per Idempotency-Key, slots per key and in all, the context window, the wait for the model, and the
    generation's time; every slot is released in `finally` or when the response closes (client gone)."""
    from api import limits
    from eventlog.generation import Generation, server

    started = time.perf_counter()
    principal = g.principal
    lim = limits.limits()
    body = json_body()
    req = parse_request(body, max_messages=lim.max_messages, max_text_bytes=lim.max_text_bytes)
    cmd = ChatCommand(body)
    prior = cmd.lookup()
    if prior is not None:
        return _replay(prior, req["stream"], req["include_usage"])
    cleanup = ExitStack()  # released in reverse: the model, the slots, the Idempotency-Key's claim
    try:
        if cmd.command_id:
            cleanup.callback(limits.claim(cmd.command_id, "a request with this Idempotency-Key is still being "
                                                          "answered; retry when it has finished").release)
            prior = cmd.lookup()  # the first one may have finished between the lookup and the claim
            if prior is not None:
                cleanup.close()
                return _replay(prior, req["stream"], req["include_usage"])
        resolved = resolve(principal.project, req["model"])
        s = svc().settings
        # a DSPy program answers through the chat model it was optimized on, with its own prompt
        program, runner = _program_of(principal.project, resolved) if resolved.backend == "dspy-program" \
            else (None, resolved)

        def prompt_for(found: list[dict[str, Any]]) -> list[dict[str, str]]:
            return program_prompt(program, req["messages"], found) if program else build_prompt(req["messages"], found)

        remote = _delegated(principal.project, runner)  # (provider, remote model, settings) or None
        model_server = server(s.model_dir, s.data_dir) if remote is None else None
        # the prompt without passages is a lower bound: refuse what cannot fit before any retrieval (a provider
        # checks its own context window)
        if model_server is not None:
            check_context(model_server, runner.base_model, prompt_for([]), req["max_tokens"], lim.context_tokens)
        cleanup.callback(limits.acquire("chat").release)
        query = next((m["content"] for m in reversed(req["messages"]) if m["role"] == "user"), "")
        t_resolve = time.perf_counter()
        sources = retrieve(principal.project, query, req["top_k"]) if req["retrieval"] and query.strip() else []
        t_retrieve = time.perf_counter()
        prompt = prompt_for(sources)
        if sources and model_server is not None:  # now exactly, passages included
            check_context(model_server, runner.base_model, prompt, req["max_tokens"], lim.context_tokens)
        gen = Generation()
        redactions = None
        serving: dict[str, Any] | None = None
        if remote is not None:
            from api.remote_chat import open_stream

            provider, remote_model, project_settings = remote
            pieces, redacted = open_stream(
                provider, remote_model, runner.id, prompt, max_tokens=req["max_tokens"],
                temperature=req["temperature"], top_p=req["top_p"], seed=req["seed"], result=gen,
                roster=project_settings.pii_roster, time_limit=lim.generation_seconds)
            redactions = {"provider": provider.name, **redacted.to_dict()}
        else:  # the serving tier generates (eventlog/serving.py): never this request's thread
            from eventlog.serving import open_stream as serve

            pieces, serving = serve(s.data_dir, runner.base_model, runner.artifact_path, prompt,
                                    max_tokens=req["max_tokens"], temperature=req["temperature"],
                                    top_p=req["top_p"], seed=req["seed"], result=gen,
                                    time_limit=lim.generation_seconds, queue_timeout=lim.queue_seconds,
                                    user=principal.project)
        cleanup.callback(pieces.close)
        if serving is not None:
            _observe(serving)
        if program is not None:  # the answer field of DSPy's format; generation stops at its end marker
            from eventlog.programs import AnswerFilter

            base = runner.base_model
            count = (lambda text: model_server.count_text_tokens(base, text)) if model_server is not None else None
            pieces = AnswerFilter(pieces, pieces.close, result=gen, count_tokens=count)
        chat_id = "chatcmpl-" + uuid.uuid4().hex[:24]
        created = now()
        meta = metadata(chat_id)
        extra = {"sources": _public_sources(sources),
                 "tunelog": {"chat_id": chat_id, "model": resolved.id, "alias": resolved.alias,
                             "retrieval": req["retrieval"]}}
        if program is not None:
            extra["tunelog"]["program"] = {"runs_on": runner.id, "demos": len(program["respond"]["demos"])}
        gone = limits.disconnect_probe()
    except BaseException:
        cleanup.close()
        raise

    def completion(text: str) -> dict[str, Any]:
        return {
            "id": chat_id, "object": "chat.completion", "created": created, "model": resolved.id,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text, "refusal": None},
                         "logprobs": None, "finish_reason": gen.finish_reason}],
            "usage": {"prompt_tokens": gen.prompt_tokens, "completion_tokens": gen.completion_tokens,
                      "total_tokens": gen.prompt_tokens + gen.completion_tokens},
            "system_fingerprint": None, **extra}

    if not req["stream"]:
        with cleanup:
            parts = []
            for piece in pieces:
                parts.append(piece)
                if gone():  # nobody will read the answer: stop generating, record nothing (as when streaming)
                    return Response(status=499)
            text = "".join(parts)
            t_generate = time.perf_counter()
            out = completion(text)
            if gen.finish_reason == "error":  # the replica broke mid-answer
                from domain.errors import UpstreamError

                raise UpstreamError("the serving replica failed while answering; retry", code="serving_error")
            result = _record(resolved, req, chat_id, sources, gen, started, created, principal, meta, cmd, out,
                             redactions, serving)
        if result.duplicate and result.response is not None:  # a twin in another process won the race
            return _replay(result.response, False, False)
        timing = (f"parse;dur={(t_resolve - started) * 1000:.1f}, "
                  f"retrieval;dur={(t_retrieve - t_resolve) * 1000:.1f}, "
                  f"generation;dur={(t_generate - t_retrieve) * 1000:.1f}, "
                  f"record;dur={(time.perf_counter() - t_generate) * 1000:.1f}" + _serving_timing(serving))
        resp = jsonify(out)
        resp.headers["Server-Timing"] = timing
        return resp

    sse = SSEChunks(chat_id, created, resolved.id)

    def events():
        try:
            yield sse.chunk({"role": "assistant", "content": ""}, **extra)
            for piece in pieces:
                yield sse.chunk({"content": piece})
                if gone():
                    return
            if gen.finish_reason == "error" and serving is not None:  # the replica broke mid-answer
                yield "data: " + json.dumps({"error": {
                    "message": "the serving replica failed while answering; retry", "type": "server_error",
                    "param": None, "code": "serving_error"}}) + "\n\n"
                return
            yield sse.chunk({}, gen.finish_reason)
            out = completion(gen.text)
            if req["include_usage"]:
                yield sse.usage(out["usage"])
            _record(resolved, req, chat_id, sources, gen, started, created, principal, meta, cmd, out, redactions,
                    serving)
            yield "data: [DONE]\n\n"
        finally:  # also when the client goes away mid-stream (the generator is closed)
            cleanup.close()

    resp = Response(stream_with_context(events()), mimetype="text/event-stream",
                    headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no",
                             # the first token is in before the response starts: its timing is known
                             "Server-Timing": f"parse;dur={(t_resolve - started) * 1000:.1f}, "
                                              f"retrieval;dur={(t_retrieve - t_resolve) * 1000:.1f}"
                                              + _serving_timing(serving)})
    resp.call_on_close(cleanup.close)  # a stream closed before its first chunk never ran events()
    return resp


# ---- who answered what, feedback, datasets from feedback --------------------------------------------------
@bp.get("/api/chat/answers")
def chat_answers():
    require("admin")
    limit = page_limit(default=50, maximum=1000)
    sql = "SELECT * FROM chat_answers WHERE project = %s"
    params: list[Any] = [g.principal.project]
    if request.args.get("model"):
        sql += " AND model = %s"
        params.append(request.args["model"])
    sql += " ORDER BY seq DESC LIMIT %s"
    params.append(limit)
    with svc().pool.connection() as c:
        rows = c.execute(sql, params).fetchall()
    return jsonify({"object": "list", "data": rows})


@bp.post("/api/chat/feedback")
def give_feedback():
    p = g.principal
    body = json_body()
    chat_id = body.get("chat_id")
    if not isinstance(chat_id, str):
        raise ValidationError("chat_id is required (the id of a chat completion)", param="chat_id")
    try:
        answer = owned("chat_answers", chat_id, "chat answer", "chat_id")
    except NotFound:  # feedback right after the answer: the answer's event may not be projected yet
        from api.common import fresh

        fresh(svc().pool)
        answer = owned("chat_answers", chat_id, "chat answer", "chat_id")
    rating = body.get("rating")
    if isinstance(rating, bool) or not isinstance(rating, int) or not 1 <= rating <= 5:
        raise ValidationError("rating must be an integer from 1 to 5", param="rating")
    corrected = body.get("corrected_answer")
    if corrected is not None and (not isinstance(corrected, str) or not corrected.strip()):
        raise ValidationError("corrected_answer must be non-empty text", param="corrected_answer")
    if corrected is not None and len(corrected) > FEEDBACK_MAX_CHARS:
        raise ValidationError(f"corrected_answer is over {FEEDBACK_MAX_CHARS} characters", param="corrected_answer")
    comment = body.get("comment")
    if comment is not None and not isinstance(comment, str):
        raise ValidationError("comment must be text", param="comment")
    if comment is not None and len(comment) > FEEDBACK_MAX_CHARS:
        raise ValidationError(f"comment is over {FEEDBACK_MAX_CHARS} characters", param="comment")
    messages = answer["messages"]
    if corrected and messages is None:
        messages = body.get("messages")
        if (not isinstance(messages, list) or not messages or
                not all(isinstance(m, dict) and isinstance(m.get("content"), str) for m in messages)):
            raise ValidationError("this project does not store chat text, so a correction must carry the "
                                  "conversation it corrects in 'messages'", param="messages")
        if len(messages) > FEEDBACK_MAX_MESSAGES or sum(len(m["content"]) for m in messages) > 4 * FEEDBACK_MAX_CHARS:
            raise ValidationError(f"messages may hold at most {FEEDBACK_MAX_MESSAGES} messages and "
                                  f"{4 * FEEDBACK_MAX_CHARS} characters", param="messages")
        messages = [{"role": m.get("role"), "content": m["content"]} for m in messages]
    idem = Idempotent(body)
    fid = "fb-" + uuid.uuid4().hex[:20]
    ev = FeedbackGiven(id=fid, chat_id=chat_id, project=p.project, rating=rating, comment=comment,
                       corrected_answer=corrected, messages=messages if corrected else None,
                       approved=bool(corrected) and (p.role in ("admin", "trainer") or p.operator), actor=p.key_id,
                       at=now())
    out = {"object": "chat.feedback", **ev.to_data()}
    return append_and_respond(idem, 201, out, lambda cmd: svc().store.append(
        chat_stream(chat_id), None, [NewEvent(ev.type, ev.to_data(), metadata(chat_id))], command=cmd))


@bp.post("/api/chat/feedback/<feedback_id>/approve")
def approve_feedback(feedback_id: str):
    p = require("admin", "trainer")
    row = owned("chat_feedback", feedback_id, "feedback", "feedback_id")
    if row["corrected_answer"] is None:
        raise ValidationError("only feedback with a corrected answer can be approved for training",
                              param="feedback_id")
    if row["approved"]:
        return jsonify({"object": "chat.feedback", "id": feedback_id, "approved": True})
    idem = Idempotent({"feedback": feedback_id})
    ev = FeedbackApproved(id=feedback_id, chat_id=row["chat_id"], actor=p.key_id, at=now())
    return append_and_respond(idem, 200, {"object": "chat.feedback", "id": feedback_id, "approved": True},
                              lambda cmd: svc().store.append(chat_stream(row["chat_id"]), None,
                                                             [NewEvent(ev.type, ev.to_data(),
                                                                       metadata(row["chat_id"]))], command=cmd))


@bp.post("/api/datasets/from-feedback")
def dataset_from_feedback():
    """A fine-tune file of every approved correction: the conversation, answered the corrected way."""
    import hashlib

    from api.openai_compat import file_object
    from domain.datasets import check_chat_jsonl
    from domain.events import FileUploaded, file_stream

    p = require("admin", "trainer")
    with svc().pool.connection() as c:
        rows = c.execute("SELECT * FROM chat_feedback WHERE project = %s AND approved AND corrected_answer IS NOT NULL "
                         "ORDER BY seq", (p.project,)).fetchall()
    if not rows:
        raise ValidationError("there is no approved correction to build a training file from", param=None,
                              code="no_approved_feedback")
    lines = []
    for r in rows:
        convo = [m for m in r["messages"] if m.get("role") in ("system", "user", "assistant")]
        while convo and convo[-1]["role"] == "assistant":
            convo.pop()
        lines.append(json.dumps({"messages": convo + [{"role": "assistant", "content": r["corrected_answer"]}]}))
    content = ("\n".join(lines) + "\n").encode()
    s = svc().settings
    if len(content) > s.max_upload_bytes:  # as an upload would be: jobs, estimates and budgets read it whole
        raise ValidationError(f"the approved corrections make a file of {len(content)} bytes, over the upload limit "
                              f"of {s.max_upload_bytes}; reject some, or raise TUNELOG_MAX_UPLOAD_BYTES",
                              param=None, code="file_too_large")
    from api.tokens import counter
    from eventlog.catalog import BASE_MODELS

    # tokens counted as for an upload: a delegated job's budget charge and the context check read them
    report = check_chat_jsonl(content, min_examples=1, max_tokens=max(m.context_length for m in BASE_MODELS.values()),
                              count_tokens=counter(s.model_dir))
    sha = hashlib.sha256(content).hexdigest()
    idem = Idempotent({"sha256": sha})
    with svc().pool.connection() as c:
        c.execute("INSERT INTO blobs (sha256, content) VALUES (%s, %s) ON CONFLICT DO NOTHING", (sha, content))
    file_id = "file-" + uuid.uuid4().hex[:24]
    ev = FileUploaded(id=file_id, project=p.project, filename=f"feedback-{time.strftime('%Y%m%d-%H%M%S')}.jsonl",
                      purpose="fine-tune", bytes=len(content), sha256=sha, created_at=now(),
                      stats={**report.stats(), "source": "feedback", "feedback_ids": [r["id"] for r in rows]})
    body = {**file_object(ev.to_data()), "examples": len(rows)}
    return append_and_respond(idem, 200, body, lambda cmd: svc().store.append(
        file_stream(file_id), 0, [NewEvent(ev.type, ev.to_data(), metadata(file_id))], command=cmd))
