"""A create whose answer was lost, then a later event of the same message: one record,
brought up to date, through the real simple-salesforce client."""
from __future__ import annotations

from datetime import datetime, timezone

import pytest
import requests
import responses

from conftest import ROOT, aircall_payload
from connector.crm.base import Outcome, PermanentError, TransientError
from connector.crm.salesforce import render
from connector.crm.salesforce_recovery import INTENT_SLACK_SECONDS
from connector.providers import aircall
from connector.store import DEAD, DELIVERED, RETRYING
from sf_fake import (API, add_login, add_search, body_of, calls_to, contact, existing_record,
                     not_updateable, sosl_of)
from test_salesforce_parts import ctx_for, live
from test_salesforce_writer import UPSERT, delivery_rows, due_now, rsps, sf  # noqa: F401  (fixtures)

SENT_ID = "abcdSMc6Dc8ea2bc71ab19102c3de4f60ba18aa"  # message_sent / status_delivered
FIELDS = "Subject, Description, ActivityDate, Status, Priority, Type, TaskSubtype"


def fallback(make_runtime, rsps):
    """A writer without an external id field; the contact +13023063029 is 003C."""
    rt = make_runtime(salesforce=live(external_id_field=""), hubspot={"mode": "off"})
    add_login(rsps)
    add_search(rsps, [contact("003C", "+13023063029")])
    return rt, rt.pipeline.writers["salesforce"]


def as_stored(rt, writer, event, record_id: str) -> dict:
    """The Task a lost create of ``event`` made, as a query returns it (line breaks as \\r\\n)."""
    body = render(event, ctx_for(rt, event), "create", writer.mapping, who_id="003C")["body"]
    del body["WhoId"]
    return {"attributes": {"type": "Task"}, "Id": record_id, **body,
            "Description": body["Description"].replace("\n", "\r\n")}


def lose_first_create(rsps) -> None:
    """The first POST times out (Salesforce made the Task); a second one would make another."""
    rsps.add(responses.POST, f"{API}/sobjects/Task/", body=requests.ReadTimeout("read timed out"))
    rsps.add(responses.POST, f"{API}/sobjects/Task/", status=201, json={"id": "00TSECOND", "success": True})


def recovery_soql(rt) -> str:
    since = rt.store.get_record("salesforce", SENT_ID)["data"]["intent_at"] - INTENT_SLACK_SECONDS
    since = datetime.fromtimestamp(since, tz=timezone.utc)
    return (f"SELECT Id, {FIELDS} FROM Task WHERE WhoId = '003C' AND CreatedDate >= "
            f"{since:%Y-%m-%dT%H:%M:%SZ} ORDER BY CreatedDate, Id LIMIT 50")


# -- without an external id: the intent remembers what the create sent ------------------
def test_status_before_the_retry_updates_the_task_the_lost_create_made(make_runtime, rsps):
    rt, writer = fallback(make_runtime, rsps)
    sent = aircall.parse(aircall_payload("message_sent"))
    lose_first_create(rsps)
    with pytest.raises(TransientError):  # Salesforce made the Task; its answer was lost
        writer.deliver(sent, ctx_for(rt, sent))
    soql = recovery_soql(rt)
    delivered = aircall.parse(aircall_payload("status_delivered"))  # due before the retry
    made = as_stored(rt, writer, sent, "00TMADE")
    rt.store.save_record("salesforce", "twin", object_type="Task", object_id="00TTWIN", status="sent")
    rsps.add(responses.GET, f"{API}/query/", json={"totalSize": 3, "done": True, "records": [
        {**made, "Id": "00TOTHER", "Description": "another message"},
        {**made, "Id": "00TTWIN"},  # the same text, but another message's record
        made]})
    rsps.add(responses.PATCH, f"{API}/sobjects/Task/00TMADE", status=204)
    out = writer.deliver(delivered, ctx_for(rt, delivered))

    assert out.result == {"operation": "update", "id": "00TMADE", "recovered": True,
                          "linked_to": {"type": "Contact", "id": "003C", "created": False}}
    assert len(calls_to(rsps, "POST", "/sobjects/Task/")) == 1  # no second Task
    [query] = calls_to(rsps, "GET", "/query/")
    assert sosl_of(query) == soql
    [update] = calls_to(rsps, "PATCH", "/sobjects/Task/")
    assert body_of(update) == render(delivered, ctx_for(rt, delivered), "update", writer.mapping)["body"]
    assert body_of(update)["Description"].splitlines()[0].endswith("- Delivered")
    assert rt.store.get_record("salesforce", SENT_ID) == {
        "object_type": "Task", "object_id": "00TMADE", "status": "delivered",
        "data": {"link_type": "Contact", "link_id": "003C"}}
    # message.sent's own retry now finds the record; nothing more reaches Salesforce.
    n = len(rsps.calls)
    again = writer.deliver(sent, ctx_for(rt, sent))
    assert again.result["unchanged"] == "record already shows status delivered"
    assert len(rsps.calls) == n


def test_an_earlier_event_recovering_a_later_create_does_not_turn_it_back(make_runtime, rsps):
    rt, writer = fallback(make_runtime, rsps)
    sent = aircall.parse(aircall_payload("message_sent"))
    delivered = aircall.parse(aircall_payload("status_delivered"))
    # The delivered status came first; its create's answer was lost.
    lose_first_create(rsps)
    with pytest.raises(TransientError):
        writer.deliver(delivered, ctx_for(rt, delivered))
    rsps.add(responses.GET, f"{API}/query/", json={"totalSize": 1, "done": True, "records": [
        as_stored(rt, writer, delivered, "00TMADE")]})
    out = writer.deliver(sent, ctx_for(rt, sent))
    assert out.result["id"] == "00TMADE" and out.result["recovered"] is True
    assert not calls_to(rsps, "PATCH", "/sobjects/")  # "Pending" does not replace "Delivered"
    assert len(calls_to(rsps, "POST", "/sobjects/Task/")) == 1
    assert rt.store.get_record("salesforce", SENT_ID)["status"] == "delivered"


def test_intents_of_a_lost_collections_create_remember_what_it_sent(make_runtime, rsps):
    rt, writer = fallback(make_runtime, rsps)
    sent = aircall.parse(aircall_payload("message_sent"))
    other = aircall.parse(aircall_payload("message_sent"))
    other.message_id = "other"
    rsps.add(responses.POST, f"{API}/composite/sobjects", body=requests.ReadTimeout("read timed out"))
    out = writer.deliver_many([(e, ctx_for(rt, e)) for e in (sent, other)])
    assert all(isinstance(o, TransientError) for o in out)
    [create] = calls_to(rsps, "POST", "/composite/sobjects")
    assert [r["WhoId"] for r in body_of(create)["records"]] == ["003C", "003C"]
    soql = recovery_soql(rt)
    delivered = aircall.parse(aircall_payload("status_delivered"))
    rsps.add(responses.GET, f"{API}/query/", json={"totalSize": 1, "done": True, "records": [
        as_stored(rt, writer, sent, "00TMADE")]})
    rsps.add(responses.PATCH, f"{API}/sobjects/Task/00TMADE", status=204)
    rsps.add(responses.POST, f"{API}/sobjects/Task/", status=201, json={"id": "00TSECOND", "success": True})
    [out] = writer.deliver_many([(delivered, ctx_for(rt, delivered))])
    assert out.result["operation"] == "update" and out.result["id"] == "00TMADE"
    assert sosl_of(calls_to(rsps, "GET", "/query/")[0]) == soql
    [update] = calls_to(rsps, "PATCH", "/sobjects/Task/")
    assert body_of(update) == render(delivered, ctx_for(rt, delivered), "update", writer.mapping)["body"]
    assert not calls_to(rsps, "POST", "/sobjects/Task/")


def test_lost_create_of_a_custom_object_is_found_though_salesforce_spells_numbers_and_datetimes_its_way(
        make_runtime, rsps):
    custom = str(ROOT / "mappings/examples/salesforce-custom-object.yaml")
    rt = make_runtime(salesforce=live(external_id_field="", mapping=custom), hubspot={"mode": "off"})
    writer = rt.pipeline.writers["salesforce"]
    add_login(rsps)
    add_search(rsps, [contact("003C", "(870) 457-5426")])
    made = f"{API}/sobjects/MMS_Message__c/"
    rsps.add(responses.POST, made, body=requests.ReadTimeout("read timed out"))  # made, answer lost
    rsps.add(responses.POST, made, status=201, json={"id": "a01SECOND", "success": True})
    event = aircall.parse(aircall_payload("sms_received"))
    with pytest.raises(TransientError):
        writer.deliver(event, ctx_for(rt, event))

    sent = render(event, ctx_for(rt, event), "create", writer.mapping, who_id="003C")["body"]
    assert sent["Media_Count__c"] == 0 and sent["Sent_At__c"] == "2024-08-02T13:23:09+00:00"
    stored = {**sent, "attributes": {"type": "MMS_Message__c"}, "Id": "a01MADE",
              "Media_Count__c": 0.0,                         # a Number field reads back as 0.0
              "Sent_At__c": "2024-08-02T13:23:09.000+0000",  # a DateTime as SOQL returns it
              "Body__c": sent["Body__c"].replace("\n", "\r\n")}
    del stored["Contact__c"]
    rsps.add(responses.GET, f"{API}/query/", json={"totalSize": 1, "done": True, "records": [stored]})
    out = writer.deliver(event, ctx_for(rt, event))
    assert len(calls_to(rsps, "POST", "/sobjects/MMS_Message__c/")) == 1  # no second record
    assert out.result["id"] == "a01MADE" and out.result["recovered"] is True


# -- with an external id: a retried upsert finds the record and updates it --------------
@pytest.mark.parametrize("mapping,sobject,create_only", [
    (None, "Task", "TaskSubtype"),
    # A custom object's master-detail field cannot be reparented: create-only as well.
    ("mappings/examples/salesforce-custom-object.yaml", "MMS_Message__c", "Contact__c"),
])
def test_retried_upsert_of_a_record_a_lost_answer_made_becomes_its_update(sf, rsps, mapping, sobject,
                                                                          create_only):
    rt, post, run = sf(**({"mapping": str(ROOT / mapping)} if mapping else {}))
    add_login(rsps)
    add_search(rsps, [contact("003A", "+18704575426")])
    url = f"{API}/sobjects/{sobject}/MMS_Message_Id__c/abdcSM11da5f0b1"
    rsps.add(responses.PATCH, url, body=requests.ReadTimeout("read timed out"))  # but created
    rsps.add_callback(responses.PATCH, url, callback=existing_record("00TX", (create_only,)))
    rsps.add(responses.GET, f"{API}/query/", json={"totalSize": 1, "done": True, "records": [
        {"attributes": {"type": sobject}, "Id": "00TX", "MMS_Message_Id__c": "abdcSM11da5f0b1"}]})
    rsps.add(responses.PATCH, f"{API}/sobjects/{sobject}/00TX", status=204)
    post(aircall_payload("sms_received"))
    run()

    event = aircall.parse(aircall_payload("sms_received"))
    ctx = ctx_for(rt, event)
    w = rt.pipeline.writers["salesforce"]
    create = render(event, ctx, "create", w.mapping, who_id="003A", record_type="Contact")["body"]
    update = render(event, ctx, "update", w.mapping)["body"]
    assert create_only in create and create_only not in update
    patches = calls_to(rsps, "PATCH", f"/sobjects/{sobject}/")
    assert [body_of(c) for c in patches] == [create, create, update]  # in-call retry refused, then the update
    assert [c.request.url for c in patches] == [url, url, f"{API}/sobjects/{sobject}/00TX"]
    [query] = calls_to(rsps, "GET", "/query/")
    assert sosl_of(query) == (f"SELECT Id, MMS_Message_Id__c FROM {sobject} "
                              "WHERE MMS_Message_Id__c IN ('abdcSM11da5f0b1')")
    [row] = delivery_rows(rt)
    assert row["state"] == DELIVERED
    assert rt.store.get_record("salesforce", "abdcSM11da5f0b1") == {
        "object_type": sobject, "object_id": "00TX", "status": "received",
        "data": {"link_type": "Contact", "link_id": "003A"}}


def duplicate_of_the_key(record_id: str) -> list[dict]:
    """Salesforce's answer to an upsert racing an insert of the same external id."""
    return [{"errorCode": "DUPLICATE_VALUE", "fields": [], "message": "duplicate value found: "
             f"MMS_Message_Id__c duplicates value on record with id: {record_id}"}]


def test_retried_upsert_refused_as_a_duplicate_of_its_key_becomes_the_update_of_that_record(sf, rsps):
    rt, post, run = sf()
    add_login(rsps)
    add_search(rsps, [contact("003A", "+18704575426")])
    url = UPSERT + "abdcSM11da5f0b1"
    rsps.add(responses.PATCH, url, body=requests.ReadTimeout("read timed out"))  # still being inserted
    rsps.add(responses.PATCH, url, status=400, json=duplicate_of_the_key("00TMADE"))
    rsps.add(responses.GET, f"{API}/query/", json={"totalSize": 1, "done": True, "records": [
        {"attributes": {"type": "Task"}, "Id": "00TMADE", "MMS_Message_Id__c": "abdcSM11da5f0b1"}]})
    rsps.add(responses.PATCH, f"{API}/sobjects/Task/00TMADE", status=204)
    post(aircall_payload("sms_received"))
    run()

    assert [c.request.url for c in calls_to(rsps, "PATCH", "/sobjects/Task/")] == [
        url, url, f"{API}/sobjects/Task/00TMADE"]
    [row] = delivery_rows(rt)
    assert row["state"] == DELIVERED
    assert rt.store.get_record("salesforce", "abdcSM11da5f0b1")["object_id"] == "00TMADE"


def test_a_duplicate_of_the_key_not_yet_readable_is_retried_not_dead_lettered(sf, rsps):
    rt, post, run = sf()
    add_login(rsps)
    add_search(rsps, [contact("003A", "+18704575426")])
    url = UPSERT + "abdcSM11da5f0b1"
    rsps.add(responses.PATCH, url, body=requests.ReadTimeout("read timed out"))
    rsps.add(responses.PATCH, url, status=400, json=duplicate_of_the_key("00TMADE"))
    rsps.add(responses.GET, f"{API}/query/", json={"totalSize": 0, "done": True, "records": []})
    rsps.add(responses.PATCH, url, status=200, json={"id": "00TMADE", "success": True, "errors": [], "created": False})
    post(aircall_payload("sms_received"))
    run()
    [row] = delivery_rows(rt)
    assert row["state"] == RETRYING
    assert row["last_error"] == (
        "Salesforce refused the request (HTTP 400): DUPLICATE_VALUE: duplicate value found: MMS_Message_Id__c "
        "duplicates value on record with id: 00TMADE (an earlier try of this message is still being saved; "
        "trying again)")

    due_now(rt)
    run()  # the upsert now finds the record the first try made
    [row] = delivery_rows(rt)
    assert row["state"] == DELIVERED
    assert rt.store.get_record("salesforce", "abdcSM11da5f0b1")["object_id"] == "00TMADE"


def test_a_collections_upsert_refused_as_a_duplicate_of_the_key_is_retried_alone(make_runtime, rsps):
    rt = make_runtime(salesforce=live(), hubspot={"mode": "off"})
    writer = rt.pipeline.writers["salesforce"]
    add_login(rsps)
    add_search(rsps, [contact("003A", "870-457-5426")])
    dup = {"id": None, "success": False, "errors": [
        {"statusCode": e["errorCode"], "message": e["message"], "fields": e["fields"]}
        for e in duplicate_of_the_key("00T0")]}
    rsps.add(responses.PATCH, f"{API}/composite/sobjects/Task/MMS_Message_Id__c", json=[
        dup, {"id": "00T1", "success": True, "errors": [], "created": True}])
    rsps.add(responses.GET, f"{API}/query/", json={"totalSize": 0, "done": True, "records": []})
    items = []
    for i in range(2):
        p = aircall_payload("sms_received")
        p["data"]["id"] = f"m{i}"
        ev = aircall.parse(p)
        items.append((ev, ctx_for(rt, ev)))
    out = writer.deliver_many(items)
    assert isinstance(out[0], TransientError) and "still being saved" in str(out[0])
    assert isinstance(out[1], Outcome) and out[1].result["id"] == "00T1"


def test_a_create_refused_for_a_field_stays_refused(sf, rsps):
    rt, post, run = sf()
    add_login(rsps)
    add_search(rsps, [contact("003A", "+18704575426")])
    rsps.add(responses.PATCH, UPSERT + "abdcSM11da5f0b1", status=400, json=not_updateable(["TaskSubtype"]))
    rsps.add(responses.GET, f"{API}/query/", json={"totalSize": 0, "done": True, "records": []})
    post(aircall_payload("sms_received"))
    run()
    assert len(calls_to(rsps, "PATCH", "/sobjects/Task/")) == 1  # nothing is dropped to make it fit
    [row] = delivery_rows(rt)
    assert row["state"] == DEAD
    assert row["last_error"].startswith(
        "Salesforce refused the request (HTTP 400): INVALID_FIELD_FOR_INSERT_UPDATE: "
        "Unable to create/update fields: TaskSubtype.")


def test_collections_upsert_refused_for_existing_records_sends_their_updates(make_runtime, rsps):
    rt = make_runtime(salesforce=live(), hubspot={"mode": "off"})
    writer = rt.pipeline.writers["salesforce"]
    add_login(rsps)
    add_search(rsps, [contact("003A", "870-457-5426")])
    refused = {"id": None, "success": False, "errors": [
        {"statusCode": e["errorCode"], "message": e["message"], "fields": e["fields"]}
        for e in not_updateable(["TaskSubtype"])]}
    # m0 was created by a batch whose answer was lost; m2's create itself is refused.
    rsps.add(responses.PATCH, f"{API}/composite/sobjects/Task/MMS_Message_Id__c", json=[
        refused, {"id": "00T1", "success": True, "errors": [], "created": True}, refused])
    rsps.add(responses.PATCH, f"{API}/composite/sobjects", json=[{"id": "00T0", "success": True, "errors": []}])
    rsps.add(responses.GET, f"{API}/query/", json={"totalSize": 1, "done": True, "records": [
        {"attributes": {"type": "Task"}, "Id": "00T0", "MMS_Message_Id__c": "m0"}]})
    items = []
    for i in range(3):
        p = aircall_payload("sms_received")
        p["data"]["id"] = f"m{i}"
        ev = aircall.parse(p)
        items.append((ev, ctx_for(rt, ev)))
    out = writer.deliver_many(items)

    def record(i, operation, **link):
        body = render(items[i][0], items[i][1], operation, writer.mapping, **link)["body"]
        return {"attributes": {"type": "Task"}, **body, "MMS_Message_Id__c": f"m{i}"}
    [first] = calls_to(rsps, "PATCH", "/composite/sobjects/Task/MMS_Message_Id__c")
    [second] = [c for c in calls_to(rsps, "PATCH", "/composite/sobjects") if c.request.url.endswith("/sobjects")]
    assert body_of(first) == {"allOrNone": False, "records": [
        record(i, "create", who_id="003A") for i in range(3)]}
    assert sosl_of(calls_to(rsps, "GET", "/query/")[0]) == (
        "SELECT Id, MMS_Message_Id__c FROM Task WHERE MMS_Message_Id__c IN ('m0','m2')")
    update = render(items[0][0], items[0][1], "update", writer.mapping)["body"]  # named by its Id
    assert body_of(second) == {"allOrNone": False, "records": [{"attributes": {"type": "Task"}, **update, "id": "00T0"}]}
    assert "TaskSubtype" not in body_of(second)["records"][0]
    assert isinstance(out[0], Outcome) and out[0].result == {
        "operation": "update", "id": "00T0", "batched": True, "created": False, "recovered": True,
        "linked_to": {"type": "Contact", "id": "003A", "created": False}}
    assert isinstance(out[1], Outcome) and out[1].result["id"] == "00T1"
    assert isinstance(out[2], PermanentError) and str(out[2]).startswith(
        "Salesforce refused the record: INVALID_FIELD_FOR_INSERT_UPDATE")
    assert rt.store.get_record("salesforce", "m0")["object_id"] == "00T0"
    assert rt.store.get_record("salesforce", "m2") is None


def test_an_external_id_on_several_records_is_a_dead_letter_that_names_them(sf, rsps):
    rt, post, run = sf()
    add_login(rsps)
    add_search(rsps, [contact("003A", "+18704575426")])
    copies = ["/services/data/v59.0/sobjects/Task/00TA", "/services/data/v59.0/sobjects/Task/00TB"]
    rsps.add(responses.PATCH, UPSERT + "abdcSM11da5f0b1", status=300, json=copies)
    post(aircall_payload("sms_received"))
    run()
    [row] = delivery_rows(rt)
    assert row["state"] == DEAD
    assert row["last_error"] == (
        "Salesforce refused the request (HTTP 300): several records carry this external id (mark the field "
        "Unique in Setup, then remove the copies): " + ", ".join(copies))
