"""Hostile and malformed input on every inbound endpoint (hypothesis): never a 5xx,
nothing stored for a rejected request; forged or stale credentials: 401/403, nothing done."""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import socket
import time
from xml.sax.saxutils import escape

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from connector.store import deliveries, inbox, outbox
from connector.web import create_app
from tests.conftest import TOKEN, aircall_payload
from tests.outbound_support import API_TOKEN, HS_SECRET, ORG, oclient, ort  # noqa: F401 (fixtures)

HS_URI = "http://127.0.0.1:8080/outbound/hubspot"
SETTINGS = settings(max_examples=80, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=15)
hostile_text = st.sampled_from([
    "<script>alert(1)</script>", "'; DROP TABLE inbox; --", "{{ config }}", "${jndi:ldap://x}",
    "\u202e\u0000\ufeff", "A" * 5000, "+1 (415) 555-0142 OR 1=1", "file:///etc/passwd",
    "http://127.0.0.1:22/", "http://169.254.169.254/latest/meta-data/", "😀" * 50, "",
]) | st.text(max_size=60)
AIRCALL_KEYS = ["id", "status", "direction", "body", "raw_digits", "external_number", "created_at",
                "sent_at", "channel", "number", "media_details", "media_url"]
aircall_bodies = st.fixed_dictionaries({
    "token": st.just(TOKEN),
    "event": st.sampled_from(["message.received", "message.sent", "message.status_updated",
                              "message.updated", "call.created"]) | st.text(max_size=20),
    "timestamp": st.integers() | st.floats() | st.text(max_size=30) | st.none(),
    "data": st.dictionaries(st.sampled_from(AIRCALL_KEYS), json_values | hostile_text, max_size=8)
    | json_values,
})


@pytest.fixture(autouse=True)
def no_dns(monkeypatch):
    """Media URLs from the fuzzer must never leave this machine: no name resolves."""
    real = socket.getaddrinfo

    def local_only(host, *args, **kwargs):
        if host in ("127.0.0.1", "localhost", "::1"):
            return real(host, *args, **kwargs)
        raise socket.gaierror(socket.EAI_NONAME, "name resolution disabled in this test")

    monkeypatch.setattr(socket, "getaddrinfo", local_only)


def counts(rt) -> tuple[int, int, int]:
    """Stored inbound events, CRM deliveries, and sends that could go out (not rejected)."""
    with rt.store.engine.connect() as conn:
        return (conn.execute(select(func.count()).select_from(inbox)).scalar(),
                conn.execute(select(func.count()).select_from(deliveries)).scalar(),
                conn.execute(select(func.count()).select_from(outbox)
                             .where(outbox.c.state != "rejected")).scalar())


def check(rt, response, before):
    """Never a 5xx; a 4xx stored nothing that will be worked on. (A 422 from the messages
    API keeps its rejection, state "rejected", so the same Idempotency-Key replays it.)"""
    assert response.status_code < 500, response.get_data(as_text=True)[:300]
    if response.status_code >= 400:
        assert counts(rt) == before
        if response.is_json:  # a clear reason, in JSON
            assert response.get_json().get("error")


# -- Aircall webhook -----------------------------------------------------------------------

@SETTINGS
@given(body=aircall_bodies)
def test_aircall_structured_garbage(ort, oclient, body):
    before = counts(ort)
    r = oclient.post("/webhooks/aircall", json=body)
    check(ort, r, before)
    if r.status_code == 200 and r.get_json()["status"] == "stored":
        # What was accepted can be worked on: it parses again and reaches an outcome.
        ort.worker().run_once()
        for e in ort.store.list_events(limit=1):
            for t in e["targets"].values():
                assert "no longer parses" not in (t["error"] or "")


@SETTINGS
@given(raw=st.binary(max_size=3000) | st.text(max_size=500).map(str.encode)
       | json_values.map(lambda v: json.dumps(v).encode()),
       ctype=st.sampled_from(["application/json", "text/plain", "application/x-www-form-urlencoded", ""]))
def test_aircall_raw_garbage(ort, oclient, raw, ctype):
    before = counts(ort)
    check(ort, oclient.post("/webhooks/aircall", data=raw, content_type=ctype or None), before)


def _one_field_replaced(key_value) -> dict:
    body = aircall_payload("mms_received")
    body["data"][key_value[0]] = key_value[1]
    return body


# A valid webhook with one field hostile: reaches the insert, where the stores differ.
one_hostile_field = st.tuples(st.sampled_from(AIRCALL_KEYS), hostile_text | json_values).map(_one_field_replaced)


@pytest.fixture
def pg_webhooks(make_runtime, pg_url):
    """The webhook on the scaled-out store: PostgreSQL refuses what SQLite keeps (NUL)."""
    rt = make_runtime(store={"url": pg_url})
    rt.store.create_schema()
    return rt, create_app(rt.config, rt).test_client()


@SETTINGS
@given(body=aircall_bodies | one_hostile_field)
@example(body=_one_field_replaced(("id", "\u202e\u0000\ufeff")))
@example(body=_one_field_replaced(("raw_digits", "\u0000")))
@example(body=_one_field_replaced(("id", "12\ud800")))
def test_aircall_structured_garbage_on_postgresql(pg_webhooks, body):
    rt, client = pg_webhooks
    before = counts(rt)
    check(rt, client.post("/webhooks/aircall", json=body), before)


def test_aircall_deep_nesting_is_a_clear_400(ort, oclient):
    before = counts(ort)
    r = oclient.post("/webhooks/aircall", data=b"[" * 100000 + b"]" * 100000, content_type="application/json")
    assert r.status_code in (400, 413)
    assert counts(ort) == before


# -- REST messages API ---------------------------------------------------------------------

@SETTINGS
@given(body=json_values | st.fixed_dictionaries({}, optional={
    "to": hostile_text, "from": hostile_text, "text": hostile_text, "line": hostile_text,
    "media": st.lists(hostile_text, max_size=12) | json_values, "policy": hostile_text | json_values}),
    key=st.none() | st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=300))
def test_messages_api_garbage(ort, oclient, body, key):
    before = counts(ort)
    headers = {"Authorization": f"Bearer {API_TOKEN}"}
    if key is not None:
        headers["Idempotency-Key"] = key
    check(ort, oclient.post("/api/v1/messages", json=body, headers=headers), before)


# -- HubSpot workflow action (validly signed garbage) --------------------------------------

def _v3(raw: bytes) -> dict:
    ts = str(int(time.time() * 1000))
    sig = base64.b64encode(hmac.new(HS_SECRET.encode(), b"POST" + HS_URI.encode() + raw + ts.encode(),
                                    hashlib.sha256).digest()).decode()
    return {"X-HubSpot-Signature-v3": sig, "X-HubSpot-Request-Timestamp": ts,
            "Content-Type": "application/json"}


@SETTINGS
@given(body=json_values | st.fixed_dictionaries({"callbackId": st.text(max_size=40) | json_values}, optional={
    "inputFields": st.dictionaries(st.sampled_from(["to", "from", "text", "media_urls"]),
                                   hostile_text | json_values, max_size=4)}))
def test_hubspot_action_signed_garbage(ort, oclient, body):
    raw = json.dumps(body).encode()
    before = counts(ort)
    check(ort, oclient.post("/outbound/hubspot", data=raw, headers=_v3(raw)), before)


# -- Salesforce Outbound Messages -----------------------------------------------------------

def _soap(org: str, notifications: list[tuple[str, dict]]) -> bytes:
    items = "".join(
        f"<Notification><Id>{escape(nid)}</Id><sObject xsi:type=\"sf:Task\" "
        f"xmlns:sf=\"urn:sobject.enterprise.soap.sforce.com\">"
        + "".join(f"<sf:{k}>{escape(v)}</sf:{k}>" for k, v in fields.items())
        + "</sObject></Notification>" for nid, fields in notifications)
    return (f'<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope '
            f'xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" '
            f'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><soapenv:Body>'
            f'<notifications xmlns="http://soap.sforce.com/2005/09/outbound">'
            f'<OrganizationId>{escape(org)}</OrganizationId>{items}</notifications>'
            f'</soapenv:Body></soapenv:Envelope>').encode()


xml_text = st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc")), max_size=40) | hostile_text.filter(
    lambda s: all(c >= " " for c in s))


@SETTINGS
@given(org=st.just(ORG) | st.just(ORG[:15]) | xml_text,
       notes=st.lists(st.tuples(xml_text, st.dictionaries(
           st.sampled_from(["Id", "To_Phone__c", "Body__c", "Media_URL__c"]), xml_text, max_size=4)), max_size=4))
def test_salesforce_outbound_structured_garbage(ort, oclient, org, notes):
    before = counts(ort)
    r = oclient.post("/outbound/salesforce", data=_soap(org, notes), content_type="text/xml")
    check(ort, r, before)
    if org[:15] != ORG[:15]:
        assert r.status_code in (400, 403)


@SETTINGS
@given(raw=st.binary(max_size=2000) | st.text(max_size=300).map(str.encode))
def test_salesforce_outbound_raw_garbage(ort, oclient, raw):
    before = counts(ort)
    check(ort, oclient.post("/outbound/salesforce", data=raw, content_type="text/xml"), before)


def test_salesforce_xml_bombs_are_refused(ort, oclient):
    bomb = (b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;">]>'
            b'<lolz>&lol2;</lolz>')
    xxe = b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]><x>&e;</x>'
    before = counts(ort)
    for raw in (bomb, xxe):
        r = oclient.post("/outbound/salesforce", data=raw, content_type="text/xml")
        assert r.status_code == 400
        assert "/etc/passwd" not in r.get_data(as_text=True) and "root:" not in r.get_data(as_text=True)
    assert counts(ort) == before


# -- forged and stale credentials: 401/403, nothing stored, nothing sent ---------------------

def _forged_requests():
    good_aircall = aircall_payload("mms_received")
    action = json.dumps({"callbackId": "cb-1", "inputFields": {"to": "+14155550142", "text": "hi"}}).encode()
    stale = {**_v3(action), "X-HubSpot-Request-Timestamp": str(int(time.time() * 1000) - 3_600_000)}
    stale["X-HubSpot-Signature-v3"] = base64.b64encode(hmac.new(
        HS_SECRET.encode(), b"POST" + HS_URI.encode() + action + stale["X-HubSpot-Request-Timestamp"].encode(),
        hashlib.sha256).digest()).decode()
    wrong_secret = dict(_v3(action))
    wrong_secret["X-HubSpot-Signature-v3"] = base64.b64encode(hmac.new(
        b"not-the-secret", b"POST" + HS_URI.encode() + action + wrong_secret["X-HubSpot-Request-Timestamp"].encode(),
        hashlib.sha256).digest()).decode()
    tampered = _v3(action)
    msg = {"to": "+14155550142", "text": "hi"}
    return [
        ("aircall no token", "/webhooks/aircall", {"json": {k: v for k, v in good_aircall.items() if k != "token"}}, 401),
        ("aircall forged token", "/webhooks/aircall", {"json": {**good_aircall, "token": TOKEN + "x"}}, 401),
        ("aircall token not a string", "/webhooks/aircall", {"json": {**good_aircall, "token": [TOKEN]}}, 401),
        ("api no bearer", "/api/v1/messages", {"json": msg}, 401),
        ("api forged bearer", "/api/v1/messages", {"json": msg, "headers": {"Authorization": "Bearer nope"}}, 401),
        ("api basic scheme", "/api/v1/messages", {"json": msg, "headers": {"Authorization": f"Basic {API_TOKEN}"}}, 401),
        ("hubspot unsigned", "/outbound/hubspot", {"data": action, "content_type": "application/json"}, 401),
        ("hubspot stale", "/outbound/hubspot", {"data": action, "headers": stale}, 401),
        ("hubspot wrong secret", "/outbound/hubspot", {"data": action, "headers": wrong_secret}, 401),
        ("hubspot tampered body", "/outbound/hubspot", {"data": action.replace(b"hi", b"yo"), "headers": tampered}, 401),
        ("salesforce wrong org", "/outbound/salesforce",
         {"data": _soap("00D000000000001AAA", [("04l1", {"To_Phone__c": "+14155550142", "Body__c": "x"})]),
          "content_type": "text/xml"}, 403),
        ("salesforce 15-char wrong org", "/outbound/salesforce",
         {"data": _soap(ORG[:14] + "X", [("04l1", {"To_Phone__c": "+14155550142", "Body__c": "x"})]),
          "content_type": "text/xml"}, 403),
    ]


@pytest.mark.parametrize("name,path,kwargs,status", _forged_requests(), ids=lambda v: v if isinstance(v, str) else "")
def test_forged_or_stale_credentials_do_nothing(ort, oclient, httpserver, name, path, kwargs, status):
    before = counts(ort)
    r = oclient.post(path, **kwargs)
    assert r.status_code == status, r.get_data(as_text=True)
    assert counts(ort) == before
    ort.worker().run_once()
    assert [req for req, _ in httpserver.log] == []  # nothing was sent to Aircall


def test_salesforce_token_in_url_when_configured(ort, httpserver):
    rt = ort.make(outbound={"salesforce": {"organization_ids": [ORG], "token": "url-secret-123"}})
    client = create_app(rt.config, rt).test_client()
    xml = _soap(ORG, [("04l1", {"To_Phone__c": "+14155550142", "Body__c": "x"})])
    before = counts(rt)
    for query in ("", "?token=wrong", "?token=url-secret-12", "?token="):
        assert client.post(f"/outbound/salesforce{query}", data=xml, content_type="text/xml").status_code == 401
    assert counts(rt) == before
    assert client.post("/outbound/salesforce?token=url-secret-123", data=xml, content_type="text/xml").status_code == 200
