"""Errors the domain raises; api/errors.py maps each family to one HTTP status."""
from __future__ import annotations

import math


class DomainError(Exception):
    status = 400
    code = "invalid_request_error"

    def __init__(self, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        if code:
            self.code = code


class ValidationError(DomainError):
    status = 400


class NotFound(DomainError):
    status = 404
    code = "not_found"


class Unauthorized(DomainError):
    status = 401
    code = "invalid_api_key"


class Forbidden(DomainError):
    status = 403
    code = "insufficient_permissions"


class Conflict(DomainError):
    status = 409
    code = "conflict"


class PreconditionFailed(DomainError):
    """An If-Match (expected version) that is no longer current."""

    status = 412
    code = "precondition_failed"


class PayloadTooLarge(DomainError):
    status = 413
    code = "file_too_large"


class ConcurrencyConflict(Conflict):
    """An append stated a stream version that is no longer current."""

    code = "concurrency_conflict"

    def __init__(self, stream_id: str, expected: int | None, actual: int | None):
        super().__init__(f"stream {stream_id} is at version {actual}, expected {expected}")
        self.stream_id, self.expected, self.actual = stream_id, expected, actual


class IdempotencyMismatch(DomainError):
    status = 422
    code = "idempotency_key_reused"


class ServiceUnavailable(DomainError):
    """Something the operator must fix, or a dependency that is down: 503 with Retry-After."""

    status = 503
    code = "service_unavailable"


class UpstreamError(DomainError):
    """A delegated provider answered with an error or could not be reached (chat through the provider)."""

    status = 502
    code = "provider_error"


class TooManyRequests(DomainError):
    """A limit was hit: 429 with Retry-After (whole seconds) and an OpenAI-shaped rate_limit_error."""

    status = 429
    code = "rate_limit_exceeded"

    def __init__(self, message: str, retry_after: float, code: str | None = None, param: str | None = None):
        super().__init__(message, param=param, code=code)
        self.retry_after = max(1, math.ceil(retry_after))
