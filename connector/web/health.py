"""Liveness, readiness and Prometheus metrics; counts every inbound request's result."""
from __future__ import annotations

import time

from flask import Blueprint, Response, current_app, g, jsonify, request

from . import RECEIVED_AT

bp = Blueprint("health", __name__)

# Paths whose requests are counted as inbound traffic (webhooks, outbound triggers, API).
INBOUND_PREFIXES = ("/webhooks/", "/outbound/", "/api/")
_RESULT_BY_CODE = {401: "rejected_auth", 403: "rejected_auth", 413: "too_large", 429: "throttled"}


@bp.get("/healthz")
def healthz():
    return jsonify(status="ok")


def _queue_check(rt) -> str | None:
    url = rt.config.queue.url
    if not url:
        return None
    queue = getattr(rt, "queue", None)
    try:
        if queue is not None and hasattr(queue, "ping"):
            queue.ping()
        else:
            import redis
            redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1).ping()
        return "ok"
    except Exception as exc:
        return f"unreachable: {type(exc).__name__}"


def _crm_checks(rt) -> dict:
    """Writers may expose ``credential_status() -> None | (ok, detail)``: the last check."""
    out = {}
    try:
        writers = rt.pipeline.writers
    except Exception as exc:
        return {"writers": f"cannot be built: {type(exc).__name__}"}
    for name, writer in sorted(writers.items()):
        status = getattr(writer, "credential_status", None)
        if not callable(status):
            out[name] = "no check (dry-run)" if "DryRun" in type(writer).__name__ else "no check"
            continue
        result = status()
        if result is None:
            out[name] = "not checked yet"
        else:
            ok, detail = result
            out[name] = "ok" if ok else f"failing: {detail}"
    return out


@bp.get("/readyz")
def readyz():
    rt = current_app.extensions["connector"]
    checks = {}
    try:
        rt.store.ping()
        checks["store"] = "ok"
    except Exception as exc:  # report, don't crash: this endpoint exists to say what is wrong
        checks["store"] = f"unreachable: {type(exc).__name__}"
    queue = _queue_check(rt)
    if queue is not None:
        checks["queue"] = queue
    # Only the store gates: without Redis, webhooks are still stored (workers poll the store
    # and pace themselves locally), so taking the web processes out of a load balancer
    # would turn a Redis outage into refused webhooks.
    ready = checks["store"] == "ok"
    # CRM credentials are reported, not gating: webhooks must still be accepted (and
    # kept for later) while a CRM token is being fixed, or Aircall disables the endpoint.
    return jsonify(status="ready" if ready else "not ready", checks=checks,
                   crm=_crm_checks(rt)), 200 if ready else 503


@bp.get("/metrics")
def metrics():
    rt = current_app.extensions["connector"]
    from prometheus_client import CONTENT_TYPE_LATEST
    return Response(rt.metrics.exposition(), mimetype=None, content_type=CONTENT_TYPE_LATEST)


@bp.after_app_request
def _count_inbound(response):
    rule = request.url_rule
    if rule is not None and rule.rule.startswith(INBOUND_PREFIXES):
        count_inbound(current_app.extensions["connector"].metrics, rule.rule, response.status_code,
                      request.environ, g.get("result"))
    return response


def count_inbound(metrics, endpoint: str, code: int, environ, result: str | None = None) -> None:
    """Count one answered inbound request and its latency: a 2xx as the handler named its
    result (stored, duplicate, ...; else accepted), anything else by its status code."""
    if 200 <= code < 300:
        result = result or "accepted"
    elif code >= 500:
        result = "error"
    else:
        result = _RESULT_BY_CODE.get(code, "rejected_payload")
    started = environ.get(RECEIVED_AT)
    metrics.inbound(endpoint, result[:40], None if started is None else time.perf_counter() - started)
