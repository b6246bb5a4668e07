"""Flask app factory: one blueprint per inbound surface."""
from __future__ import annotations

import logging
import time

from flask import Flask, jsonify
from werkzeug.exceptions import HTTPException

from ..config import Config
from ..runtime import Runtime

log = logging.getLogger("connector.web")
RECEIVED_AT = "connector.received_at"  # WSGI environ key: when the request arrived


def create_app(config: Config, runtime: Runtime | None = None) -> Flask:
    for warning in config.warnings():
        log.warning("config: %s", warning)
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = config.server.max_body_bytes
    rt = app.extensions["connector"] = runtime or Runtime(config)

    from . import health, media, outbound, webhooks

    # Around Flask rather than in its before/teardown hooks: the same effect for a
    # fraction of the per-request cost. The Aircall webhook, the route a burst hits, is
    # answered here without Flask (webhooks.py says why).
    flask_app = app.wsgi_app
    aircall_hook = webhooks.AircallWebhook(rt, config.server.max_body_bytes)

    def counted(environ, start_response):
        environ[RECEIVED_AT] = time.perf_counter()  # for the acknowledgement latency histogram
        rt.request_started()  # workers running in this process give way meanwhile
        try:
            if aircall_hook.serves(environ.get("PATH_INFO", "")):
                return aircall_hook(environ, start_response)
            return flask_app(environ, start_response)
        finally:
            rt.request_finished()

    app.wsgi_app = counted

    app.register_blueprint(health.bp)
    app.register_blueprint(outbound.bp)
    app.register_blueprint(media.bp)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException):
        # JSON for every client error, never an HTML page or a 500 for bad input; with the
        # error's own headers (a 405's Allow, which HTTP requires).
        headers = [(k, v) for k, v in exc.get_headers() if k.lower() != "content-type"]
        return jsonify(error=exc.description, status=exc.code), exc.code, headers

    return app
