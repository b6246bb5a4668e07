"""POST /webhooks/aircall: authenticate, validate, commit to the inbox, then answer.

The only durable write on this path is the inbox insert; all CRM work happens later
in workers. Aircall gives up after 5 s, so nothing slow belongs here.
"""
from __future__ import annotations

import json
import logging

from flask import Blueprint, Response, current_app, g, jsonify, request

from ..providers import aircall

bp = Blueprint("webhooks", __name__)
log = logging.getLogger("connector.webhooks")


def _error(status: int, message: str, **extra):
    return jsonify(error=message, **extra), status


def _ok(**fields) -> Response:
    # Plain json.dumps: half the cost of jsonify on the hottest path.
    return Response(json.dumps(fields), 200, mimetype="application/json")


def read_json_body():
    """(body, text, None) or (None, None, error response) for the request's JSON body."""
    raw = request.get_data(cache=True)  # MAX_CONTENT_LENGTH turns oversize bodies into 413
    try:
        text = raw.decode("utf-8")
        return json.loads(text), text, None
    except UnicodeDecodeError:
        return None, None, _error(400, "body is not UTF-8 text")
    except (ValueError, RecursionError) as exc:
        return None, None, _error(400, f"body is not valid JSON: {exc}"[:300])


@bp.post("/webhooks/aircall")
def aircall_webhook():
    rt = current_app.extensions["connector"]
    body, text, err = read_json_body()
    if err:
        return err
    if not aircall.token_matches(body, rt.config.aircall.webhook_tokens):
        log.warning("aircall webhook rejected: missing or wrong token")
        return _error(401, "missing or invalid webhook token")
    try:
        event = aircall.parse(body)
    except aircall.Ignored as exc:
        log.info("aircall webhook ignored: %s", exc)
        g.result = "ignored"
        return _ok(status="ignored", reason=str(exc))
    except aircall.PayloadError as exc:
        log.info("aircall webhook rejected: %s", exc)
        return _error(400, str(exc), field=exc.field)
    inbox_id = rt.store.ingest(
        dedup_key=event.dedup_key, provider=event.provider, message_id=event.message_id,
        event_name=event.event, status=event.status, direction=event.direction,
        external=event.external, occurred_at=event.occurred_at.timestamp(),
        payload=text, targets=rt.config.targets())
    if inbox_id is None:
        log.info("aircall %s message %s: duplicate delivery, already stored", event.event, event.message_id)
        g.result = "duplicate"
        return _ok(status="duplicate", message_id=event.message_id)
    rt.wake()
    log.info("aircall %s message %s: stored as event %s", event.event, event.message_id, inbox_id)
    g.result = "stored"
    return _ok(status="stored", message_id=event.message_id, event_id=inbox_id)
