"""POST /webhooks/aircall: authentication, validation, persistence and dedup."""
from __future__ import annotations

import json

import pytest
from sqlalchemy import func, select

from connector.store import deliveries, inbox
from tests.conftest import TOKEN, aircall_payload


def post(client, body, raw: bytes | None = None, **kw):
    data = raw if raw is not None else json.dumps(body).encode()
    return client.post("/webhooks/aircall", data=data, content_type="application/json", **kw)


def count(runtime, table=inbox) -> int:
    with runtime.store.engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(table)).scalar()


def test_sms_is_stored_with_one_delivery_per_crm(client, runtime):
    resp = post(client, aircall_payload("sms_received"))
    assert resp.status_code == 200
    assert resp.get_json()["status"] == "stored"
    with runtime.store.engine.connect() as conn:
        row = conn.execute(select(inbox)).one()
        targets = sorted(r.target for r in conn.execute(select(deliveries)))
    assert row.message_id == "abdcSM11da5f0b1"
    assert row.event == "message.received"
    assert row.direction == "inbound"
    assert row.status == "received"
    assert row.external == "+18704575426"
    assert json.loads(row.payload)["data"]["body"] == "Hi, can you send me the brochure?"
    assert targets == ["hubspot", "salesforce"]


def test_same_delivery_five_times_is_stored_once(client, runtime):
    payload = aircall_payload("mms_received")
    answers = [post(client, payload).get_json()["status"] for _ in range(5)]
    assert answers == ["stored", "duplicate", "duplicate", "duplicate", "duplicate"]
    assert count(runtime) == 1
    assert count(runtime, deliveries) == 2


def test_status_update_of_same_message_is_a_separate_event(client, runtime):
    for name in ("message_sent", "status_sent", "status_delivered", "status_delivered"):
        assert post(client, aircall_payload(name)).status_code == 200
    with runtime.store.engine.connect() as conn:
        rows = conn.execute(select(inbox.c.event, inbox.c.status).order_by(inbox.c.id)).all()
    assert rows == [("message.sent", "pending"), ("message.status_updated", "sent"),
                    ("message.status_updated", "delivered")]


@pytest.mark.parametrize("token", [None, "", "wrong-token", TOKEN + "x", 12345])
def test_missing_or_wrong_token_is_401_and_stores_nothing(client, runtime, token):
    payload = aircall_payload("sms_received")
    if token is None:
        del payload["token"]
    else:
        payload["token"] = token
    resp = post(client, payload)
    assert resp.status_code == 401
    assert resp.get_json() == {"error": "missing or invalid webhook token"}
    assert count(runtime) == 0


def test_rotated_tokens_are_all_accepted(make_runtime):
    from connector.web import create_app
    rt = make_runtime(aircall={"webhook_tokens": ["old-token", "new-token"]})
    client = create_app(rt.config, rt).test_client()
    for i, tok in enumerate(["old-token", "new-token"]):
        p = aircall_payload("sms_received", token=tok)
        p["data"]["id"] = f"rot-{i}"
        assert post(client, p).status_code == 200
    assert post(client, aircall_payload("sms_received", token="other")).status_code == 401


@pytest.mark.parametrize("name", ["call_created", "whatsapp_received"])
def test_other_events_and_channels_are_acknowledged_and_ignored(client, runtime, name):
    resp = post(client, aircall_payload(name))
    assert resp.status_code == 200
    assert resp.get_json()["status"] == "ignored"
    assert count(runtime) == 0


def test_broken_json_is_400(client, runtime):
    resp = post(client, None, raw=b'{"event": "message.received", "token": ')
    assert resp.status_code == 400
    assert resp.get_json()["error"].startswith("body is not valid JSON")
    assert count(runtime) == 0


def test_non_utf8_body_is_400(client):
    resp = post(client, None, raw=b"\xff\xfe{}")
    assert resp.status_code == 400
    assert resp.get_json()["error"] == "body is not UTF-8 text"


def test_deeply_nested_json_is_400_not_500(client):
    resp = post(client, None, raw=b"[" * 100000 + b"]" * 100000)
    assert resp.status_code in (400, 413)


@pytest.mark.parametrize("mutate, field, reason", [
    (lambda p: p.pop("data"), "data", "is required"),
    (lambda p: p.__setitem__("data", "x"), "data", "must be object"),
    (lambda p: p["data"].pop("id"), "data.id", "is required"),
    (lambda p: p["data"].__setitem__("id", ["x"]), "data.id", "must be string or integer"),
    (lambda p: p["data"].__setitem__("body", 42), "data.body", "must be string"),
    (lambda p: p["data"].__setitem__("direction", "sideways"), "data.direction",
     "must be 'inbound' or 'outbound'"),
    (lambda p: p.__setitem__("timestamp", "yesterday"), "timestamp",
     "must be epoch seconds, epoch milliseconds or ISO 8601"),
    (lambda p: p.pop("timestamp"), "timestamp", "is required"),
    (lambda p: p["data"].__setitem__("media_details", {"a": 1}), "data.media_details", "must be array"),
    (lambda p: p["data"]["media_details"][0].pop("presigned_url"),
     "data.media_details[0].presigned_url", "is required"),
    (lambda p: p["data"].__setitem__("created_at", "not a date"), "data.created_at",
     "must be epoch seconds, epoch milliseconds or ISO 8601"),
    (lambda p: (p["data"].pop("raw_digits"), p["data"].pop("external_number", None)),
     "data.raw_digits", "is required (the external party's number)"),
])
def test_malformed_fields_are_400_naming_the_field(client, runtime, mutate, field, reason):
    payload = aircall_payload("mms_received")
    mutate(payload)
    resp = post(client, payload)
    assert resp.status_code == 400
    assert resp.get_json() == {"error": f"{field}: {reason}", "field": field}
    assert count(runtime) == 0


def test_body_must_be_an_object(client):
    resp = post(client, ["token", TOKEN])
    assert resp.status_code == 401  # no token field: unauthenticated before anything else


def test_oversized_body_is_413(make_runtime):
    from connector.web import create_app
    rt = make_runtime(server={"max_body_bytes": 2048})
    client = create_app(rt.config, rt).test_client()
    payload = aircall_payload("sms_received")
    payload["data"]["body"] = "x" * 5000
    resp = post(client, payload)
    assert resp.status_code == 413
    assert "error" in resp.get_json()
    assert count(rt) == 0


def test_unknown_route_and_method_are_json(client):
    assert client.get("/webhooks/aircall").status_code == 405
    resp = client.get("/nope")
    assert resp.status_code == 404 and resp.is_json


@pytest.mark.parametrize("key", ["raw_digits", "external_number"])
@pytest.mark.parametrize("store", ["sqlite", "postgresql"])
def test_an_overlong_unparseable_external_number_is_400_on_every_store(make_runtime, request, store, key):
    # Unparseable numbers are kept as sent; PostgreSQL enforces the column's 40 characters,
    # so an overlong one must be refused here, not fail the insert with a 500.
    from connector.web import create_app
    rt = make_runtime(store={"url": request.getfixturevalue("pg_url")}) if store == "postgresql" \
        else make_runtime()
    rt.store.create_schema()
    payload = aircall_payload("sms_received")
    payload["data"].pop("external_number", None)
    payload["data"][key] = "not a phone number " * 3
    resp = post(create_app(rt.config, rt).test_client(), payload)
    assert resp.status_code == 400
    assert resp.get_json() == {"error": f"data.{key}: must be a phone number of at most 40 characters",
                               "field": f"data.{key}"}
    assert count(rt) == 0


@pytest.mark.parametrize("key,value,error", [
    ("id", "abc\u0000def", "data.id: must not contain control characters or unpaired surrogates"),
    ("id", "12\ud800", "data.id: must not contain control characters or unpaired surrogates"),
    ("raw_digits", "+1 415\u0000", "data.raw_digits: must be a phone number, without control characters "
                                   "or unpaired surrogates"),
    ("raw_digits", "\udfff", "data.raw_digits: must be a phone number, without control characters "
                             "or unpaired surrogates"),
])
@pytest.mark.parametrize("store", ["sqlite", "postgresql"])
def test_control_characters_in_the_id_or_number_are_400_on_every_store(make_runtime, request, store,
                                                                        key, value, error):
    # PostgreSQL text cannot hold NUL: refused here, with the field, not a 500 at the insert.
    from connector.web import create_app
    rt = make_runtime(store={"url": request.getfixturevalue("pg_url")}) if store == "postgresql" \
        else make_runtime()
    rt.store.create_schema()
    payload = aircall_payload("sms_received")
    payload["data"].pop("external_number", None)
    payload["data"][key] = value
    resp = post(create_app(rt.config, rt).test_client(), payload)
    assert resp.status_code == 400
    assert resp.get_json() == {"error": error, "field": f"data.{key}"}
    assert count(rt) == 0
