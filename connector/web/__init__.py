"""Flask app factory: one blueprint per inbound surface."""
from __future__ import annotations

import time

from flask import Flask, g, jsonify
from werkzeug.exceptions import HTTPException

from ..config import Config
from ..runtime import Runtime


def create_app(config: Config, runtime: Runtime | None = None) -> Flask:
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = config.server.max_body_bytes
    rt = app.extensions["connector"] = runtime or Runtime(config)

    @app.before_request
    def _started():
        g.received_at = time.perf_counter()  # for the acknowledgement latency histogram
        rt.request_started()  # workers running in this process give way meanwhile

    app.teardown_request(lambda _exc: rt.request_finished())

    from . import health, media, outbound, webhooks
    app.register_blueprint(webhooks.bp)
    app.register_blueprint(health.bp)
    app.register_blueprint(outbound.bp)
    app.register_blueprint(media.bp)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException):
        # JSON for every client error, never an HTML page or a 500 for bad input.
        return jsonify(error=exc.description, status=exc.code), exc.code

    return app
