"""The API's side of the serving tier: which replica answers, and the answer's pieces as a Run.

Replicas are OpenAI-compatible chat servers (tunelog's own `python -m workers.serving`, or vLLM with LoRA
enabled), listed in TUNELOG_SERVING_URLS (default: the local one on TUNELOG_SERVING_PORT, 8100). Each
request goes to the replica with the fewest requests in flight from this process among those not marked down;
a replica that refuses connections or breaks is marked down for a few seconds and the next one is tried
(before any token was sent: once streaming, a broken replica ends that answer with an error event).

A fine-tuned model's adapter is loaded on the replica by `POST /v1/load_lora_adapter` under a name made from
its content hash (`lora-<sha256[:24]>`), so a retrained model never meets a replica's stale copy.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import random
import threading
import time
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from domain.errors import DomainError, NotFound, ServiceUnavailable, TooManyRequests, UpstreamError, ValidationError
from eventlog.generation import Generation, Run

log = logging.getLogger("tunelog.api")
DOWN_SECONDS = 5.0


class ServingUnavailable(ServiceUnavailable):
    code = "serving_unavailable"


def serving_token(data_dir: Path) -> str:
    """TUNELOG_SERVING_TOKEN, or one derived from the instance key in the data directory (the API and a replica
    on the same data directory agree without configuration; replicas elsewhere get the variable)."""
    env = os.environ.get("TUNELOG_SERVING_TOKEN")
    if env:
        return env
    from eventlog.webhooks import _instance_key

    return hmac.new(_instance_key(Path(data_dir)), b"tunelog serving token", hashlib.sha256).hexdigest()


def replica_urls() -> list[str]:
    raw = os.environ.get("TUNELOG_SERVING_URLS", "")
    urls = [u.strip().rstrip("/") for u in raw.split(",") if u.strip()]
    return urls or [f"http://127.0.0.1:{os.environ.get('TUNELOG_SERVING_PORT', '8100')}"]


@dataclass
class _Replica:
    url: str
    in_flight: int = 0
    down_until: float = 0.0
    kind: str | None = None  # "builtin" or "vllm", when TUNELOG_SERVING=auto had to ask


class Replicas:
    """Least-loaded choice among the replicas, with short quarantines for the ones that fail."""

    def __init__(self, urls: list[str], token: str):
        import httpx

        self.replicas = [_Replica(u) for u in urls]
        self.token = token
        self.lock = threading.Lock()
        self.loaded: dict[str, set[str]] = {u: set() for u in urls}  # adapters each replica has been given
        self.client = httpx.Client(headers={"Authorization": f"Bearer {token}"},
                                   timeout=httpx.Timeout(10.0, connect=2.0),
                                   limits=httpx.Limits(max_connections=256, max_keepalive_connections=64))

    def order(self) -> list[tuple[int, _Replica]]:
        """(number, replica) to try, best first: those up by fewest in flight (ties at random), then those down.
        Numbers count from 1 in TUNELOG_SERVING_URLS' order (what events and /healthz show, never addresses)."""
        now = time.monotonic()
        with self.lock:
            numbered = list(enumerate(self.replicas, 1))
            up = [x for x in numbered if x[1].down_until <= now]
            down = [x for x in numbered if x[1].down_until > now]
        random.shuffle(up)
        return sorted(up, key=lambda x: x[1].in_flight) + sorted(down, key=lambda x: x[1].down_until)

    def mark_down(self, r: _Replica) -> None:
        with self.lock:
            r.down_until = time.monotonic() + DOWN_SECONDS
            self.loaded[r.url] = set()  # a restarted replica has forgotten its adapters

    def take(self, r: _Replica) -> None:
        with self.lock:
            r.in_flight += 1

    def give(self, r: _Replica) -> None:
        with self.lock:
            r.in_flight -= 1

    def ensure_adapter(self, r: _Replica, name: str, path: str, data_dir: Path) -> None:
        if name in self.loaded.get(r.url, set()):
            return
        if self.is_vllm(r):  # vLLM opens the path itself: absolute, on a file system shared with the artifact store
            from eventlog.artifacts import resolve_rel

            if not (resolve_rel(data_dir, path) / "adapter_config.json").exists():
                raise ValidationError("a fully fine-tuned model cannot be served by vLLM at run time (only LoRA "
                                      "adapters can): chat with it on tunelog's own serving replicas",
                                      param="model", code="model_not_servable")
            path = str(resolve_rel(data_dir, path))
        resp = self.client.post(f"{r.url}/v1/load_lora_adapter", json={"lora_name": name, "lora_path": path})
        if resp.status_code >= 400 and "already" not in resp.text:  # vLLM: 400 "... has already been loaded"
            log.warning("a serving replica could not load %s: %s", name, resp.text[:300])  # paths stay in the log
            raise UpstreamError("the serving replica could not load this model", code="serving_error")
        with self.lock:
            self.loaded.setdefault(r.url, set()).add(name)

    def is_vllm(self, r: _Replica) -> bool:
        """As TUNELOG_SERVING says; with `auto`, as the replica's /v1/models says (vLLM owns its models)."""
        mode = os.environ.get("TUNELOG_SERVING", "builtin").strip().lower()
        if mode in ("vllm", "builtin"):
            return mode == "vllm"
        if r.kind is None:
            owners = {m.get("owned_by") for m in self.client.get(f"{r.url}/v1/models").json().get("data", [])}
            r.kind = "vllm" if "vllm" in owners else "builtin"
        return r.kind == "vllm"

    def forget(self, r: _Replica, name: str) -> None:
        with self.lock:
            self.loaded.get(r.url, set()).discard(name)


_replicas: Replicas | None = None
_replicas_lock = threading.Lock()


def replicas(data_dir: Path) -> Replicas:
    global _replicas
    with _replicas_lock:
        if _replicas is None:
            _replicas = Replicas(replica_urls(), serving_token(data_dir))
        return _replicas


_hashes: dict[tuple[str, float, int], str] = {}


def served_name(data_dir: Path, artifact_path: str) -> str:
    """`lora-` + the first 24 hex digits of the sha256 of the artifact's files (names and contents), cached by
    the folder's newest change: a retrained or replaced artifact gets a new name."""
    from eventlog.artifacts import resolve_rel

    folder = Path(resolve_rel(data_dir, artifact_path))
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    stamp = (str(folder), max((p.stat().st_mtime for p in files), default=0.0), sum(p.stat().st_size for p in files))
    name = _hashes.get(stamp)
    if name is None:
        h = hashlib.sha256()
        for p in files:
            h.update(str(p.relative_to(folder)).encode() + b"\0")
            with open(p, "rb") as f:
                for block in iter(lambda f=f: f.read(1 << 20), b""):
                    h.update(block)
        name = _hashes[stamp] = "lora-" + h.hexdigest()[:24]
    return name


class _Lines:
    """The `data:` payloads of an SSE response, one at a time. Until `first_by` (a monotonic time), the wait is
    bounded: the replica's `: ping` comments every 2 s let that be checked while no token comes."""

    def __init__(self, resp):
        self.resp = resp
        self.it = resp.iter_lines()
        self.first_by: float | None = None

    def next(self) -> dict[str, Any] | None:
        for line in self.it:
            if self.first_by is not None and time.monotonic() > self.first_by:
                raise _Late()
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                return None
            return json.loads(data)
        return None


class _Late(Exception):
    pass


def open_stream(data_dir: Path, base_model: str, artifact_path: str | None, messages: list[dict[str, str]], *,
                max_tokens: int, temperature: float, top_p: float, seed: int | None, result: Generation,
                time_limit: float, queue_timeout: float = 30.0, user: str | None = None) -> tuple[Run, dict[str, Any]]:
    """Send the prompt to a replica and return the answer's pieces as a Run, once its first token is in (or it
    ended), with the replica's timing: {"queue_ms", "ttft_ms", "replica" (its number)}. Errors before that are
    HTTP errors of ours: 429 when every replica is full or no first token came within `queue_timeout` seconds,
    503 when no replica answers. The answer is cut at `time_limit` seconds (finish_reason "length"; closing the
    connection cancels it on the replica). `user` (the project) keeps the replica's shared prompt caches apart."""
    import httpx

    deadline = time.monotonic() + time_limit
    # a replica sends a comment every 2 s while it has nothing else: 30 s of silence means it is stuck
    silence = httpx.Timeout(30.0, connect=2.0)

    pool = replicas(data_dir)
    model = served_name(data_dir, artifact_path) if artifact_path else base_model
    body: dict[str, Any] = {"model": model, "messages": messages, "stream": True, "max_tokens": max_tokens,
                            "temperature": temperature, "top_p": top_p,
                            "stream_options": {"include_usage": True}}
    if seed is not None:
        body["seed"] = seed
    if user:
        body["user"] = user
    busy: DomainError | None = None
    for number, r in pool.order():
        pool.take(r)
        resp = None
        try:
            if artifact_path:
                pool.ensure_adapter(r, model, artifact_path, data_dir)
            send = lambda r=r: pool.client.send(pool.client.build_request(  # noqa: E731
                "POST", f"{r.url}/v1/chat/completions", json=body, timeout=silence), stream=True)
            resp = send()
            if resp.status_code == 404 and artifact_path:  # the replica restarted and lost the adapter
                resp.close()
                pool.forget(r, model)
                pool.ensure_adapter(r, model, artifact_path, data_dir)
                resp = send()
            if resp.status_code == 429:
                resp.close()
                busy = TooManyRequests("every serving replica is full; retry shortly", retry_after=1,
                                       code="serving_busy")
                pool.give(r)
                continue
            if resp.status_code >= 400:
                text = resp.read().decode(errors="replace")[:300]
                resp.close()
                log.warning("serving replica %s answered %s: %s", number, resp.status_code, text)
                if resp.status_code == 400:  # a bound of the replica's (its message names no path)
                    raise ValidationError(f"the serving replica refused the request: {_message(text)}",
                                          param="messages")
                if resp.status_code == 404:
                    raise NotFound("the serving replica does not have this model", code="model_not_found")
                raise UpstreamError("the serving replica failed; retry shortly", code="serving_error")
            lines = _Lines(resp)
            lines.first_by = time.monotonic() + queue_timeout
            first: list[str] = []
            timing: dict[str, Any] = {"replica": number}
            try:
                ended = _read_until_text(lines, first, result, timing)
            except _Broken:
                resp.close()
                raise UpstreamError("the serving replica could not answer; retry shortly",
                                    code="serving_error") from None
            except (_Late, httpx.ReadTimeout):
                resp.close()
                raise TooManyRequests(f"no generation started within {queue_timeout:g} s: the serving tier is "
                                      "busy; retry shortly", retry_after=5, code="model_busy") from None
            lines.first_by = None
        except (httpx.TransportError, json.JSONDecodeError) as e:
            log.warning("serving replica %s failed before answering (%s): trying the next", number,
                        type(e).__name__)
            if resp is not None:
                resp.close()  # the replica stops generating what nobody will read
            pool.give(r)
            if isinstance(e, httpx.TransportError):  # unreachable or broken: quarantined a few seconds
                pool.mark_down(r)
            continue
        except BaseException:
            if resp is not None:
                resp.close()
            pool.give(r)
            raise
        return Run(_pieces(pool, r, resp, lines, first, ended, result, timing, deadline),
                   lambda r=r, resp=resp: _done(pool, r, resp)), timing
    if busy is not None:
        raise busy
    raise ServingUnavailable("no serving replica is answering; retry shortly")


def _message(text: str) -> str:
    try:
        return str(json.loads(text)["error"]["message"])[:300]
    except (ValueError, KeyError, TypeError):
        return "invalid request"


def _done(pool: Replicas, r: _Replica, resp) -> None:
    try:
        resp.close()  # a client gone: closing the connection cancels the request on the replica
    finally:
        pool.give(r)


def _take(chunk: dict[str, Any], parts: list[str], result: Generation, timing: dict[str, Any]) -> bool:
    """Fold one chunk into the answer; True when it was the last."""
    if "error" in chunk:
        raise _Broken(str((chunk.get("error") or {}).get("message", "the replica failed")))
    if chunk.get("usage"):
        result.prompt_tokens = int(chunk["usage"].get("prompt_tokens") or 0)
        result.completion_tokens = int(chunk["usage"].get("completion_tokens") or 0)
    if chunk.get("tunelog"):
        info = chunk["tunelog"]
        timing.update({k: float(info[k]) for k in ("queue_ms", "ttft_ms") if isinstance(info.get(k), int | float)})
        if isinstance(info.get("prompt_tokens"), int) and not result.prompt_tokens:
            result.prompt_tokens = info["prompt_tokens"]
    last = False
    for choice in chunk.get("choices") or []:
        piece = (choice.get("delta") or {}).get("content")
        if piece:
            parts.append(piece)
        if choice.get("finish_reason"):
            result.finish_reason = choice["finish_reason"]
            last = True
    return last


class _Broken(Exception):
    pass


def _read_until_text(lines: _Lines, first: list[str], result: Generation, timing: dict[str, Any]) -> bool:
    """Read chunks until one carries text (kept in `first`) or the answer ends; True if it ended (what follows
    the last piece, usage, is read too)."""
    while True:
        chunk = lines.next()
        if chunk is None:  # ended without its last chunk
            result.finish_reason = "error"
            return True
        if _take(chunk, first, result, timing):
            _drain(lines, result, timing)
            return True
        if first:
            return False


def _drain(lines: _Lines, result: Generation, timing: dict[str, Any]) -> None:
    while (chunk := lines.next()) is not None:  # usage (and [DONE]) follow the last piece
        _take(chunk, [], result, timing)


def _pieces(pool: Replicas, r: _Replica, resp, lines: _Lines, first: list[str], ended: bool, result: Generation,
            timing: dict[str, Any], deadline: float) -> Generator[str, None, None]:
    import httpx

    parts: list[str] = list(first)
    try:
        yield from first
        if not ended:
            while True:
                if time.monotonic() > deadline:  # past its time: the answer ends here (closing cancels it)
                    result.finish_reason = "length"
                    break
                chunk = lines.next()
                if chunk is None:  # the stream ended without its last chunk: the answer is cut, not complete
                    result.finish_reason = "error"
                    break
                n = len(parts)
                last = _take(chunk, parts, result, timing)
                yield from parts[n:]
                if last:
                    _drain(lines, result, timing)
                    break
    except (httpx.TransportError, json.JSONDecodeError, _Broken) as e:
        log.warning("a serving replica broke mid-answer (%s)", type(e).__name__)
        if isinstance(e, httpx.TransportError) and not isinstance(e, httpx.ReadTimeout):
            pool.mark_down(r)
        result.finish_reason = "error"
    finally:
        result.text = "".join(parts)
        if not result.completion_tokens:
            result.completion_tokens = len(parts)
