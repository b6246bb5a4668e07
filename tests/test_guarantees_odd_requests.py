"""Odd requests on the outbound and operator surfaces: a clear 4xx, never a 500, and no
secret printed. (The inbound webhook's own: tests/test_guarantees_odd_text.py.)"""
from __future__ import annotations

import json

import pytest

from tests.conftest import aircall_payload
from tests.outbound_support import API_TOKEN, oclient, ort  # noqa: F401 (fixtures)
from tests.test_operations_cli import Refusing, _post, _run_all, setup  # noqa: F401 (fixture)
from tests.test_outbound_hubspot import action_body, v3_headers
from tests.test_outbound_salesforce import REQUEST, post as sf_post

AUTH = {"Authorization": f"Bearer {API_TOKEN}"}


def test_dead_letters_show_hides_presigned_signatures_as_the_logs_do(setup):
    rt, client, cli = setup
    _post(client, "mms_received")
    _run_all(rt, {"hubspot": Refusing()})
    dead = json.loads(cli("dead-letters", "list", "--json").output)[0]["id"]
    out = cli("dead-letters", "show", str(dead)).output
    assert "X-Amz-Signature" not in out
    shown = json.loads(out)
    assert shown["payload"]["data"]["media_details"][0]["presigned_url"] == (
        "https://media.aircall.example/m/1/front.jpg?[redacted]")


def test_an_unsigned_hubspot_request_with_a_400_digit_timestamp_is_a_401(oclient):
    raw = json.dumps(action_body()).encode()
    r = oclient.post("/outbound/hubspot", data=raw, headers=v3_headers(raw, secret="wrong", ts_ms=int("9" * 400)))
    assert r.status_code == 401


def test_an_unknown_xml_encoding_is_a_soap_fault(oclient):
    r = sf_post(oclient, REQUEST.replace('encoding="UTF-8"', 'encoding="x-nope"'))
    assert r.status_code == 400 and r.mimetype == "text/xml"
    assert "body is not well-formed XML" in r.get_data(as_text=True)


def test_half_an_emoji_in_a_send_request_is_queued_with_a_replacement_character(oclient, ort):
    r = oclient.post("/api/v1/messages", data='{"to": "+14155550142", "text": "hi \\ud83d"}', headers=AUTH)
    assert r.status_code == 202 and r.json["text"] == "hi \ufffd"
    raw = b'{"callbackId": "cb-s", "inputFields": {"to": "+14155550142", "text": "hi \\ud83d"}}'
    assert oclient.post("/outbound/hubspot", data=raw, headers=v3_headers(raw)).status_code == 200


@pytest.mark.parametrize("key", ["a\x00b", "\x1b[31mred"])
def test_an_idempotency_key_with_control_characters_is_a_400(oclient, key):
    r = oclient.post("/api/v1/messages", json={"to": "+14155550142", "text": "hi"},
                     headers={**AUTH, "Idempotency-Key": key})
    assert r.status_code == 400 and r.json["error"] == "Idempotency-Key must not contain control characters"


def test_a_webhook_timestamp_past_any_float_is_a_400(client):
    body = aircall_payload("sms_received")
    body["data"]["created_at"] = 10 ** 400
    r = client.post("/webhooks/aircall", data=json.dumps(body), content_type="application/json")
    assert r.status_code == 400 and r.get_json()["field"] == "data.created_at"


@pytest.mark.parametrize("mid", ["out_\u00b2", "out_" + "9" * 30])
def test_odd_message_ids_are_not_found(oclient, mid):
    r = oclient.get(f"/api/v1/messages/{mid}", headers=AUTH)
    assert r.status_code == 404 and r.json == {"error": "no such message"}


def test_a_salesforce_session_id_after_bearer_is_redacted_whole():
    from connector.logs import Redactor
    line = Redactor([])("calling with Bearer 00D5e000000AbCd!AQ8AQHsz.secretpart")
    assert "secretpart" not in line and "AQ8AQ" not in line
