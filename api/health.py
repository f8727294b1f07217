"""/healthz (no auth), /metrics (Prometheus), /openapi.json."""
from __future__ import annotations

import threading
import time
from typing import Any

from flask import Blueprint, Flask, Response, current_app, g, jsonify, request
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest

from api.common import svc
from api.openapi import document

bp = Blueprint("health", __name__)

REQUESTS = Counter("tunelog_http_requests_total", "HTTP requests", ["method", "route", "status"])
LATENCY = Histogram("tunelog_http_request_seconds", "HTTP request latency", ["method", "route"])


PART_STALE_SECONDS = 15  # a part whose heartbeat is older than this is reported "stale"


HEALTH_CACHE_SECONDS = 1.0
HEALTH_STALE_SECONDS = 5.0  # older than this, an answer is computed again before it is given
_health_lock = threading.Lock()


@bp.get("/healthz")
def healthz():
    """Postgres and Redis (503 with Retry-After when either is unreachable), and every part of the
    service from its heartbeat: projector (with its lag behind the log and parked events), dispatcher,
    and the workers of each queue. A missing part makes the status "degraded", not 503: the API itself
    still answers. Computed at most once a second; under steady polling in the background (an answer may be a
    second old, never more than 5): a load balancer polling hard costs no more, and its polls do not wait on the
    checks."""
    ext = current_app.extensions
    with _health_lock:
        cached = ext.get("tunelog.health")
        if cached is None or time.monotonic() - cached[0] > HEALTH_STALE_SECONDS:  # none recent: checked now
            cached = ext["tunelog.health"] = (time.monotonic(), *_check())
        elif time.monotonic() - cached[0] > HEALTH_CACHE_SECONDS and not ext.get("tunelog.health.refreshing"):
            # refreshed in the background: no request waits on the checks (replicas' /health is an HTTP call)
            ext["tunelog.health.refreshing"] = True
            threading.Thread(target=_refresh, args=(current_app._get_current_object(),), daemon=True,
                             name="health").start()
        _, body, ok = cached
    resp = jsonify(body)
    if not ok:
        resp.headers["Retry-After"] = "5"
    return resp, 200 if ok else 503


def _refresh(app: Flask) -> None:
    try:
        with app.app_context():
            fresh = (time.monotonic(), *_check())
        with _health_lock:
            app.extensions["tunelog.health"] = fresh
    finally:
        app.extensions["tunelog.health.refreshing"] = False


def _check() -> tuple[dict[str, Any], bool]:
    checks: dict[str, Any] = {}
    parts: dict[str, Any] = {}
    try:
        with svc().pool.connection(timeout=2) as c:
            row = c.execute(
                "SELECT (SELECT coalesce(max(global_position), 0) FROM events) AS head, "
                "(SELECT coalesce(min(position), 0) FROM projection_checkpoints) AS low, "
                "(SELECT count(*) FROM projection_failures WHERE parked) AS parked, "
                "(SELECT coalesce(jsonb_object_agg(kind, n), '{}'::jsonb) FROM ("
                "  SELECT kind, count(*) AS n FROM heartbeats "
                "  WHERE seen_at > now() - make_interval(secs => %s) GROUP BY kind) k) AS alive",
                (PART_STALE_SECONDS,)).fetchone()
        checks["postgres"] = "ok"
        alive = row["alive"] or {}
        parts["projector"] = {"status": "ok" if alive.get("projector") else "down",
                              "lag_events": int(row["head"] - row["low"]), "parked_events": int(row["parked"])}
        parts["dispatcher"] = {"status": "ok" if alive.get("dispatcher") else "down"}
        for kind in sorted(k for k in alive if k.startswith("worker-")):
            parts[kind] = {"status": "ok", "processes": alive[kind]}
        for queue in ("worker-cpu",):
            parts.setdefault(queue, {"status": "down", "processes": 0})
    except Exception as e:  # noqa: BLE001 - any failure means unhealthy
        checks["postgres"] = f"unreachable: {type(e).__name__}"
    parts["serving"] = _serving()
    try:
        svc().redis().ping()
        checks["redis"] = "ok"
    except Exception as e:  # noqa: BLE001
        checks["redis"] = f"unreachable: {type(e).__name__}"
    ok = all(v == "ok" for v in checks.values())
    status = "ok" if ok and all(p["status"] == "ok" for p in parts.values()) else ("degraded" if ok else "unavailable")
    return {"status": status, **checks, "parts": parts}, ok


def _serving() -> dict[str, Any]:
    """Each serving replica's /health (running and waiting requests): "ok" while at least one answers."""
    import httpx

    from eventlog.serving import replica_urls

    replicas = []  # by number, not URL: /healthz answers anyone, and replicas' addresses are the operator's business
    for number, url in enumerate(replica_urls(), 1):
        try:
            r = httpx.get(f"{url}/health", timeout=1.0)
            r.raise_for_status()
            try:  # tunelog's replicas tell their load; vLLM's /health answers 200 with no body
                body = r.json()
            except ValueError:
                body = {}
            replicas.append({"replica": number, "status": "ok", "running": body.get("running"),
                             "waiting": body.get("waiting")})
        except Exception as e:  # noqa: BLE001 - any failure: that replica is down
            replicas.append({"replica": number, "status": f"down: {type(e).__name__}"})
    return {"status": "ok" if any(r["status"] == "ok" for r in replicas) else "down", "replicas": replicas}


PARKED = Gauge("tunelog_projection_parked_events", "Events a projection could not apply and parked (dead letters)",
               ["projection"])
_children: dict[tuple[str, ...], Any] = {}  # metric children by label values (a closed set: bounded)
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


@bp.get("/metrics")
def metrics():
    try:
        with svc().pool.connection(timeout=2) as c:
            rows = c.execute("SELECT name, count(*) FILTER (WHERE parked) AS n FROM projection_failures "
                             "GROUP BY name").fetchall()
        for r in rows:
            PARKED.labels(r["name"]).set(r["n"])
    except Exception:  # noqa: BLE001 - the other metrics are still worth serving
        pass
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
        # label values from a closed set only: made-up methods or paths must not grow new series
        route = request.url_rule.rule if request.url_rule else "unmatched"
        method = request.method if request.method in KNOWN_METHODS else "other"
        status = str(resp.status_code) if 100 <= resp.status_code < 600 else "other"
        counter = _children.get((method, route, status))
        if counter is None:  # the label lookup takes a lock and builds a key: once per series, not per request
            counter = _children[(method, route, status)] = REQUESTS.labels(method, route, status)
        counter.inc()
        if hasattr(g, "_t0"):
            hist = _children.get((method, route))
            if hist is None:
                hist = _children[(method, route)] = LATENCY.labels(method, route)
            hist.observe(time.perf_counter() - g._t0)
        return resp
