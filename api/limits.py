"""Bounds on what one client can hold, so that one viewer cannot stall the API (DESIGN §7):

- request rates per API key (the `limits` library, moving window): chat completions and everything
  else, 429 + Retry-After;
- slots for the long requests (chat generation, SSE streams): a few per key, and at most half of the
  web threads in all, so the other half always serves /healthz, auth, job reads and the like;
- claims on Idempotency-Keys whose request is still being answered (a concurrent duplicate is refused).

Every number comes from the environment (read once by create_app), so tests and operators can change it:

    TUNELOG_RATE_LIMIT_CHAT            30/minute    chat completions, per key
    TUNELOG_RATE_LIMIT_DEFAULT         1200/minute  every other route, per key and route
    TUNELOG_RATELIMIT_STORAGE          memory://    a limits storage URI (e.g. redis://...) for several processes
    TUNELOG_WEB_THREADS                32           gunicorn's threads (api/__main__.py reads the same)
    TUNELOG_MAX_LONG_REQUESTS          threads / 2  chats + SSE streams in flight, all keys together
    TUNELOG_CHAT_CONCURRENCY_PER_KEY   2            chats in flight per key
    TUNELOG_SSE_STREAMS_PER_KEY        4            open job streams per key
    TUNELOG_SSE_MAX_SECONDS            600          then the stream ends with a `reconnect` event
    TUNELOG_SSE_KEY_RECHECK_SECONDS    3            an open stream re-checks that its key is not revoked
    TUNELOG_GENERATION_QUEUE_SECONDS   30           longest wait for the model before 429
    TUNELOG_GENERATION_MAX_SECONDS     120          a generation running longer is stopped
    TUNELOG_CHAT_MAX_MESSAGES          256          messages in one chat request
    TUNELOG_CHAT_MAX_TEXT_BYTES        65536        UTF-8 bytes of text in all messages together
    TUNELOG_CHAT_MAX_CONTEXT_TOKENS    (model's)    a cap below the model's context window
"""
from __future__ import annotations

import os
import select
import socket
import ssl
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from flask import Flask, current_app, g, request

from domain.errors import Conflict, DomainError, TooManyRequests  # noqa: F401 (TooManyRequests: re-exported)

DEFAULT_WEB_THREADS = 32
EXEMPT = {"/healthz", "/metrics"}
CHAT_ENDPOINT = "chat.chat_completions"


class RequestInProgress(Conflict):
    code = "request_in_progress"


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    return default if raw in (None, "") else int(raw)


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    return default if raw in (None, "") else float(raw)


@dataclass(frozen=True)
class Limits:
    chat_rate: str = "30/minute"
    default_rate: str = "1200/minute"
    storage: str = "memory://"
    long_requests: int = DEFAULT_WEB_THREADS // 2
    chats_per_key: int = 2
    streams_per_key: int = 4
    stream_seconds: float = 600.0
    key_recheck_seconds: float = 3.0
    queue_seconds: float = 30.0
    generation_seconds: float = 120.0
    max_messages: int = 256
    max_text_bytes: int = 64 * 1024
    context_tokens: int | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Limits:
        env = os.environ if env is None else env
        threads = web_threads(env)
        context = env.get("TUNELOG_CHAT_MAX_CONTEXT_TOKENS")
        return cls(
            chat_rate=env.get("TUNELOG_RATE_LIMIT_CHAT") or cls.chat_rate,
            default_rate=env.get("TUNELOG_RATE_LIMIT_DEFAULT") or cls.default_rate,
            storage=env.get("TUNELOG_RATELIMIT_STORAGE") or cls.storage,
            long_requests=_int(env, "TUNELOG_MAX_LONG_REQUESTS", max(1, threads // 2)),
            chats_per_key=_int(env, "TUNELOG_CHAT_CONCURRENCY_PER_KEY", cls.chats_per_key),
            streams_per_key=_int(env, "TUNELOG_SSE_STREAMS_PER_KEY", cls.streams_per_key),
            stream_seconds=_float(env, "TUNELOG_SSE_MAX_SECONDS", cls.stream_seconds),
            key_recheck_seconds=_float(env, "TUNELOG_SSE_KEY_RECHECK_SECONDS", cls.key_recheck_seconds),
            queue_seconds=_float(env, "TUNELOG_GENERATION_QUEUE_SECONDS", cls.queue_seconds),
            generation_seconds=_float(env, "TUNELOG_GENERATION_MAX_SECONDS", cls.generation_seconds),
            max_messages=_int(env, "TUNELOG_CHAT_MAX_MESSAGES", cls.max_messages),
            max_text_bytes=_int(env, "TUNELOG_CHAT_MAX_TEXT_BYTES", cls.max_text_bytes),
            context_tokens=int(context) if context else None,
        )


def web_threads(env: Mapping[str, str] | None = None) -> int:
    env = os.environ if env is None else env
    return _int(env, "TUNELOG_WEB_THREADS", DEFAULT_WEB_THREADS)


class Lease:
    """Slots held by one request; release() is idempotent, so every exit path may call it."""

    def __init__(self, slots: Slots, names: tuple[str, ...]):
        self._slots, self._names, self._released = slots, names, False

    def release(self) -> None:
        with self._slots.lock:
            if self._released:
                return
            self._released = True
            for n in self._names:
                self._slots.held[n] -= 1
                if self._slots.held[n] <= 0:
                    del self._slots.held[n]


class Slots:
    """Named counting semaphores that never wait: a request takes all its slots at once or none."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.held: Counter[str] = Counter()

    def try_acquire(self, wanted: Iterable[tuple[str, int, DomainError]]) -> Lease:
        """`wanted`: (slot name, capacity, the error to raise when it is full), checked in order."""
        wanted = list(wanted)
        with self.lock:
            for name, cap, error in wanted:
                if self.held[name] >= cap:
                    raise error
            for name, _, _ in wanted:
                self.held[name] += 1
        return Lease(self, tuple(n for n, _, _ in wanted))


class State:
    def __init__(self, limits: Limits):
        self.limits = limits
        self.slots = Slots()


def state() -> State:
    return current_app.extensions["tunelog_limits"]


def limits() -> Limits:
    return state().limits


def acquire(kind: str) -> Lease:
    """Slots for one long request of `kind` ("chat" or "stream") by the caller's key; 429 when the key
    has its share already or when the long requests fill half of the web threads."""
    st = state()
    lim = st.limits
    key = g.principal.key_id
    per_key = lim.chats_per_key if kind == "chat" else lim.streams_per_key
    what = "chat completions in progress" if kind == "chat" else "open job streams"
    return st.slots.try_acquire([
        (f"{kind}:{key}", per_key, TooManyRequests(
            f"this API key already has {per_key} {what}, the most one key may have at once; finish or close "
            "one and retry", retry_after=5 if kind == "chat" else 30, code="concurrency_limit_exceeded")),
        ("long", lim.long_requests, TooManyRequests(
            f"the server is answering {lim.long_requests} chats and streams already, its limit; retry shortly",
            retry_after=5, code="server_busy")),
    ])


def claim(command_id: str, message: str) -> Lease:
    """An in-process claim on an idempotent command (the API is one process): a second request with the
    same key while the first is still running gets 409 request_in_progress instead of running twice."""
    return state().slots.try_acquire([(f"cmd:{command_id}", 1, RequestInProgress(message, param="Idempotency-Key"))])


def disconnect_probe() -> Callable[[], bool]:
    """A check whether this request's client has closed its connection (gunicorn's socket is readable
    and at EOF), so a long request can stop at once instead of at its next failed write. Always False
    where the socket is not reachable (the test client, TLS)."""
    sock = request.environ.get("gunicorn.socket")
    if not isinstance(sock, socket.socket) or isinstance(sock, ssl.SSLSocket):
        return lambda: False

    def gone() -> bool:
        try:
            readable, _, _ = select.select([sock], [], [], 0)
            return bool(readable) and sock.recv(1, socket.MSG_PEEK) == b""
        except (OSError, ValueError):
            return True

    return gone


# ---- request rates (the limits library) ----------------------------------------------------------------
def _rate_key() -> str:
    principal = getattr(g, "principal", None)
    return principal.key_id if principal is not None else "ip:" + (request.remote_addr or "?")


def register(app: Flask) -> None:
    """Read the limits, install the rate limiter (after auth's before_request, so it sees the key) and the
    429 handlers. Per route and key: chat completions at TUNELOG_RATE_LIMIT_CHAT, the rest at
    TUNELOG_RATE_LIMIT_DEFAULT; /healthz and /metrics are never limited."""
    from limits import parse
    from limits.storage import storage_from_string
    from limits.strategies import MovingWindowRateLimiter

    from api.errors import error_response

    lim = Limits.from_env()
    app.extensions["tunelog_limits"] = State(lim)
    # `limits` (the library flask-limiter is built on) called directly: flask-limiter's per-request
    # machinery cost 0.55 ms of a 1.3 ms job read; a moving-window hit on this storage costs ~20 µs.
    window = MovingWindowRateLimiter(storage_from_string(lim.storage))
    chat_rate, default_rate = parse(lim.chat_rate), parse(lim.default_rate)
    shared = not lim.storage.startswith("memory://")

    @app.before_request
    def _rate_limit():
        if request.path in EXEMPT or request.method == "OPTIONS":
            return None
        item = chat_rate if request.endpoint == CHAT_ENDPOINT else default_rate
        key, route = _rate_key(), request.endpoint or "unmatched"
        try:
            allowed = window.hit(item, "tunelog", key, route)
        except Exception:  # noqa: BLE001 - a shared storage that is down must not take the API with it
            if not shared:
                raise
            return None
        if not allowed:
            stats = window.get_window_stats(item, "tunelog", key, route)
            raise TooManyRequests(f"rate limit reached for this API key: {item} on this route; retry later",
                                  max(1.0, stats.reset_time - time.time()))
        return None

    def too_many(code: str, message: str, retry_after: int):
        resp, status = error_response(429, code, message, None, "rate_limit_error")
        resp.headers["Retry-After"] = str(retry_after)
        return resp, status

    @app.errorhandler(TooManyRequests)
    def _too_many(e: TooManyRequests):
        return too_many(e.code, e.message, e.retry_after)
