"""POST /webhooks/aircall: authenticate, validate, commit to the inbox, then answer.

The only durable write on this path is the inbox insert; all CRM work happens later
in workers. Aircall gives up after 5 s, so nothing slow belongs here.

This route is answered by a plain WSGI handler that ``create_app`` puts in front of
Flask, in ``app.wsgi_app`` (where Flask takes middleware); every other route is Flask's.
Under a burst the web processes spend their CPU here, and Flask's per-request machinery
(request context, URL routing, request and response objects, hooks) cost more of it
than the webhook's own work: with it, a web process acknowledged about 0.4 as many
webhooks per second as a bare Flask "return 200" (bench/throughput.py); this handler
does what the Flask view did, answer for answer and metric for metric; a store failure
is a 500 that says the event was not stored, logged with its traceback.
"""
from __future__ import annotations

import json
import logging
import re

from ..providers import aircall
from .health import count_inbound

PATH = "/webhooks/aircall"
log = logging.getLogger("connector.webhooks")

# What werkzeug's 413 said, so the answer is the one Flask gave before this handler.
TOO_LARGE = "The data value transmitted exceeds the capacity limit."
NOT_STORED = "the event was not stored (see the connector's log); send it again"
_STATUS_LINES = {200: "200 OK", 400: "400 BAD REQUEST", 401: "401 UNAUTHORIZED",
                 405: "405 METHOD NOT ALLOWED", 413: "413 REQUEST ENTITY TOO LARGE",
                 500: "500 INTERNAL SERVER ERROR"}


class _Refused(Exception):
    def __init__(self, code: int, **body):
        self.status, self.body = code, body


class AircallWebhook:
    """The WSGI application for ``PATH``, any method (``create_app`` routes it here)."""

    def __init__(self, runtime, max_body_bytes: int):
        self.rt = runtime
        self.max_body = max_body_bytes

    @staticmethod
    def serves(path: str) -> bool:
        """Whether ``path`` (PATH_INFO) is this route, spelled as Flask's router takes it:
        repeated slashes are one (a webhook URL typed as ``https://host//webhooks/aircall``)."""
        return path == PATH or ("//" in path and re.sub("/{2,}", "/", path) == PATH)

    def __call__(self, environ, start_response):
        method = environ.get("REQUEST_METHOD")
        if method == "OPTIONS":  # as Flask answers it for a route, counted as accepted
            count_inbound(self.rt.metrics, PATH, 200, environ)
            start_response("200 OK", [("Allow", "OPTIONS, POST"), ("Content-Length", "0")])
            return []
        if method != "POST":
            # Not counted as inbound traffic, as Flask's 405 for a route was not.
            return self._send(start_response, 405, {"error": "The method is not allowed for the requested URL.",
                                                    "status": 405}, [("Allow", "OPTIONS, POST")],
                              head=method == "HEAD")
        result = None
        try:
            status, body, result = self.handle(environ)
        except _Refused as exc:
            status, body = exc.status, exc.body
        except Exception:
            log.exception("aircall webhook not stored")
            status, body = 500, {"error": NOT_STORED, "status": 500}
        count_inbound(self.rt.metrics, PATH, status, environ, result)
        return self._send(start_response, status, body)

    @staticmethod
    def _send(start_response, status: int, body: dict, headers=(), head: bool = False):
        data = json.dumps(body).encode()
        start_response(_STATUS_LINES[status], [("Content-Type", "application/json"),
                                               ("Content-Length", str(len(data))), *headers])
        return [] if head else [data]  # HEAD: the headers a GET would get, no body

    def handle(self, environ) -> tuple[int, dict, str]:
        """(status, JSON body, metrics result) for a POST; raises _Refused for a refusal."""
        text = self._read_text(environ)
        try:
            body = json.loads(text)
        except (ValueError, RecursionError) as exc:
            raise _Refused(400, error=f"body is not valid JSON: {exc}"[:300]) from None
        if not aircall.token_matches(body, self.rt.config.aircall.webhook_tokens):
            log.warning("aircall webhook rejected: missing or wrong token")
            raise _Refused(401, error="missing or invalid webhook token")
        try:
            event = aircall.parse(body)
        except aircall.Ignored as exc:
            log.info("aircall webhook ignored: %s", exc)
            return 200, {"status": "ignored", "reason": str(exc)}, "ignored"
        except aircall.PayloadError as exc:
            log.info("aircall webhook rejected: %s", exc)
            raise _Refused(400, error=str(exc), field=exc.field) from None
        rt = self.rt
        inbox_id = rt.store.ingest(
            dedup_key=event.dedup_key, provider=event.provider, message_id=event.message_id,
            event_name=event.event, status=event.status, direction=event.direction,
            external=event.external, occurred_at=event.occurred_at.timestamp(),
            payload=text, targets=rt.config.targets())
        if inbox_id is None:
            log.info("aircall %s message %s: duplicate delivery, already stored", event.event, event.message_id)
            return 200, {"status": "duplicate", "message_id": event.message_id}, "duplicate"
        rt.wake()  # (the store logs what it stored: one line per transaction)
        return 200, {"status": "stored", "message_id": event.message_id, "event_id": inbox_id}, "stored"

    def _read_text(self, environ) -> str:
        """The body as text, refusing one over ``server.max_body_bytes`` before reading it
        (werkzeug's rules: a chunked body has no length, and is read only from a server
        that ends the stream itself, as gunicorn does)."""
        stream = environ["wsgi.input"]
        chunked = environ.get("HTTP_TRANSFER_ENCODING", "").lower() == "chunked"
        length = None if chunked else environ.get("CONTENT_LENGTH")
        if length:
            try:
                size = int(length)
            except ValueError:
                raise _Refused(400, error="Content-Length is not a number") from None
            if size > self.max_body:
                raise _Refused(413, error=TOO_LARGE, status=413)
            raw = stream.read(size) if size > 0 else b""
        elif "wsgi.input_terminated" in environ:
            raw = stream.read(self.max_body + 1)  # one byte past the limit tells it is over
            if len(raw) > self.max_body:
                raise _Refused(413, error=TOO_LARGE, status=413)
        else:
            raw = b""  # no length and no end the server vouches for: nothing to read safely
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise _Refused(400, error="body is not UTF-8 text") from None
