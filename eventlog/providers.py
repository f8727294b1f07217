"""Delegated fine-tuning providers: anything that speaks OpenAI's fine-tuning API (docs/delegation.md).

`openai/<model>` is the provider of the standard `OPENAI_BASE_URL` and `OPENAI_API_KEY` (set or not);
more are named in a TOML file (`TUNELOG_PROVIDERS_FILE`, default `<data dir>/providers.toml`):

    [providers.district]                    # models "district/<remote model>"
    base_url = "http://gpu.district.example/v1"
    api_key_env = "DISTRICT_API_KEY"        # the *name* of the variable holding the key, or:
    # api_key_file = "/run/secrets/district_key"
    chat_extra_body = { retrieval = false } # sent with every chat request (a tunelog provider's option)

    [prices]                                # USD per million training tokens (overrides the defaults)
    "district/smollm2-135m-instruct" = 0.0

Keys are read from the environment or the file when a client is made: they never enter the log, a
table, an API response, an error message or a log line (`scrub` takes them out of provider messages).
"""
from __future__ import annotations

import logging
import math
import os
import re
import threading
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

NAME_RE = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
ENV_NAME_RE = re.compile(r"^[A-Z_][A-Z0-9_]{0,127}$")  # a variable's *name*: a key pasted there is refused
log = logging.getLogger("tunelog.providers")
# Published list prices (USD per 1M training tokens) of OpenAI's fine-tunable models, 2025; an operator's
# `[prices]` table overrides or extends them. A model without a price gets no estimate.
DEFAULT_PRICES: dict[str, float] = {
    "openai/gpt-4.1-2025-04-14": 25.0,
    "openai/gpt-4.1-mini-2025-04-14": 5.0,
    "openai/gpt-4.1-nano-2025-04-14": 1.5,
    "openai/gpt-4o-2024-08-06": 25.0,
    "openai/gpt-4o-mini-2024-07-18": 3.0,
    "openai/gpt-3.5-turbo-0125": 8.0,
}
# anything shaped like an API key, and a provider's masked echo of one ("sk-abc*****wxyz", "*****wxyz")
_SECRET_LIKE = re.compile(r"\b(?:sk|tl|rk|pk)-[A-Za-z0-9_*.\-]{6,}|\*{3,}[A-Za-z0-9_\-]{0,8}")


class ProviderConfigError(ValueError):
    """The operator's provider configuration is unreadable or invalid (named in the message)."""


@dataclass(frozen=True)
class Provider:
    name: str
    base_url: str
    api_key_env: str | None = None
    api_key_file: str | None = None
    chat_extra_body: dict[str, Any] = field(default_factory=dict)

    @property
    def key_source(self) -> str:
        """Where the key comes from, by name (safe to show: never the key)."""
        if self.api_key_file:
            return f"the file {self.api_key_file}"
        return f"the environment variable {self.api_key_env}"

    def api_key(self) -> str | None:
        if self.api_key_file:
            try:
                return Path(self.api_key_file).read_text(encoding="utf-8").strip() or None
            except OSError:
                return None
        return (os.environ.get(self.api_key_env or "") or "").strip() or None

    def client(self, timeout: float = 30.0, max_retries: int = 0):
        """An `openai.OpenAI` client for this provider. Retries are ours (the caller's backoff), not the SDK's,
        so that each transient error can be recorded."""
        from openai import OpenAI

        key = self.api_key()
        if key is None:
            # where the key should come from is the operator's to know (the worker log), not every trainer's
            log.warning("provider %s has no API key: set %s", self.name, self.key_source)
            raise ProviderConfigError(f"provider {self.name!r} has no API key configured on this server")
        # one client per process, provider, key and timeout: its connection pool is reused across polls
        cache_key = (os.getpid(), self.name, self.base_url, hash(key), timeout, max_retries)
        with _cache_lock:
            found = _clients.get(cache_key)
            if found is None:
                if len(_clients) > 64:
                    _clients.clear()
                found = _clients[cache_key] = OpenAI(base_url=self.base_url, api_key=key, timeout=timeout,
                                                     max_retries=max_retries)
        return found

    def scrub(self, text: str) -> str:
        """A provider's message without this provider's key (nor anything shaped like an API key)."""
        key = self.api_key()
        if key:
            text = text.replace(key, "<redacted>")
        return _SECRET_LIKE.sub("<redacted>", text)[:1000]


@dataclass(frozen=True)
class ProviderConfig:
    providers: dict[str, Provider]
    prices: dict[str, float]

    def split(self, model: str) -> tuple[Provider, str] | None:
        """`<provider>/<remote model>` -> (provider, remote model), or None if `model` names no provider."""
        name, sep, remote = model.partition("/")
        if not sep or not remote or name not in self.providers:
            return None
        return self.providers[name], remote

    def price(self, model: str) -> float | None:
        return self.prices.get(model)


_cache: dict[tuple, ProviderConfig] = {}
_clients: dict[tuple, Any] = {}
_cache_lock = threading.Lock()


def load(data_dir: Path | None = None) -> ProviderConfig:
    """The providers: `openai` from the standard variables, then the TOML file's. Re-read when the file or the
    variables change (an operator adds a provider without a restart)."""
    path = Path(os.environ.get("TUNELOG_PROVIDERS_FILE") or (data_dir or Path(".data")) / "providers.toml")
    try:
        stamp = path.stat().st_mtime_ns
    except OSError:
        stamp = None
    key = (str(path), stamp, os.environ.get("OPENAI_BASE_URL"))
    with _cache_lock:
        if key in _cache:
            return _cache[key]
    providers = {"openai": Provider("openai", (os.environ.get("OPENAI_BASE_URL") or "https://api.openai.com/v1"),
                                    api_key_env="OPENAI_API_KEY")}
    prices = dict(DEFAULT_PRICES)
    if stamp is not None:
        try:
            raw = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
            raise ProviderConfigError(f"the providers file {path} is not readable TOML: {e}") from None
        for name, spec in (raw.get("providers") or {}).items():
            providers[name] = _provider(name, spec, path)
        for model, price in (raw.get("prices") or {}).items():
            if isinstance(price, bool) or not isinstance(price, (int, float)) or not math.isfinite(price) \
                    or price < 0:
                raise ProviderConfigError(f"{path}: prices.{model!r} must be a number of USD per million "
                                          "training tokens, at least 0")
            prices[model] = float(price)
    config = ProviderConfig(providers, prices)
    with _cache_lock:
        _cache.clear()
        _cache[key] = config
    return config


def _provider(name: str, spec: Any, path: Path) -> Provider:
    where = f"{path}: providers.{name}"
    if not NAME_RE.match(name) or name in ("hf", "ft", "dspy"):
        raise ProviderConfigError(f"{where}: a provider name is 1-32 lowercase letters, digits, '-' or '_', "
                                  "starting with a letter, and not hf, ft or dspy")
    if not isinstance(spec, dict):
        raise ProviderConfigError(f"{where} must be a table")
    if "api_key" in spec:
        raise ProviderConfigError(f"{where}: give the key's source (api_key_env or api_key_file), not the key")
    unknown = set(spec) - {"base_url", "api_key_env", "api_key_file", "chat_extra_body"}
    if unknown:
        raise ProviderConfigError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
    base_url = spec.get("base_url")
    if not isinstance(base_url, str) or not re.match(r"^https?://[^/@?#\s]+(/[^?#@\s]*)?$", base_url):
        # no credentials or query in the URL: HTTP clients log URLs, and keys belong in api_key_env/file
        raise ProviderConfigError(f"{where}: base_url must be an http(s) URL without credentials or a query")
    env, file = spec.get("api_key_env"), spec.get("api_key_file")
    if (env is None) == (file is None):
        raise ProviderConfigError(f"{where}: give exactly one of api_key_env (a variable's name) or api_key_file")
    if env is not None and (not isinstance(env, str) or not ENV_NAME_RE.match(env)):
        raise ProviderConfigError(f"{where}: api_key_env must be the name of an environment variable "
                                  "(A-Z, 0-9, _), not the key itself")
    if file is not None and not isinstance(file, str):
        raise ProviderConfigError(f"{where}: api_key_file must be a path")
    extra = spec.get("chat_extra_body") or {}
    if not isinstance(extra, dict):
        raise ProviderConfigError(f"{where}: chat_extra_body must be a table")
    return Provider(name, base_url.rstrip("/"), api_key_env=env, api_key_file=file, chat_extra_body=extra)


# ---- the remote models a provider offers (GET /v1/models), cached ------------------------------------------
MODELS_TTL = 600.0
_models: dict[str, tuple[float, list[dict[str, Any]]]] = {}


def remote_models(provider: Provider, refresh: bool = False) -> list[dict[str, Any]]:
    """The provider's `/models` list, cached for MODELS_TTL seconds (or refreshed on demand). A provider
    that cannot be asked gives what was cached, or nothing: a list of models never fails for it."""
    now = time.monotonic()
    cached = _models.get(provider.name)
    if cached and now - cached[0] < (60.0 if refresh else MODELS_TTL):  # a refresh at most once a minute
        return cached[1]
    try:
        listed = []
        for m in provider.client(timeout=10.0).models.list():
            if len(listed) >= 1000:  # bounded: a provider's list is shown on every GET /v1/models
                break
            model_id = clean_text(m.id, 180)
            if model_id and model_id == m.id:
                listed.append({"id": model_id, "created": int(clean_number(getattr(m, "created", 0)) or 0),
                               "owned_by": clean_text(getattr(m, "owned_by", None) or "", 64) or None})
    except Exception:  # noqa: BLE001 - unreachable, no key, refused: the list is what we had
        kept = cached[1] if cached else []
        _models[provider.name] = (now - MODELS_TTL + 60.0, kept)  # asked again in a minute, not on every list
        return kept
    _models[provider.name] = (now, listed)
    return listed


def classify(exc: BaseException) -> tuple[bool, str, str]:
    """An SDK error -> (transient, code, message). Transient: 429, 5xx, timeouts and connection errors
    (retried with backoff); anything else is the provider's final answer (the job fails with it)."""
    import openai

    if isinstance(exc, (openai.APITimeoutError, openai.APIConnectionError)):
        return True, "provider_unreachable", f"the provider could not be reached ({type(exc).__name__})"
    if isinstance(exc, openai.APIResponseValidationError):  # a proxy's error page, a malformed answer
        return True, "provider_bad_response", "the provider's answer was not what its API promises"
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        body = exc.body if isinstance(exc.body, dict) else {}
        err = body.get("error") if isinstance(body.get("error"), dict) else body
        code = (err or {}).get("code") or {400: "invalid_request", 401: "invalid_api_key", 403: "permission_denied",
                                           404: "not_found", 429: "rate_limit_exceeded"}.get(status, f"http_{status}")
        message = (err or {}).get("message") or str(exc)
        # 408, 409 (a race with the provider's own state change), 429 and 5xx are worth another try
        transient = status in (408, 409, 429) or status >= 500
        return transient, clean_text(str(code), 64), clean_text(f"{status}: {message}", 1000)
    # anything else (a bug of ours, an unexpected shape): retried, never taken as the provider's verdict
    return True, "provider_error", f"unexpected {type(exc).__name__}"


def clean_text(value, limit: int = 2000) -> str:
    """A provider's string as the log can keep it: text, no NUL, no lone surrogate, at most `limit` chars."""
    text = value if isinstance(value, str) else ("" if value is None else str(value))
    text = text[: limit * 2].replace("\x00", "").encode("utf-8", "replace").decode("utf-8")
    return text[:limit]


def clean_number(value) -> float | int | None:
    """A provider's number as the log can keep it: finite int or float, else None (jsonb has no NaN)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value if abs(value) < 1e15 else None
