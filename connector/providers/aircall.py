"""Aircall: authenticate and parse message webhooks into MessageEvents.

Envelope: ``{resource, event, timestamp, token, data}``; proxy-mode callbacks say
``event_name`` instead of ``event``. Aircall signs nothing: the shared ``token`` in the
body is the only credential, compared in constant time against every configured token
so a token can be rotated.
"""
from __future__ import annotations

from typing import Any

from ..events import (
    DELIVERED, FAILED, INBOUND, OUTBOUND, PENDING, RECEIVED, SENT, UNKNOWN,
    Media, MessageEvent, parse_timestamp,
)
from ..phones import to_e164
from ..ratelimit import retry_after_seconds
from ..secrets import any_secret_matches
from ..text import has_control, writable

NAME = "aircall"
MAX_EXTERNAL = 40  # store.inbox.external
# Control characters (NUL above all: PostgreSQL text cannot hold it) and unpaired
# surrogates (no UTF-8 for them) have no place in an id or a number (text.has_control):
# refused with a 400 rather than failing the insert with a 500. Free text is made
# writable instead (text.writable).

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
    return any_secret_matches(supplied, tokens)


def _field(obj: dict, key: str, path: str, types: tuple, required: bool = True) -> Any:
    value = obj.get(key)
    if type(value) in types:  # what JSON gives, the usual case: no further checks
        return value
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
            try:
                if not isinstance(item, dict):
                    raise PayloadError("", "must be object")
                url = _field(item, "presigned_url", ".presigned_url", (str,))
                name = _field(item, "file_name", ".file_name", (str,), False)
                ctype = _field(item, "file_type", ".file_type", (str,), False)
            except PayloadError as exc:  # the item's path is only spelled out for an error
                raise PayloadError(f"data.media_details[{i}]{exc.field}", exc.reason) from None
            out.append(Media(url=url, file_name=writable(name or ""), content_type=writable(ctype or "").lower()))
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
    if has_control(msg_id):
        raise PayloadError("data.id", "must not contain control characters or unpaired surrogates")
    name = HANDLED_EVENTS[event]

    direction = _field(data, "direction", "data.direction", (str,), False)
    if direction is None:
        direction = INBOUND if name == "message.received" else OUTBOUND
    if direction not in (INBOUND, OUTBOUND):
        raise PayloadError("data.direction", "must be 'inbound' or 'outbound'")

    provider_status = writable(_field(data, "status", "data.status", (str,), False) or "")
    status = _STATUS.get(provider_status.lower(), UNKNOWN)
    if not provider_status:
        status = {"message.received": RECEIVED, "message.sent": SENT}.get(name, UNKNOWN)

    text = writable(_field(data, "body", "data.body", (str,), False) or "")
    number = _field(data, "number", "data.number", (dict,), False) or {}
    line_digits = writable(_field(number, "digits", "data.number.digits", (str,), False) or "")
    line_country = writable(_field(number, "country", "data.number.country", (str,), False) or "")
    line_name = writable(_field(number, "name", "data.number.name", (str,), False) or "")
    region = line_country.upper() if len(line_country) == 2 else "US"
    ext_key = "external_number"
    ext_raw = _field(data, ext_key, "data.external_number", (str,), False)
    if not ext_raw:
        ext_key = "raw_digits"
        ext_raw = _field(data, ext_key, "data.raw_digits", (str,), False) or ""
    external = to_e164(ext_raw, region) or ext_raw.strip()
    if not external:
        raise PayloadError("data.raw_digits", "is required (the external party's number)")
    if len(external) > MAX_EXTERNAL:  # kept as sent when unparseable: it must fit the inbox column
        raise PayloadError(f"data.{ext_key}", f"must be a phone number of at most {MAX_EXTERNAL} characters")
    if has_control(external):
        raise PayloadError(f"data.{ext_key}",
                           "must be a phone number, without control characters or unpaired surrogates")
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


# -- sending -----------------------------------------------------------------------------
# Whether Aircall took the message decides everything: a send is retried only when it
# surely did not (no connection made, 429, 503); anything ambiguous (read timeout,
# connection dropped after the request went out, other 5xx) is ``unknown`` and is
# reconciled, never sent again blindly.

SEND_PATHS = {"native": "/numbers/{id}/messages/native/send", "proxy": "/numbers/{id}/messages/send"}
RETRY, REJECTED, AMBIGUOUS = "retry", "rejected", "unknown"


class SendError(Exception):
    """``kind``: retry (not accepted; ``retry_after`` seconds if known), rejected
    (4xx: retrying cannot help), unknown (may have been accepted)."""

    def __init__(self, kind: str, message: str, *, status: int | None = None,
                 retry_after: float | None = None, body: str = ""):
        self.kind = kind
        self.status = status
        self.retry_after = retry_after
        self.body = body
        super().__init__(message)


class SendClient:
    def __init__(self, cfg, session=None, clock=None):
        import requests
        import time as _time

        self.cfg = cfg
        self.session = session or requests.Session()
        self.clock = clock or _time.time
        self.blocked_until = 0.0  # from X-AircallApi-Remaining: 0 / 429, shared by senders

    def _auth(self) -> dict:
        import base64
        if self.cfg.oauth_token:
            return {"Authorization": f"Bearer {self.cfg.oauth_token}"}
        if self.cfg.api_id and self.cfg.api_token:
            basic = base64.b64encode(f"{self.cfg.api_id}:{self.cfg.api_token}".encode()).decode()
            return {"Authorization": f"Basic {basic}"}
        raise SendError(REJECTED, "no Aircall credentials: set aircall.api_id and aircall.api_token, "
                                  "or aircall.oauth_token")

    def url(self, number_id: str) -> str:
        from urllib.parse import quote
        return self.cfg.api_base_url.rstrip("/") + SEND_PATHS[self.cfg.send_mode].format(id=quote(str(number_id), safe=""))

    @staticmethod
    def body(to: str, text: str, media: list[str]) -> dict:
        out: dict[str, Any] = {"to": to}
        if text:
            out["body"] = text
        if media:
            out["mediaUrl"] = list(media)  # the SDK's field name (see docs/aircall.md §10.3)
        return out

    def send(self, number_id: str, to: str, text: str, media: list[str]) -> dict:
        """POST one message; returns Aircall's Message object. Retries in-process while the
        wait is at most ``send_max_wait``; otherwise raises SendError for the caller."""
        from tenacity import Retrying, retry_if_exception, stop_after_attempt

        max_wait = self.cfg.send_max_wait

        def retryable(exc: BaseException) -> bool:
            return (isinstance(exc, SendError) and exc.kind == RETRY
                    and (exc.retry_after or 0) <= max_wait)

        def wait(state) -> float:
            exc = state.outcome.exception()
            return min(max_wait, exc.retry_after if exc.retry_after is not None else 1.0)

        for attempt in Retrying(retry=retry_if_exception(retryable), wait=wait, reraise=True,
                                stop=stop_after_attempt(self.cfg.send_max_attempts)):
            with attempt:
                return self._send_once(number_id, to, text, media)
        raise AssertionError("unreachable")

    def _send_once(self, number_id: str, to: str, text: str, media: list[str]) -> dict:
        import requests
        from urllib3.exceptions import NewConnectionError

        now = self.clock()
        if self.blocked_until > now:
            raise SendError(RETRY, "Aircall rate limit: waiting for the window to reset",
                            retry_after=self.blocked_until - now)
        headers = self._auth()
        try:
            resp = self.session.post(self.url(number_id), json=self.body(to, text, media), headers=headers,
                                     timeout=(self.cfg.send_connect_timeout, self.cfg.send_read_timeout))
        except requests.ConnectTimeout as exc:
            raise SendError(RETRY, "could not connect to Aircall (timeout)") from exc
        except requests.ConnectionError as exc:
            reason = getattr(exc.args[0] if exc.args else None, "reason", None)
            if isinstance(reason, NewConnectionError):
                raise SendError(RETRY, "could not connect to Aircall") from exc
            raise SendError(AMBIGUOUS, f"connection to Aircall broke during the send: {type(exc).__name__}") from exc
        except requests.Timeout as exc:
            raise SendError(AMBIGUOUS, "Aircall did not answer in time; the message may have been sent") from exc
        self._note_rate_limit(resp)
        status = resp.status_code
        text_body = resp.text[:500]
        if status in (429, 503):
            retry_after = _retry_after(resp, self.clock())
            if status == 429:
                self.blocked_until = max(self.blocked_until, self.clock() + (1.0 if retry_after is None else retry_after))
            raise SendError(RETRY, f"Aircall answered {status}", status=status,
                            retry_after=retry_after, body=text_body)
        if status >= 500:
            raise SendError(AMBIGUOUS, f"Aircall answered {status}; the message may have been sent",
                            status=status, body=text_body)
        if status >= 400 or status < 200:
            raise SendError(REJECTED, f"Aircall refused the message: {status} {text_body}".strip(),
                            status=status, body=text_body)
        try:
            data = resp.json()
        except ValueError:
            data = None
        if not isinstance(data, dict) or not data.get("id"):
            raise SendError(AMBIGUOUS, f"Aircall answered {status} without a message id", status=status,
                            body=text_body)
        return data

    def _note_rate_limit(self, resp) -> None:
        remaining = resp.headers.get("X-AircallApi-Remaining")
        if remaining is not None and remaining.strip() == "0":
            reset = _reset_at(resp.headers.get("X-AircallApi-Reset"), self.clock())
            if reset:
                self.blocked_until = max(self.blocked_until, reset)


def _reset_at(value: str | None, now: float) -> float | None:
    """X-AircallApi-Reset: a UNIX time (seconds or ms); small values taken as seconds from now."""
    try:
        v = float(value) if value is not None else None
    except ValueError:
        return None
    if v is None:
        return None
    if v > 1e11:
        v /= 1000
    return v if v > 1e9 else now + v


def _retry_after(resp, now: float) -> float | None:
    ra = retry_after_seconds(resp.headers.get("Retry-After"), now)
    if ra is not None:
        return ra
    reset = _reset_at(resp.headers.get("X-AircallApi-Reset"), now)
    return max(0.0, reset - now) if reset else None
