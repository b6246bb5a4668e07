"""Outbound entry points: HubSpot workflow actions, Salesforce Outbound Messages, REST.

Each one authenticates, validates, commits outbox rows (idempotent by the caller's own
id) and answers; the worker sends. HubSpot and the REST API validate the attachment
bytes synchronously (fetched under ``fetch.*`` timeouts), so the caller sees the exact
error text in the answer. Salesforce Outbound Messages carry up to 100 sends and must be
acknowledged fast, so only the rules that need no bytes are checked here; the sender
checks the bytes before sending and records a rejection on the row.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
import uuid
from xml.sax.saxutils import escape

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import ParseError, fromstring
from flask import Blueprint, Response, current_app, jsonify, request

from ..fetch import FetchPolicy
from ..outbox import CALLBACK_DUE, OUT_REJECTED, Outbox, OutboundMessage, request_hash
from ..pipeline.outbound import hubspot_outputs, prepare, split_media
from ..secrets import any_secret_matches, same_secret
from ..text import has_control

bp = Blueprint("outbound", __name__)
log = logging.getLogger("connector.outbound")

OM_NS = "{http://soap.sforce.com/2005/09/outbound}"
SOBJECT_NS = "{urn:sobject.enterprise.soap.sforce.com}"
MAX_NOTIFICATIONS = 100
ACK = ('<?xml version="1.0" encoding="UTF-8"?>\n'
       '<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/">'
       '<soapenv:Body><notificationsResponse xmlns="http://soap.sforce.com/2005/09/outbound">'
       '<Ack>true</Ack></notificationsResponse></soapenv:Body></soapenv:Envelope>')


def _rt():
    return current_app.extensions["connector"]


def _error(status: int, message: str, **extra):
    return jsonify(error=message, **extra), status


def _submit(source: str, idem_key: str, fields: dict, check_bytes: bool, body_hash: str,
            callback: bool = False):
    """(row, created) for one send request; validates only when the key is new.
    ``callback``: a completion is owed once the send has an outcome (HubSpot BLOCK)."""
    rt = _rt()
    box = Outbox(rt.store)
    existing = box.get_by_key(idem_key)
    if existing is not None:
        return existing, False
    item, _ = prepare(rt.config, source=source, idem_key=idem_key, check_bytes=check_bytes,
                      fetch_policy=FetchPolicy.from_config(rt.config.fetch), request_hash=body_hash,
                      **fields)
    if callback and item["state"] != OUT_REJECTED:
        item["callback"] = CALLBACK_DUE
    row, created = box.enqueue([item])[0]
    if created and row.state != OUT_REJECTED:
        rt.wake()
    return row, created


# -- REST ---------------------------------------------------------------------------------

def _api_answer(row: OutboundMessage, replayed: bool):
    body = row.to_dict()
    if row.state == OUT_REJECTED:
        errors = (row.validation or {}).get("errors") or [row.error or ""]
        resp = jsonify({**body, "error": errors[0], "errors": errors})
        resp.status_code = 422
    else:
        resp = jsonify(**body)
        resp.status_code = 202
    if replayed:
        resp.headers["Idempotent-Replayed"] = "true"
    return resp


def _api_auth():
    tokens = _rt().config.outbound.api_tokens
    if not tokens:
        return _error(503, "the messages API is not enabled (set outbound.api_tokens)")
    auth = request.headers.get("Authorization", "")
    scheme, _, token = auth.partition(" ")
    if scheme.lower() != "bearer" or not any_secret_matches(token.strip(), tokens):
        return _error(401, "missing or invalid bearer token")
    return None


@bp.post("/api/v1/messages")
def api_send():
    denied = _api_auth()
    if denied:
        return denied
    raw = request.get_data(cache=True)
    try:
        body = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return _error(400, "body is not valid JSON")
    if not isinstance(body, dict):
        return _error(400, "body must be a JSON object")
    unknown = sorted(set(body) - {"from", "to", "text", "media", "policy"})
    if unknown:
        return _error(400, f"unknown field(s): {', '.join(unknown)}", field=unknown[0])
    for name in ("from", "to", "text"):
        if body.get(name) is not None and not isinstance(body[name], str):
            return _error(400, f"{name} must be a string", field=name)
    if not body.get("to"):
        return _error(400, "to is required", field="to")
    if body.get("policy") not in (None, "partial", "strict"):
        return _error(400, "policy must be 'partial' or 'strict'", field="policy")
    media = body.get("media")
    if media is not None and not (isinstance(media, list) and all(isinstance(u, str) for u in media)):
        return _error(400, "media must be an array of URL strings", field="media")
    key = request.headers.get("Idempotency-Key", "").strip()
    if len(key) > 200:
        return _error(400, "Idempotency-Key is longer than 200 characters")
    if has_control(key):
        return _error(400, "Idempotency-Key must not contain control characters")
    digest = request_hash(body)
    fields = dict(line=body.get("from") or "", to=body["to"], text=body.get("text") or "",
                  media=[u.strip() for u in media or [] if u.strip()], policy=body.get("policy"))
    row, created = _submit("api", f"api:{key or uuid.uuid4().hex}", fields, True, digest)
    if not created and row.request_hash != digest:
        return _error(409, "this Idempotency-Key was already used with a different request",
                      id=row.public_id)
    return _api_answer(row, replayed=not created)


@bp.get("/api/v1/messages/<msg_id>")
def api_get(msg_id: str):
    denied = _api_auth()
    if denied:
        return denied
    row_id = OutboundMessage.row_id(msg_id)
    row = Outbox(_rt().store).get(row_id) if row_id is not None else None
    if row is None or row.source != "api":
        return _error(404, "no such message")
    return jsonify(**row.to_dict())


# -- HubSpot ------------------------------------------------------------------------------

# HubSpot decodes these (and only these) in the URI before signing v3.
_V3_DECODE = {"%3A": ":", "%2F": "/", "%3F": "?", "%40": "@", "%21": "!", "%24": "$", "%27": "'",
              "%28": "(", "%29": ")", "%2A": "*", "%2C": ",", "%3B": ";"}


def _signed_uri() -> str:
    """The URL HubSpot called: public_base_url + path + query (proxies change the host)."""
    base = _rt().config.server.public_base_url.rstrip("/")
    qs = request.query_string.decode("latin-1")
    return f"{base}{request.path}" + (f"?{qs}" if qs else "")


def _v3_uri(uri: str) -> str:
    out, i = [], 0
    while i < len(uri):
        chunk = uri[i:i + 3].upper()
        if uri[i] == "%" and chunk in _V3_DECODE:
            out.append(_V3_DECODE[chunk])
            i += 3
        else:
            out.append(uri[i])
            i += 1
    return "".join(out)


def verify_hubspot(secret: str, max_age: int, body: str) -> str | None:
    """None when the request is signed by HubSpot with ``secret``; else the reason."""
    from hubspot.utils.signature import Signature

    uri = _signed_uri()
    v3 = request.headers.get("X-HubSpot-Signature-v3")
    if v3:
        ts = request.headers.get("X-HubSpot-Request-Timestamp", "")
        if not (ts.isascii() and ts.isdigit() and len(ts) <= 16):  # int() would take "²", overflow on 400 digits
            return "X-HubSpot-Request-Timestamp is missing or not epoch milliseconds"
        age = time.time() - int(ts) / 1000
        if abs(age) > max_age:
            return f"request timestamp is more than {max_age} seconds old"
        expected = Signature.get_signature(secret, body, "v3", _v3_uri(uri), request.method, ts)
        return None if same_secret(v3, expected) else "X-HubSpot-Signature-v3 does not match"
    v2 = request.headers.get("X-HubSpot-Signature")
    version = request.headers.get("X-HubSpot-Signature-Version", "v2").lower()
    if v2:
        if version != "v2":
            return f"signature version {version} is not accepted (v2 or v3)"
        expected = Signature.get_signature(secret, body, "v2", uri, request.method)
        return None if same_secret(v2, expected) else "X-HubSpot-Signature does not match"
    return "request is not signed (X-HubSpot-Signature-v3 or X-HubSpot-Signature)"


def _hubspot_field(body: dict, name: str):
    """An input field of a custom action, or a key/property of a workflow webhook body."""
    for container in (body.get("inputFields"), body, body.get("properties")):
        if isinstance(container, dict) and container.get(name) not in (None, ""):
            value = container[name]
            return value.get("value") if isinstance(value, dict) else value  # legacy {value: ...}
    return None


def _hubspot_answer(row: OutboundMessage):
    return jsonify(outputFields=hubspot_outputs(row)), 200


@bp.post("/outbound/hubspot")
def hubspot_action():
    cfg = _rt().config
    secret = cfg.outbound.hubspot.client_secret or cfg.hubspot.client_secret
    if not secret:
        return _error(503, "HubSpot requests cannot be verified: set outbound.hubspot.client_secret")
    raw = request.get_data(cache=True)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return _error(400, "body is not UTF-8 text")
    reason = verify_hubspot(secret, cfg.outbound.hubspot.max_age_seconds, text)
    if reason:
        log.warning("hubspot outbound request rejected: %s", reason)
        return _error(401, reason)
    try:
        body = json.loads(text)
        digest = request_hash(body)  # encoding it again goes a level deeper than parsing did
    except (ValueError, RecursionError):
        return _error(400, "body is not valid JSON (or nested too deeply)")
    if not isinstance(body, dict):
        return _error(400, "body must be a JSON object")
    names = cfg.outbound.hubspot
    to, line, msg = (_hubspot_field(body, n) for n in (names.to_field, names.from_field, names.text_field))
    for label, value in (("to", to), ("from", line), ("text", msg)):
        if value is not None and not isinstance(value, (str, int)):
            return _error(400, f"{label} must be a string", field=label)
    try:
        media = split_media(_hubspot_field(body, names.media_field))
    except ValueError as exc:
        return _error(400, str(exc), field=names.media_field)
    callback = body.get("callbackId")
    action = isinstance(callback, str) and bool(callback)  # a custom workflow action, not a webhook
    if action and (len(callback) > 200 or has_control(callback)):
        return _error(400, "callbackId must be at most 200 characters, without control characters",
                      field="callbackId")
    key = f"hubspot:{callback}" if action else f"hubspot:body:{hashlib.sha256(raw).hexdigest()}"
    fields = dict(line=str(line or ""), to=str(to or ""), text=str(msg or ""), media=media, policy=None)
    row, _ = _submit("hubspot", key, fields, True, digest,
                     callback=action and cfg.outbound.hubspot.complete_async)
    return _hubspot_answer(row)


# -- Salesforce ---------------------------------------------------------------------------

def _soap_fault(status: int, message: str) -> Response:
    xml = ('<?xml version="1.0" encoding="UTF-8"?>\n'
           '<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"><soapenv:Body>'
           f'<soapenv:Fault><faultcode>soapenv:Client</faultcode><faultstring>{escape(message)}'
           '</faultstring></soapenv:Fault></soapenv:Body></soapenv:Envelope>')
    return Response(xml, status=status, mimetype="text/xml")


def _org_allowed(org: str, allowed: list[str]) -> bool:
    # 18-character ids are 15-character ids plus a case-insensitivity suffix.
    ok = False
    for a in allowed:
        ok |= hmac.compare_digest(org[:15].encode(), a[:15].encode())
    return ok and len(org) in (15, 18)


@bp.post("/outbound/salesforce")
def salesforce_outbound():
    cfg = _rt().config
    sf = cfg.outbound.salesforce
    if not sf.organization_ids:
        return _soap_fault(503, "Salesforce Outbound Messages are not enabled (outbound.salesforce.organization_ids)")
    if sf.token and not any_secret_matches(request.args.get("token", ""), [sf.token]):
        return _soap_fault(401, "missing or invalid token in the endpoint URL")
    try:
        root = fromstring(request.get_data(cache=True), forbid_dtd=True)
    except DefusedXmlException as exc:
        return _soap_fault(400, f"XML with a DTD or entities is refused ({type(exc).__name__})")
    except (ParseError, ValueError, LookupError) as exc:  # LookupError: an unknown encoding
        return _soap_fault(400, f"body is not well-formed XML: {exc}")
    notes = root.find(f".//{OM_NS}notifications")
    if notes is None:
        return _soap_fault(400, "no notifications element (namespace http://soap.sforce.com/2005/09/outbound)")
    org = (notes.findtext(f"{OM_NS}OrganizationId") or "").strip()
    if not _org_allowed(org, sf.organization_ids):
        log.warning("salesforce outbound message from organization %r refused", org)
        return _soap_fault(403, "OrganizationId is not an accepted organization")
    items = notes.findall(f"{OM_NS}Notification")
    if not 1 <= len(items) <= MAX_NOTIFICATIONS:
        return _soap_fault(400, f"a message carries 1 to {MAX_NOTIFICATIONS} notifications, not {len(items)}")
    rows = []
    box = Outbox(_rt().store)
    policy = FetchPolicy.from_config(cfg.fetch)
    for n in items:
        nid = (n.findtext(f"{OM_NS}Id") or "").strip()
        if not nid or len(nid) > 100 or has_control(nid):
            return _soap_fault(400, "a Notification has no Id" if not nid else
                               "a Notification Id must be at most 100 characters, without control characters")
        sobj = n.find(f"{OM_NS}sObject")
        values = {} if sobj is None else {
            child.tag.replace(SOBJECT_NS, ""): (child.text or "").strip() for child in sobj}
        try:
            media = split_media(values.get(sf.media_field, ""))
        except ValueError:
            media = []
        fields = dict(line=values.get(sf.from_field, "") if sf.from_field else "",
                      to=values.get(sf.to_field, ""), text=values.get(sf.text_field, ""),
                      media=media, policy=None)
        item, _ = prepare(cfg, source="salesforce", idem_key=f"salesforce:{org[:15]}:{nid}",
                          check_bytes=False, fetch_policy=policy,
                          request_hash=request_hash({"id": nid, **values}), **fields)
        item["result"] = json.dumps({"salesforce": {"notification_id": nid, "record_id": values.get("Id", "")}})
        rows.append(item)
    results = box.enqueue(rows)  # one transaction: all durably queued before the ack
    created = sum(1 for _, c in results if c)
    if created:
        _rt().wake()
    log.info("salesforce outbound message from %s: %d notifications, %d new", org, len(rows), created)
    return Response(ACK, status=200, mimetype="text/xml")
