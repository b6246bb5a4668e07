"""The live Salesforce writer end to end: webhook -> inbox -> worker -> the real
simple-salesforce client -> `responses`, asserting what Salesforce receives."""
from __future__ import annotations

import json
from urllib.parse import parse_qs, urlparse

import pytest
import responses
from tenacity import wait_none

from conftest import aircall_payload
from connector.store import DEAD, DELIVERED, RETRYING, SKIPPED, deliveries
from connector.web import create_app
from sf_fake import API, SOAP_LOGIN, add_login, add_search, body_of, calls_to, contact, lead, sosl_of

from sqlalchemy import select

UPSERT = f"{API}/sobjects/Task/MMS_Message_Id__c/"


@pytest.fixture
def rsps():
    with responses.RequestsMock(assert_all_requests_are_fired=False) as r:
        yield r


@pytest.fixture
def sf(make_runtime):
    """(runtime, post(payload), run()) with Salesforce live against the mocks."""
    def make(**section):
        cfg = {"mode": "live", "username": "integration@acme.test", "password": "pw",
               "security_token": "tok", "external_id_field": "MMS_Message_Id__c", **section}
        rt = make_runtime(salesforce=cfg, hubspot={"mode": "off"})
        app = create_app(rt.config, rt).test_client()
        rt.pipeline.writers["salesforce"].client.retry_wait = wait_none()

        def post(payload):
            r = app.post("/webhooks/aircall", json=payload)
            assert r.status_code == 200, r.get_json()
            return r.get_json()

        def run():
            return rt.worker().run_once()
        return rt, post, run
    return make


def due_now(rt):
    """Make retrying deliveries due at once (instead of waiting out their backoff)."""
    with rt.store.engine.begin() as conn:
        conn.execute(deliveries.update().where(deliveries.c.state == RETRYING).values(next_at=0))


def delivery_rows(rt):
    with rt.store.engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(select(deliveries).order_by(deliveries.c.id))]


def test_inbound_mms_becomes_one_completed_task_on_the_contact(sf, rsps):
    rt, post, run = sf()
    add_login(rsps)
    add_search(rsps, [contact("003CONTACT1", "(415) 555-0142")])
    rsps.add(responses.PATCH, UPSERT + "abdcSM77mms0001", status=201,
             json={"id": "00TTASK1", "success": True, "errors": [], "created": True})
    post(aircall_payload("mms_received"))
    run()

    sosl = sosl_of(calls_to(rsps, "GET", "/search/")[0])
    assert sosl == ("FIND {4155550142} IN PHONE FIELDS RETURNING "
                    "Contact(Id, Phone, MobilePhone, HomePhone, OtherPhone, AssistantPhone, CreatedDate), "
                    "Lead(Id, Phone, MobilePhone, CreatedDate WHERE IsConverted = false)")
    [upsert] = calls_to(rsps, "PATCH", "/sobjects/Task/")
    assert upsert.request.headers["Authorization"] == "Bearer SESSION-1"
    body = body_of(upsert)
    assert body == {
        "Subject": "MMS from +14155550142",
        "Description": body["Description"],
        "ActivityDate": "2026-11-20",
        "Status": "Completed",
        "Priority": "Normal",
        "Type": "MMS",
        "TaskSubtype": "Task",
        "WhoId": "003CONTACT1",
    }
    desc = body["Description"]
    assert desc.startswith("MMS received from +14155550142 on line Sales US +14244162288 - Received")
    assert "Photos of the damage <b>attached</b> & a quote" in desc  # plain text, not escaped
    assert "Attachments: 6" in desc
    for name, link in [("front.jpg", "https://media.aircall.example/m/1/front.jpg?X-Amz-Signature=abc"),
                       ("quote.pdf", "https://media.aircall.example/m/1/quote.pdf?X-Amz-Signature=jkl")]:
        assert f"- {name}: {link}" in desc
    assert "- clip.mp4: cannot be received" in desc
    assert desc.endswith("Some media cannot be received due to unsupported format.")
    assert "MMS_Message_Id__c" not in body  # the key travels in the URL only

    [row] = delivery_rows(rt)
    assert row["state"] == DELIVERED
    assert json.loads(row["result"])["id"] == "00TTASK1"
    assert rt.store.get_record("salesforce", "abdcSM77mms0001")["object_id"] == "00TTASK1"
    assert rt.store.get_contact("salesforce", "+14155550142") == {
        "record_type": "Contact", "record_id": "003CONTACT1"}


def test_status_update_of_a_task_deleted_in_salesforce_makes_no_new_task(sf, rsps):
    rt, post, run = sf()
    add_login(rsps)
    mid = "abcdSMc6Dc8ea2bc71ab19102c3de4f60ba18aa"
    rt.store.save_record("salesforce", mid, object_type="Task", object_id="00TOLD", status="sent",
                         data={"link_type": "Contact", "link_id": "003C"})
    # An upsert by the external id would create a Task holding only the status line.
    rsps.add(responses.PATCH, UPSERT + mid, status=201, json={"id": "00TBARE", "success": True, "created": True})
    rsps.add(responses.PATCH, f"{API}/sobjects/Task/00TOLD", status=404,
             json=[{"errorCode": "ENTITY_IS_DELETED", "message": "entity is deleted", "fields": []}])
    post(aircall_payload("status_delivered"))
    run()

    [patch] = calls_to(rsps, "PATCH", "/sobjects/Task/")
    assert patch.request.url == f"{API}/sobjects/Task/00TOLD"
    [row] = delivery_rows(rt)
    assert row["state"] == DEAD
    assert row["last_error"] == "Salesforce refused the request (HTTP 404): ENTITY_IS_DELETED: entity is deleted"
    assert rt.store.get_record("salesforce", mid)["object_id"] == "00TOLD"


def test_status_updates_in_a_burst_name_their_tasks_by_id(sf, rsps):
    rt, post, run = sf()
    add_login(rsps)
    ids = ["m1", "m2"]
    for n, mid in enumerate(ids):
        rt.store.save_record("salesforce", mid, object_type="Task", object_id=f"00TOLD{n}", status="sent",
                             data={"link_type": "Contact", "link_id": "003C"})
        p = aircall_payload("status_delivered")
        p["data"]["id"] = mid
        post(p)
    rsps.add(responses.PATCH, f"{API}/composite/sobjects",
             json=[{"id": f"00TOLD{n}", "success": True, "errors": []} for n in range(2)])
    run()

    [call] = calls_to(rsps, "PATCH", "/composite/sobjects")
    assert call.request.url == f"{API}/composite/sobjects"
    records = body_of(call)["records"]
    assert [(r["id"], r["attributes"]) for r in records] == [("00TOLD0", {"type": "Task"}), ("00TOLD1", {"type": "Task"})]
    assert all("MMS_Message_Id__c" not in r for r in records)
    assert [r["state"] for r in delivery_rows(rt)] == [DELIVERED, DELIVERED]


def test_duplicates_and_status_updates_touch_one_record(sf, rsps):
    rt, post, run = sf()
    add_login(rsps)
    add_search(rsps, [contact("003C", "+1 302 306 3029")])
    url = UPSERT + "abcdSMc6Dc8ea2bc71ab19102c3de4f60ba18aa"
    rsps.add(responses.PATCH, url, status=201, json={"id": "00TOUT", "success": True, "errors": [], "created": True})
    rsps.add(responses.PATCH, f"{API}/sobjects/Task/00TOUT", status=204)  # an update names its record

    sent = aircall_payload("message_sent")
    assert post(sent)["status"] == "stored"
    assert post(sent)["status"] == "duplicate"
    run()
    post(aircall_payload("status_delivered"))
    run()
    late = aircall_payload("message_sent")
    late["data"]["status"] = "sent"  # a late "sent" after "delivered"
    post(late)
    run()

    patches = calls_to(rsps, "PATCH", "/sobjects/Task/")
    assert [c.request.url for c in patches] == [url, f"{API}/sobjects/Task/00TOUT"]
    create, update = body_of(patches[0]), body_of(patches[1])
    assert create["WhoId"] == "003C" and create["Subject"] == "MMS to +13023063029"
    assert "Pending" in create["Description"].splitlines()[0]
    assert update == {"Description": update["Description"]}  # the mapping's status entry only
    assert update["Description"].splitlines()[0].endswith("- Delivered")
    assert len(calls_to(rsps, "GET", "/search/")) == 1  # the contact is remembered
    states = [r["state"] for r in delivery_rows(rt)]
    assert states == [DELIVERED, DELIVERED, DELIVERED]
    assert json.loads(delivery_rows(rt)[2]["result"])["unchanged"] == "record already shows status delivered"
    assert rt.store.get_record("salesforce", "abcdSMc6Dc8ea2bc71ab19102c3de4f60ba18aa")["status"] == "delivered"


def test_contact_wins_over_lead_and_oldest_contact_wins(sf, rsps):
    rt, post, run = sf()
    add_login(rsps)
    add_search(rsps, [lead("00QLEAD", "4155550142", created="2020-01-01T00:00:00.000+0000"),
                      contact("003NEWER", "+1 (415) 555-0142", created="2025-05-01T00:00:00.000+0000"),
                      contact("003OLDER", "415.555.0142", created="2023-05-01T00:00:00.000+0000"),
                      contact("003OTHER", "+1 415 555 0199", created="2001-01-01T00:00:00.000+0000")])
    rsps.add(responses.PATCH, UPSERT + "abdcSM77mms0001", status=201, json={"id": "00T1", "success": True})
    post(aircall_payload("mms_received"))
    run()
    assert body_of(calls_to(rsps, "PATCH", "/sobjects/Task/")[0])["WhoId"] == "003OLDER"


def test_lead_first_when_configured_and_lead_used_when_no_contact(sf, rsps):
    rt, post, run = sf(match={"objects": ["Lead", "Contact"]})
    add_login(rsps)
    add_search(rsps, [contact("003C", "4155550142"), lead("00QL", "(415) 555-0142")])
    rsps.add(responses.PATCH, UPSERT + "abdcSM77mms0001", status=201, json={"id": "00T1", "success": True})
    post(aircall_payload("mms_received"))
    run()
    assert "FIND {4155550142} IN PHONE FIELDS RETURNING Lead(" in sosl_of(calls_to(rsps, "GET", "/search/")[0])
    assert body_of(calls_to(rsps, "PATCH", "/sobjects/Task/")[0])["WhoId"] == "00QL"


def test_unknown_number_skipped_with_reason(sf, rsps):
    rt, post, run = sf()
    add_login(rsps)
    add_search(rsps, [])
    post(aircall_payload("sms_received"))
    run()
    [row] = delivery_rows(rt)
    assert row["state"] == SKIPPED
    assert json.loads(row["result"])["reason"] == (
        "no Contact or Lead has the phone number +18704575426 (salesforce.unknown_number.action is skip)")
    assert not calls_to(rsps, "PATCH", "/sobjects/")
    assert not calls_to(rsps, "POST", "/sobjects/")


@pytest.mark.parametrize("action,sobject,expected", [
    ("create_lead", "Lead", {"LastName": "+18704575426", "Company": "Unknown (+18704575426)",
                             "Phone": "+18704575426"}),
    ("create_contact", "Contact", {"LastName": "+18704575426", "Phone": "+18704575426"}),
])
def test_unknown_number_creates_record_once(sf, rsps, action, sobject, expected):
    # batch_size 1: the two messages go one after the other (a batch shares one lookup anyway).
    rt, post, run = sf(unknown_number={"action": action}, batch_size=1)
    add_login(rsps)
    add_search(rsps, [])
    rsps.add(responses.GET, f"{API}/query/", json={"totalSize": 0, "done": True, "records": []})
    rsps.add(responses.POST, f"{API}/composite/sobjects", status=200,
             json=[{"id": "NEW1", "success": True, "errors": []}])
    rsps.add(responses.PATCH, UPSERT + "abdcSM11da5f0b1", status=201, json={"id": "00T1", "success": True})
    rsps.add(responses.PATCH, UPSERT + "second", status=201, json={"id": "00T2", "success": True})
    post(aircall_payload("sms_received"))
    second = aircall_payload("sms_received")
    second["data"]["id"] = "second"
    post(second)
    run()
    [create] = calls_to(rsps, "POST", "/composite/sobjects")
    assert body_of(create) == {"allOrNone": False, "records": [{"attributes": {"type": sobject}, **expected}]}
    [query] = calls_to(rsps, "GET", "/query/")  # the database, not the lagging index, is asked first
    assert parse_qs(urlparse(query.request.url).query)["q"][0] == (
        f"SELECT Id, Phone FROM {sobject} WHERE Phone IN ('+18704575426')"
        + (" AND IsConverted = false" if sobject == "Lead" else "") + " ORDER BY CreatedDate, Id")
    assert [body_of(c)["WhoId"] for c in calls_to(rsps, "PATCH", "/sobjects/Task/")] == ["NEW1", "NEW1"]
    assert len(calls_to(rsps, "GET", "/search/")) == 1  # the index lags: the created record is remembered
    assert rt.store.get_contact("salesforce", "+18704575426")["record_id"] == "NEW1"


def test_a_number_remembered_as_unknown_under_skip_gets_its_lead_once_the_policy_creates(sf, rsps):
    rt, post, run = sf(unknown_number={"action": "create_lead"})
    rt.store.put_contact("salesforce", "+18704575426", "none", None, 300)  # from while it was skip
    add_login(rsps)
    add_search(rsps, [])
    rsps.add(responses.GET, f"{API}/query/", json={"totalSize": 0, "done": True, "records": []})
    rsps.add(responses.POST, f"{API}/composite/sobjects", json=[{"id": "00QNEW", "success": True, "errors": []}])
    rsps.add(responses.PATCH, UPSERT + "abdcSM11da5f0b1", status=201, json={"id": "00T1", "success": True})
    post(aircall_payload("sms_received"))
    run()
    [row] = delivery_rows(rt)
    assert row["state"] == DELIVERED, row["last_error"]
    assert [body_of(c)["WhoId"] for c in calls_to(rsps, "PATCH", "/sobjects/Task/")] == ["00QNEW"]


def test_another_workers_create_in_progress_waits(sf, rsps):
    rt, post, run = sf(unknown_number={"action": "create_lead"})
    add_login(rsps)
    add_search(rsps, [])
    assert rt.store.reserve_contact("salesforce", "+18704575426", "creating", 120)
    post(aircall_payload("sms_received"))
    rt.pipeline.process(rt.store.claim("w", 60)[0])
    [row] = delivery_rows(rt)
    assert row["state"] == RETRYING
    assert row["last_error"] == "another worker is creating the record for +18704575426"
    assert not calls_to(rsps, "POST", "/composite/sobjects")


def test_lead_created_by_a_lost_attempt_is_reused(sf, rsps):
    rt, post, run = sf(unknown_number={"action": "create_lead"})
    add_login(rsps)
    add_search(rsps, [])  # the search index does not show the new Lead yet
    rsps.add(responses.GET, f"{API}/query/", json={"totalSize": 1, "done": True, "records": [
        {"attributes": {"type": "Lead"}, "Id": "00QEARLIER", "Phone": "+18704575426"}]})
    rsps.add(responses.PATCH, UPSERT + "abdcSM11da5f0b1", status=201, json={"id": "00T1", "success": True})
    post(aircall_payload("sms_received"))
    run()
    assert not calls_to(rsps, "POST", "/composite/sobjects")
    assert body_of(calls_to(rsps, "PATCH", "/sobjects/Task/")[0])["WhoId"] == "00QEARLIER"


def test_deleted_contact_is_forgotten_and_matched_again(sf, rsps):
    rt, post, run = sf()
    add_login(rsps)
    rt.store.put_contact("salesforce", "+14155550142", "Contact", "003MERGED", 3600)
    add_search(rsps, [contact("003SURVIVOR", "(415) 555-0142")])
    url = UPSERT + "abdcSM77mms0001"
    rsps.add(responses.PATCH, url, status=400, json=[{
        "message": "entity is deleted", "errorCode": "ENTITY_IS_DELETED", "fields": []}])
    rsps.add(responses.PATCH, url, status=201, json={"id": "00T1", "success": True})
    post(aircall_payload("mms_received"))
    rt.pipeline.process(rt.store.claim("w", 60)[0])
    assert delivery_rows(rt)[0]["last_error"] == (
        "Contact 003MERGED is no longer usable (Salesforce refused the request (HTTP 400): "
        "ENTITY_IS_DELETED: entity is deleted); matching +14155550142 again")
    due_now(rt)
    run()
    assert [body_of(c)["WhoId"] for c in calls_to(rsps, "PATCH", "/sobjects/Task/")] == ["003MERGED", "003SURVIVOR"]
    assert delivery_rows(rt)[0]["state"] == DELIVERED
    assert rt.store.get_contact("salesforce", "+14155550142")["record_id"] == "003SURVIVOR"


def test_worker_writes_a_burst_with_one_search_and_one_collection(sf, rsps):
    rt, post, run = sf()
    add_login(rsps)
    add_search(rsps, [contact("003A", "(415) 555-0142"), contact("003B", "870-457-5426")])
    rsps.add(responses.PATCH, f"{API}/composite/sobjects/Task/MMS_Message_Id__c", json=[
        {"id": f"00T{i}", "success": True, "errors": [], "created": True} for i in range(3)])
    for i, name in enumerate(["mms_received", "sms_received", "mms_received"]):
        p = aircall_payload(name)
        p["data"]["id"] = f"burst{i}"
        post(p)
    run()
    assert len(calls_to(rsps, "GET", "/search/")) == 1
    [batch] = calls_to(rsps, "PATCH", "/composite/sobjects/")
    records = body_of(batch)["records"]
    assert [(r["MMS_Message_Id__c"], r["WhoId"]) for r in records] == [
        ("burst0", "003A"), ("burst1", "003B"), ("burst2", "003A")]
    assert [r["state"] for r in delivery_rows(rt)] == [DELIVERED] * 3


def test_custom_object_mapping_sets_the_lookup_for_the_matched_type(sf, rsps):
    from conftest import ROOT
    rt, post, run = sf(mapping=str(ROOT / "mappings/examples/salesforce-custom-object.yaml"))
    add_login(rsps)
    add_search(rsps, [lead("00QL", "(870) 457-5426")])
    url = f"{API}/sobjects/MMS_Message__c/MMS_Message_Id__c/abdcSM11da5f0b1"
    rsps.add(responses.PATCH, url, status=201, json={"id": "a01X", "success": True, "created": True})
    post(aircall_payload("sms_received"))
    run()
    [call] = calls_to(rsps, "PATCH", "/sobjects/MMS_Message__c/")
    body = body_of(call)
    assert body["Lead__c"] == "00QL" and "Contact__c" not in body and "WhoId" not in body
    assert body["Direction__c"] == "Inbound"
    assert rt.store.get_record("salesforce", "abdcSM11da5f0b1")["object_type"] == "MMS_Message__c"
