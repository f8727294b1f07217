"""Chat answered through a delegated provider (OpenAI's chat-completions protocol, streamed).

The API keeps what is ours (auth, aliases, retrieval, the prompt, sources, ChatAnswered); the provider
generates. What leaves is redacted first (emails, phone numbers, the project's roster of names), and the
counts are recorded with the answer. The request is sent before the response starts, so a provider's
refusal (unknown model, context too long, bad key, rate limit) is an HTTP error of ours, not a broken stream.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Generator
from typing import Any

from domain.errors import NotFound, UpstreamError, ValidationError
from domain.redaction import Redaction, redactor_for
from eventlog.generation import Generation, Run

log = logging.getLogger("tunelog.api")


def _raise_for(provider, exc: BaseException, model: str) -> None:
    """A provider's error as ours: 404 model_not_found, 400 with its message, 429 with Retry-After, else 502."""
    import openai

    from api.limits import TooManyRequests
    from eventlog import providers

    _transient, code, message = providers.classify(exc)
    message = provider.scrub(message)
    if isinstance(exc, openai.NotFoundError):
        raise NotFound(f"the model {model!r} does not exist at provider {provider.name!r}", param="model",
                       code="model_not_found") from None
    if isinstance(exc, openai.RateLimitError):
        raise TooManyRequests(f"provider {provider.name!r} is rate limiting: {message}", retry_after=5,
                              code="provider_rate_limited") from None
    if isinstance(exc, openai.BadRequestError):
        raise ValidationError(f"provider {provider.name!r} refused the request: {message}", param="messages",
                              code=code) from None
    raise UpstreamError(f"provider {provider.name!r} could not answer: {message}", code="provider_error") from None


def open_stream(provider, remote_model: str, model: str, messages: list[dict[str, str]], *, max_tokens: int,
                temperature: float, top_p: float, seed: int | None, result: Generation, roster: tuple[str, ...],
                time_limit: float) -> tuple[Run, Redaction]:
    """Send the (redacted) prompt and return the answer's pieces as a Run, and what was redacted."""
    redactor = redactor_for(tuple(roster))
    total = Redaction()
    sent = []
    for m in messages:
        text, counts = redactor.redact_text(m["content"])
        total = total + counts
        sent.append({"role": m["role"], "content": text})
    params: dict[str, Any] = {"model": remote_model, "messages": sent, "stream": True, "max_tokens": max_tokens,
                              "temperature": temperature, "top_p": top_p,
                              "stream_options": {"include_usage": True}}
    if seed is not None:
        params["seed"] = seed
    if provider.chat_extra_body:
        params["extra_body"] = dict(provider.chat_extra_body)
    try:
        client = provider.client(timeout=time_limit)
        stream = client.chat.completions.create(**params)
    except Exception as e:  # noqa: BLE001 - every provider error becomes an HTTP error of ours
        _raise_for(provider, e, model)
        raise

    deadline = time.monotonic() + time_limit
    max_chars = max_tokens * 32  # no token is longer: a provider ignoring max_tokens is cut off here

    def pieces() -> Generator[str, None, None]:
        parts: list[str] = []
        size = 0
        try:
            for chunk in stream:
                if time.monotonic() > deadline or size > max_chars:  # a slow or endless provider: the answer ends
                    result.finish_reason = "length"
                    break
                if chunk.usage is not None:
                    result.prompt_tokens = chunk.usage.prompt_tokens or 0
                    result.completion_tokens = chunk.usage.completion_tokens or 0
                for choice in chunk.choices or []:
                    if choice.finish_reason:
                        result.finish_reason = choice.finish_reason
                    piece = choice.delta.content if choice.delta else None
                    if piece:
                        parts.append(piece)
                        size += len(piece)
                        yield piece
        except Exception as e:  # noqa: BLE001 - mid-stream: the answer ends here, marked as such
            log.warning("provider %s failed mid-answer (%s)", provider.name, type(e).__name__)
            result.finish_reason = "error"
        finally:
            result.text = "".join(parts)
            stream.close()
        if not result.completion_tokens:
            result.completion_tokens = len(parts)

    return Run(pieces(), lambda: None), total
