"""/healthz (no auth), /metrics (Prometheus), /openapi.json."""
from __future__ import annotations

import time

from flask import Blueprint, Flask, Response, g, jsonify, request
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest

from api.common import svc
from api.openapi import document

bp = Blueprint("health", __name__)

REQUESTS = Counter("tunelog_http_requests_total", "HTTP requests", ["method", "route", "status"])
LATENCY = Histogram("tunelog_http_request_seconds", "HTTP request latency", ["method", "route"])


@bp.get("/healthz")
def healthz():
    checks = {}
    try:
        with svc().pool.connection(timeout=2) as c:
            c.execute("SELECT 1")
        checks["postgres"] = "ok"
    except Exception as e:  # noqa: BLE001 - any failure means unhealthy
        checks["postgres"] = f"unreachable: {type(e).__name__}"
    try:
        svc().redis().ping()
        checks["redis"] = "ok"
    except Exception as e:  # noqa: BLE001
        checks["redis"] = f"unreachable: {type(e).__name__}"
    ok = all(v == "ok" for v in checks.values())
    return jsonify({"status": "ok" if ok else "unavailable", **checks}), 200 if ok else 503


@bp.get("/metrics")
def metrics():
    return Response(generate_latest(), mimetype=CONTENT_TYPE_LATEST)


@bp.get("/openapi.json")
def openapi():
    return jsonify(document())


def register(app: Flask) -> None:
    @app.before_request
    def _start():
        g._t0 = time.perf_counter()

    @app.after_request
    def _observe(resp):
        route = request.url_rule.rule if request.url_rule else "unmatched"
        REQUESTS.labels(request.method, route, str(resp.status_code)).inc()
        if hasattr(g, "_t0"):
            LATENCY.labels(request.method, route).observe(time.perf_counter() - g._t0)
        return resp
