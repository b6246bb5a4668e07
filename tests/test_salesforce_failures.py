"""How the Salesforce writer behaves when the org pushes back: limits, sessions, 5xx,
timeouts and validation errors, through the real simple-salesforce client."""
from __future__ import annotations

import json
import time

import pytest
import requests
import responses

from conftest import aircall_payload
from connector.store import DEAD, DELIVERED, RETRYING
from sf_fake import API, SOAP_LOGIN, add_login, add_search, body_of, calls_to, contact
from test_salesforce_writer import UPSERT, delivery_rows, due_now, rsps, sf  # noqa: F401  (fixtures)

TASK = UPSERT + "abdcSM77mms0001"
OK = {"id": "00TTASK1", "success": True, "errors": [], "created": True}


def start(sf, rsps, **section):
    rt, post, run = sf(**section)
    add_login(rsps)
    add_search(rsps, [contact("003C", "(415) 555-0142")])
    post(aircall_payload("mms_received"))
    return rt, post, run


def test_request_limit_exceeded_parks_work_and_stops_calling(sf, rsps):
    rt, post, run = start(sf, rsps)
    rsps.add(responses.PATCH, TASK, status=403,
             json=[{"message": "TotalRequests Limit exceeded.", "errorCode": "REQUEST_LIMIT_EXCEEDED"}])
    before = time.time()
    run()
    [row] = delivery_rows(rt)
    assert row["state"] == RETRYING
    assert row["attempts"] == 0  # parked, not a failed attempt
    assert row["next_at"] >= before + 60
    assert row["last_error"] == ("rate limited: Salesforce REQUEST_LIMIT_EXCEEDED: TotalRequests Limit exceeded.")
    # A second message in the cool-down makes no call at all.
    second = aircall_payload("mms_received")
    second["data"]["id"] = "second"
    post(second)
    n = len(rsps.calls)
    run()
    assert len(rsps.calls) == n
    # Stored during the park, so not even claimed: every process sees the org's park.
    assert delivery_rows(rt)[1]["state"] == "pending"
    assert rt.store.parked_until("salesforce") >= before + 60


def test_invalid_session_logs_in_again_once_and_repeats(sf, rsps):
    rt, post, run = sf()
    add_login(rsps, "SESSION-1", "SESSION-2")
    add_search(rsps, [contact("003C", "(415) 555-0142")])
    rsps.add(responses.PATCH, TASK, status=401,
             json=[{"message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID"}])
    rsps.add(responses.PATCH, TASK, status=201, json=OK)
    post(aircall_payload("mms_received"))
    run()
    assert len(calls_to(rsps, "POST", SOAP_LOGIN)) == 2
    patches = calls_to(rsps, "PATCH", "/sobjects/Task/")
    assert [c.request.headers["Authorization"] for c in patches] == ["Bearer SESSION-1", "Bearer SESSION-2"]
    assert body_of(patches[0]) == body_of(patches[1])
    assert delivery_rows(rt)[0]["state"] == DELIVERED


def test_session_refused_after_relogin_is_retried_later_not_looped(sf, rsps):
    rt, post, run = start(sf, rsps, call_retries=1)
    add_login(rsps, "SESSION-2")
    rsps.add(responses.PATCH, TASK, status=401,
             json=[{"message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID"}])
    rt.pipeline.process(rt.store.claim("w", 60)[0])
    assert len(calls_to(rsps, "PATCH", "/sobjects/Task/")) == 2
    row = delivery_rows(rt)[0]
    assert row["state"] == RETRYING
    assert "session refused right after login" in row["last_error"]


def test_500_is_retried_in_call_then_succeeds(sf, rsps):
    rt, post, run = start(sf, rsps)
    rsps.add(responses.PATCH, TASK, status=500, json=[{"message": "boom", "errorCode": "UNKNOWN_EXCEPTION"}])
    rsps.add(responses.PATCH, TASK, status=503, body="Service Unavailable")
    rsps.add(responses.PATCH, TASK, status=201, json=OK)
    run()
    assert len(calls_to(rsps, "PATCH", "/sobjects/Task/")) == 3
    assert delivery_rows(rt)[0]["state"] == DELIVERED


def test_persistent_500_becomes_a_later_retry(sf, rsps):
    rt, post, run = start(sf, rsps)
    rsps.add(responses.PATCH, TASK, status=500, json=[{"message": "boom", "errorCode": "UNKNOWN_EXCEPTION"}])
    rt.pipeline.process(rt.store.claim("w", 60)[0])
    assert len(calls_to(rsps, "PATCH", "/sobjects/Task/")) == 3  # salesforce.call_retries
    row = delivery_rows(rt)[0]
    assert row["state"] == RETRYING and row["attempts"] == 1
    assert row["last_error"] == ("Salesforce PATCH sobjects/Task/MMS_Message_Id__c/abdcSM77mms0001: "
                                 "HTTP 500: UNKNOWN_EXCEPTION: boom")


@pytest.mark.parametrize("exc", [requests.ReadTimeout("read timed out"),
                                 requests.ConnectionError("connection reset")])
def test_timeouts_and_connection_errors_retry(sf, rsps, exc):
    rt, post, run = start(sf, rsps)
    rsps.add(responses.PATCH, TASK, body=exc)
    rt.pipeline.process(rt.store.claim("w", 60)[0])
    row = delivery_rows(rt)[0]
    assert row["state"] == RETRYING
    assert type(exc).__name__ in row["last_error"]
    rsps.replace(responses.PATCH, TASK, status=201, json=OK)
    due_now(rt)
    run()
    assert delivery_rows(rt)[0]["state"] == DELIVERED


@pytest.mark.parametrize("code,message,fields", [
    ("FIELD_CUSTOM_VALIDATION_EXCEPTION", "Comments must not mention prices", []),
    ("INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST", "Type: bad value for restricted picklist field: MMS", ["Type"]),
    ("REQUIRED_FIELD_MISSING", "Required fields are missing: [Region__c]", ["Region__c"]),
    ("INVALID_FIELD", "No such column 'Type' on sobject of type Task", []),
])
def test_validation_errors_dead_letter_with_salesforces_message(sf, rsps, code, message, fields):
    rt, post, run = start(sf, rsps)
    rsps.add(responses.PATCH, TASK, status=400, json=[{"message": message, "errorCode": code, "fields": fields}])
    run()
    assert len(calls_to(rsps, "PATCH", "/sobjects/Task/")) == 1  # no retry can help
    row = delivery_rows(rt)[0]
    assert row["state"] == DEAD
    expected = f"Salesforce refused the request (HTTP 400): {code}: {message}"
    if fields:
        expected += f" (fields: {', '.join(fields)})"
    assert row["last_error"] == expected


def test_row_lock_is_transient(sf, rsps):
    rt, post, run = start(sf, rsps, call_retries=1)
    rsps.add(responses.PATCH, TASK, status=400,
             json=[{"message": "unable to obtain exclusive access to this record", "errorCode": "UNABLE_TO_LOCK_ROW"}])
    rt.pipeline.process(rt.store.claim("w", 60)[0])
    assert delivery_rows(rt)[0]["state"] == RETRYING


def test_login_failure_is_retried_with_salesforces_reason(sf, rsps):
    rt, post, run = sf()
    rsps.add(responses.POST, SOAP_LOGIN, status=500, content_type="text/xml", body=(
        '<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" '
        'xmlns:sf="urn:fault.partner.soap.sforce.com"><soapenv:Body><soapenv:Fault><faultcode>INVALID_LOGIN</faultcode>'
        '<detail><sf:LoginFault><sf:exceptionCode>INVALID_LOGIN</sf:exceptionCode><sf:exceptionMessage>Invalid username, '
        'password, security token; or user locked out.</sf:exceptionMessage></sf:LoginFault></detail></soapenv:Fault>'
        '</soapenv:Body></soapenv:Envelope>'))
    post(aircall_payload("mms_received"))
    rt.pipeline.process(rt.store.claim("w", 60)[0])
    row = delivery_rows(rt)[0]
    assert row["state"] == RETRYING
    assert row["last_error"] == ("Salesforce login failed (password): INVALID_LOGIN: "
                                 "Invalid username, password, security token; or user locked out.")
    assert "pw" not in row["last_error"]


def test_usage_near_allocation_parks_status_updates_only(sf, rsps):
    rt, post, run = sf(usage_pause_fraction=0.9)
    add_login(rsps)
    add_search(rsps, [contact("003C", "+1 302 306 3029")])
    url = UPSERT + "abcdSMc6Dc8ea2bc71ab19102c3de4f60ba18aa"
    rsps.add(responses.PATCH, url, status=201, json=OK, headers={"Sforce-Limit-Info": "api-usage=95000/100000"})
    post(aircall_payload("message_sent"))
    run()
    post(aircall_payload("status_delivered"))
    run()
    rows = delivery_rows(rt)
    assert rows[0]["state"] == DELIVERED
    assert rows[1]["state"] == RETRYING and rows[1]["attempts"] == 0
    assert rows[1]["last_error"] == ("rate limited: Salesforce API usage 95000/100000 is near the allocation; "
                                     "status updates paused")
    assert len(calls_to(rsps, "PATCH", "/sobjects/Task/")) == 1
    # New messages are not held back by it.
    rsps.add(responses.PATCH, UPSERT + "abdcSM11da5f0b1", status=201, json=OK,
             headers={"Sforce-Limit-Info": "api-usage=95001/100000"})
    add_search(rsps, [contact("003D", "870-457-5426")])
    post(aircall_payload("sms_received"))
    run()
    rows = delivery_rows(rt)
    assert rows[2]["state"] == DELIVERED
    assert rows[1]["state"] == RETRYING and rows[1]["next_at"] > time.time() + 500

def test_status_updates_held_back_for_usage_go_once_a_fresh_reading_shows_it_fell(sf, rsps):
    rt, post, run = sf(usage_pause_fraction=0.9)
    client = rt.pipeline.writers["salesforce"].client
    add_login(rsps)
    add_search(rsps, [contact("003C", "+1 302 306 3029")])
    rsps.add(responses.PATCH, UPSERT + "abcdSMc6Dc8ea2bc71ab19102c3de4f60ba18aa", status=201,
             json={**OK, "id": "00TTASK1"}, headers={"Sforce-Limit-Info": "api-usage=95000/100000"})
    post(aircall_payload("message_sent"))
    run()
    post(aircall_payload("status_delivered"))
    run()
    assert delivery_rows(rt)[1]["state"] == RETRYING  # held back: usage 95%
    # Still the same figure inside usage_pause_seconds: nothing is asked.
    due_now(rt)
    run()
    assert calls_to(rsps, "GET", "/limits/") == [] and delivery_rows(rt)[1]["state"] == RETRYING
    # usage_pause_seconds later, with no new message to bring a figure, it is read afresh.
    rsps.add(responses.GET, f"{API}/limits/", json={"DailyApiRequests": {"Max": 100000, "Remaining": 99000}})
    rsps.add(responses.PATCH, f"{API}/sobjects/Task/00TTASK1", status=204)
    client.usage_at -= rt.config.salesforce.usage_pause_seconds + 1
    due_now(rt)
    run()
    assert len(calls_to(rsps, "GET", "/limits/")) == 1
    assert delivery_rows(rt)[1]["state"] == DELIVERED
    assert client.usage == (1000, 100000)

