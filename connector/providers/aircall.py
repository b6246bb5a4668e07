"""Aircall: authenticate and parse message webhooks into MessageEvents.

Envelope: ``{resource, event, timestamp, token, data}``; proxy-mode callbacks say
``event_name`` instead of ``event``. Aircall signs nothing: the shared ``token`` in the
body is the only credential, compared in constant time against every configured token
so a token can be rotated.
"""
from __future__ import annotations

import hmac
from typing import Any

from ..events import (
    DELIVERED, FAILED, INBOUND, OUTBOUND, PENDING, RECEIVED, SENT, UNKNOWN,
    Media, MessageEvent, parse_timestamp,
)
from ..phones import to_e164

NAME = "aircall"

HANDLED_EVENTS = {
    "message.received": "message.received",
    "message.sent": "message.sent",
    "message.status_updated": "message.status_updated",
    "message.updated": "message.status_updated",  # proxy-mode callback name
}

_STATUS = {
    "received": RECEIVED,
    "pending": PENDING, "queued": PENDING, "sending": PENDING, "accepted": PENDING,
    "sent": SENT,
    "delivered": DELIVERED,
    "failed": FAILED, "undelivered": FAILED, "not_sent": FAILED, "error": FAILED,
    "rejected": FAILED, "canceled": FAILED, "cancelled": FAILED,
}


class PayloadError(ValueError):
    """The body is not a usable Aircall webhook; ``field`` names what is wrong."""

    def __init__(self, field: str, reason: str):
        self.field = field
        self.reason = reason
        super().__init__(f"{field}: {reason}")


class Ignored(Exception):
    """A well-formed event this connector does not log (call.*, WhatsApp, ...)."""

    def __init__(self, event: str, reason: str):
        self.event = event
        self.reason = reason
        super().__init__(f"{event}: {reason}")


def token_matches(body: Any, tokens: list[str]) -> bool:
    supplied = body.get("token") if isinstance(body, dict) else None
    if not isinstance(supplied, str) or not supplied:
        return False
    given = supplied.encode()
    ok = False
    for t in tokens:  # check every token: timing does not reveal which one matched
        ok |= hmac.compare_digest(given, t.encode())
    return ok


def _field(obj: dict, key: str, path: str, types: tuple, required: bool = True) -> Any:
    value = obj.get(key)
    if value is None:
        if required:
            raise PayloadError(path, "is required")
        return None
    if isinstance(value, bool) or not isinstance(value, types):
        want = " or ".join(t.__name__.replace("str", "string").replace("dict", "object")
                           .replace("list", "array").replace("int", "integer") for t in types)
        raise PayloadError(path, f"must be {want}")
    return value


def _media(data: dict) -> list[Media]:
    details = data.get("media_details")
    if details is not None:
        if not isinstance(details, list):
            raise PayloadError("data.media_details", "must be array")
        out = []
        for i, item in enumerate(details):
            if not isinstance(item, dict):
                raise PayloadError(f"data.media_details[{i}]", "must be object")
            url = _field(item, "presigned_url", f"data.media_details[{i}].presigned_url", (str,))
            name = _field(item, "file_name", f"data.media_details[{i}].file_name", (str,), False)
            ctype = _field(item, "file_type", f"data.media_details[{i}].file_type", (str,), False)
            out.append(Media(url=url, file_name=name or "", content_type=(ctype or "").lower()))
        return out
    urls = data.get("media_url")
    if urls is None:
        return []
    if not isinstance(urls, list) or not all(isinstance(u, str) for u in urls):
        raise PayloadError("data.media_url", "must be array of strings")
    return [Media(url=u, file_name=u.rsplit("/", 1)[-1].split("?", 1)[0]) for u in urls]


def parse(body: Any) -> MessageEvent:
    """Turn an authenticated webhook body into a MessageEvent.

    Raises PayloadError for anything malformed and Ignored for events we do not log.
    """
    if not isinstance(body, dict):
        raise PayloadError("(body)", "must be a JSON object")
    event = body.get("event", body.get("event_name"))
    if not isinstance(event, str) or not event:
        raise PayloadError("event", "is required" if event is None else "must be string")
    resource = body.get("resource")
    if resource is not None and not isinstance(resource, str):
        raise PayloadError("resource", "must be string")
    if event not in HANDLED_EVENTS:
        raise Ignored(event, "event not logged by this connector")
    data = _field(body, "data", "data", (dict,))
    channel = data.get("channel")
    if channel not in (None, "", "sms", "mms"):
        raise Ignored(event, f"channel {channel!r} not logged by this connector")
    ts = body.get("timestamp")
    if ts is None:
        raise PayloadError("timestamp", "is required")
    envelope_time = parse_timestamp(ts)
    if envelope_time is None:
        raise PayloadError("timestamp", "must be epoch seconds, epoch milliseconds or ISO 8601")

    msg_id = _field(data, "id", "data.id", (str, int))
    msg_id = str(msg_id).strip()
    if not msg_id or len(msg_id) > 200:
        raise PayloadError("data.id", "must be a non-empty id of at most 200 characters")
    name = HANDLED_EVENTS[event]

    direction = _field(data, "direction", "data.direction", (str,), False)
    if direction is None:
        direction = INBOUND if name == "message.received" else OUTBOUND
    if direction not in (INBOUND, OUTBOUND):
        raise PayloadError("data.direction", "must be 'inbound' or 'outbound'")

    provider_status = _field(data, "status", "data.status", (str,), False) or ""
    status = _STATUS.get(provider_status.lower(), UNKNOWN)
    if not provider_status:
        status = {"message.received": RECEIVED, "message.sent": SENT}.get(name, UNKNOWN)

    text = _field(data, "body", "data.body", (str,), False) or ""
    number = _field(data, "number", "data.number", (dict,), False) or {}
    line_digits = _field(number, "digits", "data.number.digits", (str,), False) or ""
    line_country = _field(number, "country", "data.number.country", (str,), False) or ""
    line_name = _field(number, "name", "data.number.name", (str,), False) or ""
    region = line_country.upper() if len(line_country) == 2 else "US"
    ext_raw = _field(data, "external_number", "data.external_number", (str,), False)
    if not ext_raw:
        ext_raw = _field(data, "raw_digits", "data.raw_digits", (str,), False) or ""
    external = to_e164(ext_raw, region) or ext_raw.strip()
    if not external:
        raise PayloadError("data.raw_digits", "is required (the external party's number)")
    line = to_e164(line_digits, region) or line_digits.strip()

    media = _media(data)
    occurred = None
    for key in ("created_at", "sent_at"):
        if data.get(key) is not None:
            occurred = parse_timestamp(data.get(key))
            if occurred is None:
                raise PayloadError(f"data.{key}", "must be epoch seconds, epoch milliseconds or ISO 8601")
            break
    return MessageEvent(
        provider=NAME,
        event=name,
        message_id=msg_id,
        direction=direction,
        status=status,
        channel="mms" if media else "sms",
        line=line,
        external=external,
        text=text,
        media=media,
        occurred_at=occurred or envelope_time,
        line_name=line_name,
        line_country=line_country.upper(),
        provider_status=provider_status,
        raw=body,
    )
