"""One handler per exception family; every error is JSON {"error": {"code", "message", "param", "type"}}."""
from __future__ import annotations

import logging

import psycopg
import redis
from flask import Flask, jsonify
from psycopg_pool import PoolTimeout
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from domain.errors import DomainError
from eventlog.db import DatabaseUnavailable

log = logging.getLogger("tunelog.api")
RETRY_AFTER_SECONDS = 5


def error_response(status: int, code: str | None, message: str, param: str | None = None, type_: str | None = None):
    body = {"error": {"code": code, "message": message, "param": param,
                      "type": type_ or ("invalid_request_error" if status < 500 else "server_error")}}
    return jsonify(body), status


def register(app: Flask) -> None:
    from api.common import Replayed

    @app.errorhandler(Replayed)
    def _replayed(e: Replayed):
        return e.response

    @app.errorhandler(DomainError)
    def _domain(e: DomainError):
        resp, status = error_response(e.status, e.code, e.message, e.param)
        if status == 503 or (status == 429 and getattr(e, "retry_after", None)):
            resp.headers["Retry-After"] = str(getattr(e, "retry_after", None) or RETRY_AFTER_SECONDS)
        return resp, status

    @app.errorhandler(RequestEntityTooLarge)
    def _too_large(e):
        limit = app.config.get("TUNELOG_MAX_UPLOAD_BYTES")
        return error_response(413, "file_too_large", f"the request body is over the upload limit of {limit} bytes",
                              "file")

    @app.errorhandler(HTTPException)
    def _http(e: HTTPException):
        return error_response(e.code or 500, (e.name or "error").lower().replace(" ", "_"), e.description or e.name)

    def _unavailable(code: str, message: str):
        resp, status = error_response(503, code, message)
        resp.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
        return resp, status

    @app.errorhandler(DatabaseUnavailable)
    @app.errorhandler(psycopg.OperationalError)
    @app.errorhandler(PoolTimeout)
    def _db(e):
        return _unavailable("database_unavailable", "the database is unreachable; try again shortly")

    @app.errorhandler(redis.exceptions.ConnectionError)
    @app.errorhandler(redis.exceptions.TimeoutError)
    def _redis(e):
        return _unavailable("queue_unavailable", "the job queue (Redis) is unreachable; try again shortly")

    @app.errorhandler(psycopg.DataError)
    @app.errorhandler(UnicodeEncodeError)
    def _bad_text(e):
        # NUL bytes and unpaired surrogates cannot be stored or compared as text: the input's fault
        return error_response(400, "invalid_characters", "the request contains characters that are not allowed "
                              "in text (a NUL byte or an unpaired surrogate)")

    @app.errorhandler(RecursionError)
    def _too_deep(e):
        return error_response(400, "invalid_request_error", "the request is nested too deeply")

    @app.errorhandler(Exception)
    def _unexpected(e: Exception):
        log.exception("unhandled error")
        return error_response(500, "internal_error", "internal server error")
