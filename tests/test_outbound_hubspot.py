"""POST /outbound/hubspot: v3 and v2 signatures (valid, stale, forged), outputFields."""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time

import pytest

from connector.outbox import OUT_QUEUED, OUT_REJECTED
from tests.outbound_support import HS_SECRET, LINE, TO, oclient, ort, outbox_rows, serve_media

URI = "http://127.0.0.1:8080/outbound/hubspot"  # server.public_base_url + path


def action_body(callback="ap-102670506-56777914962-11-0", **inputs) -> dict:
    return {"callbackId": callback,
            "origin": {"portalId": 102670506, "actionDefinitionId": 10860211, "actionDefinitionVersion": 1},
            "context": {"source": "WORKFLOWS", "workflowId": 192814114},
            "object": {"objectId": 614, "objectType": "CONTACT", "properties": {}},
            "inputFields": {"to": TO, "from": LINE, "text": "Your order shipped", **inputs}}


def v3_headers(body: bytes, secret=HS_SECRET, ts_ms=None, uri=URI) -> dict:
    ts = str(ts_ms if ts_ms is not None else int(time.time() * 1000))
    msg = f"POST{uri}{body.decode()}{ts}".encode()
    sig = base64.b64encode(hmac.new(secret.encode(), msg, hashlib.sha256).digest()).decode()
    return {"X-HubSpot-Signature-v3": sig, "X-HubSpot-Request-Timestamp": ts, "Content-Type": "application/json"}


def v2_headers(body: bytes, secret=HS_SECRET, uri=URI) -> dict:
    sig = hashlib.sha256(f"{secret}POST{uri}{body.decode()}".encode()).hexdigest()
    return {"X-HubSpot-Signature": sig, "X-HubSpot-Signature-Version": "v2", "Content-Type": "application/json"}


def post(client, body: dict, headers_for, path="/outbound/hubspot", **kw):
    raw = json.dumps(body).encode()
    return client.post(path, data=raw, headers=headers_for(raw, **kw))


@pytest.mark.parametrize("sign", [v3_headers, v2_headers])
def test_signed_action_is_queued_and_answers_success(oclient, ort, sign):
    r = post(oclient, action_body(), sign)
    assert r.status_code == 200
    assert r.json == {"outputFields": {"hs_execution_state": "SUCCESS", "message_id": "out_1", "state": "queued",
                                       "error": "", "removed_attachments": ""}}
    [row] = outbox_rows(ort)
    assert (row.state, row.source, row.recipient, row.text) == (OUT_QUEUED, "hubspot", TO, "Your order shipped")


def test_stale_v3_timestamp_is_rejected(oclient, ort):
    r = post(oclient, action_body(), v3_headers, ts_ms=int((time.time() - 301) * 1000))
    assert r.status_code == 401 and r.json["error"] == "request timestamp is more than 300 seconds old"
    assert outbox_rows(ort) == []


@pytest.mark.parametrize("forge", ["secret", "uri", "body"])
def test_forged_signatures_are_rejected(oclient, ort, forge):
    body = action_body()
    for sign in (v3_headers, v2_headers):
        raw = json.dumps(body).encode()
        if forge == "secret":
            headers = sign(raw, secret="not-the-secret")
        elif forge == "uri":
            headers = sign(raw, uri="http://127.0.0.1:8080/somewhere-else")
        else:
            headers = sign(raw)
            raw = json.dumps({**body, "inputFields": {**body["inputFields"], "to": "+14155550199"}}).encode()
        r = oclient.post("/outbound/hubspot", data=raw, headers=headers)
        assert r.status_code == 401 and "does not match" in r.json["error"]
    assert outbox_rows(ort) == []


def test_unsigned_and_v1_requests_are_rejected(oclient):
    raw = json.dumps(action_body()).encode()
    assert oclient.post("/outbound/hubspot", data=raw).status_code == 401
    v1 = hashlib.sha256(HS_SECRET.encode() + raw).hexdigest()
    r = oclient.post("/outbound/hubspot", data=raw, headers={"X-HubSpot-Signature": v1,
                                                             "X-HubSpot-Signature-Version": "v1"})
    assert r.status_code == 401 and "v1 is not accepted" in r.json["error"]


def test_v3_uri_decoding_of_the_query(oclient, ort):
    # HubSpot signs the URI with %3A etc. decoded, but %20 left as is.
    raw = json.dumps(action_body()).encode()
    signed = "http://127.0.0.1:8080/outbound/hubspot?tag=a:b%20c"
    r = oclient.post("/outbound/hubspot?tag=a%3Ab%20c", data=raw, headers=v3_headers(raw, uri=signed))
    assert r.status_code == 200


def test_validation_failure_answers_fail_continue_with_the_article_text(oclient, ort, httpserver):
    media = " ".join(serve_media(httpserver, f"f{i}.png", "png", 100) for i in range(11))
    r = post(oclient, action_body(media_urls=media), v3_headers)
    out = r.json["outputFields"]
    assert r.status_code == 200 and out["hs_execution_state"] == "SUCCESS"  # partial: 10 sent
    assert out["removed_attachments"].endswith(
        "f10.png: You can only upload up to 10 files. Please remove some files and try again")
    r = post(oclient, action_body(callback="cb-2", to="+33612345678", media_urls=media), v3_headers)
    out = r.json["outputFields"]
    assert out["hs_execution_state"] == "FAIL_CONTINUE"
    assert out["error"] == ("MMS is available only for numbers in the US, Canada, and Australia, "
                            "so the recipient must be located in one of these countries")
    assert [m.state for m in outbox_rows(ort)] == [OUT_QUEUED, OUT_REJECTED]


def test_same_callback_id_is_one_send(oclient, ort):
    first = post(oclient, action_body(), v3_headers)
    again = post(oclient, action_body(), v2_headers)
    assert first.json == again.json and len(outbox_rows(ort)) == 1


def test_workflow_webhook_body_with_properties(oclient, ort):
    # "Send a webhook": the enrolled object's data; fields come from its properties.
    rt = ort.make(outbound={"hubspot": {"client_secret": HS_SECRET, "to_field": "mobilephone",
                                        "text_field": "sms_text"}})
    from connector.web import create_app
    client = create_app(rt.config, rt).test_client()
    body = {"objectId": 614, "properties": {"mobilephone": {"value": "(415) 555-0142"},
                                            "sms_text": {"value": "Hello from a workflow"}}}
    r = post(client, body, v3_headers)
    assert r.json["outputFields"]["hs_execution_state"] == "SUCCESS"
    [row] = outbox_rows(rt)
    assert (row.line, row.recipient, row.text) == (LINE, TO, "Hello from a workflow")  # default line
    assert post(client, body, v3_headers).json["outputFields"]["message_id"] == "out_1"  # redelivery


def test_malformed_json_after_a_valid_signature_is_400(oclient):
    raw = b"{not json"
    r = oclient.post("/outbound/hubspot", data=raw, headers=v3_headers(raw))
    assert r.status_code == 400


def test_no_secret_configured_is_503(ort):
    rt = ort.make(outbound={"hubspot": {"client_secret": ""}})
    from connector.web import create_app
    r = create_app(rt.config, rt).test_client().post("/outbound/hubspot", json=action_body())
    assert r.status_code == 503


@pytest.mark.parametrize("header", ["X-HubSpot-Signature-v3", "X-HubSpot-Signature"])
def test_a_signature_with_non_ascii_characters_is_refused_not_a_500(oclient, ort, header):
    raw = json.dumps(action_body()).encode()
    headers = v3_headers(raw) if header.endswith("v3") else v2_headers(raw)
    headers[header] = "sign\u00e9"  # an HTTP header may carry any latin-1 byte
    r = oclient.post("/outbound/hubspot", data=raw, headers=headers)
    assert r.status_code == 401 and r.json["error"] == f"{header} does not match"
    assert outbox_rows(ort) == []


def test_a_signed_body_nested_near_the_parsers_limit_is_a_400_never_a_500(oclient):
    statuses = set()
    for depth in range(900, 1000):  # where parsing passes but encoding it again would not
        raw = json.dumps(dict(action_body(callback=f"cb-{depth}"), extra="@@")).encode()
        raw = raw.replace(b'"@@"', b"[" * depth + b"]" * depth)
        statuses.add(oclient.post("/outbound/hubspot", data=raw, headers=v3_headers(raw)).status_code)
    assert statuses <= {200, 400}, statuses


def test_a_405_from_any_route_says_which_methods_are_allowed(oclient):
    for path in ("/webhooks/aircall", "/outbound/hubspot", "/outbound/salesforce", "/api/v1/messages"):
        r = oclient.get(path)
        assert r.status_code == 405 and "POST" in r.headers.get("Allow", ""), path
        assert r.get_json()["status"] == 405
