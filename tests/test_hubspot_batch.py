"""deliver_many: a burst in a few HubSpot calls; a 207 fails only the refused records."""
from __future__ import annotations

import copy
import json

from werkzeug import Response

from connector.crm.base import DeliveryContext, Outcome, PermanentError, TransientError
from connector.providers import aircall
from connector.render import default_media_views
from tests.conftest import aircall_payload
from tests.hubspot_fake import hubspot_error
from tests.hubspot_helpers import hub, live  # noqa: F401 (fixtures)

BATCH = "/crm/v3/objects/communications/batch/create"


def items(rt, n: int, contacts: int, fixture: str = "mms_received", start: int = 0, **data) -> list:
    base = aircall_payload(fixture)
    out = []
    for i in range(start, start + n):
        p = copy.deepcopy(base)
        p["data"].update(id=f"burst{i:04d}", raw_digits=f"+1 415 555 {i % contacts:04d}", **data)
        e = aircall.parse(p)
        out.append((e, DeliveryContext(store=rt.store, config=rt.config, media=default_media_views(e))))
    return out


def test_a_burst_is_two_searches_one_label_check_and_two_batch_creates(live, hub):
    formats = ["(415) 555-{:04d}", "+1 415 555 {:04d}", "415555{:04d}", "+1415555{:04d}"]
    ids = [hub.add_contact(**{("mobilephone" if i % 5 == 0 else "phone"): formats[i % 4].format(i)})
           for i in range(60)]
    rt = live()
    writer = rt.pipeline.writers["hubspot"]
    burst = items(rt, 120, 60)
    results = writer.deliver_many(burst)
    assert all(isinstance(r, Outcome) and r.state == "delivered" for r in results), results[:3]
    assert [(m, p) for m, p, _ in hub.requests] == [
        ("POST", "/crm/v3/objects/contacts/search"), ("POST", "/crm/v3/objects/contacts/search"),
        ("GET", "/crm/v4/associations/communications/contacts/labels"),
        ("POST", BATCH), ("POST", BATCH)]
    first = hub.requests[0][2]
    assert first["filterGroups"][0] == {"filters": [{
        "propertyName": "phone", "operator": "IN",
        "values": [f"+1415555{i:04d}" for i in range(50)]}]}
    assert first["filterGroups"][2]["filters"][0]["values"][:2] == ["4155550000", "4155550001"]
    assert len(hub.requests[1][2]["filterGroups"][1]["filters"][0]["values"]) == 10
    creates = [r[2]["inputs"] for r in hub.calls("POST", BATCH)]
    assert [len(c) for c in creates] == [100, 20]
    one = creates[0][7]
    assert one["objectWriteTraceId"] == "burst0007"
    assert one["associations"] == [{"to": {"id": ids[7]}, "types": [
        {"associationCategory": "HUBSPOT_DEFINED", "associationTypeId": 81}]}]
    assert one["properties"]["hs_communication_channel_type"] == "SMS"
    assert {k: v for k, v in one.items() if k != "objectWriteTraceId"} == results[7].rendered["body"]
    assert len(hub.comms) == 120
    assert rt.store.get_record("hubspot", "burst0119")["object_id"] in hub.comms


def test_207_fails_only_the_refused_record(live, hub):
    for i in range(3):
        hub.add_contact(phone=f"+1415555{i:04d}")
    hub.batch_rejects["burst0001"] = "Property values were not valid: hs_timestamp"
    rt = live()
    writer = rt.pipeline.writers["hubspot"]
    results = writer.deliver_many(items(rt, 3, 3))
    assert isinstance(results[0], Outcome) and isinstance(results[2], Outcome)
    assert isinstance(results[1], PermanentError)
    assert str(results[1]) == "HubSpot 207 VALIDATION_ERROR: Property values were not valid: hs_timestamp"
    assert len(hub.comms) == 2
    rec = rt.store.get_record("hubspot", "burst0001")
    assert rec["object_id"] is None and rec["data"] == {}  # refused: a replay creates, no search
    del hub.batch_rejects["burst0001"]
    again = writer.deliver_many(items(rt, 1, 3, start=1))
    assert again[0].state == "delivered" and len(hub.comms) == 3
    assert hub.calls("POST", "/crm/v3/objects/communications/search") == []


def three_sent(live, hub):
    """Three known contacts, a message sent to each and logged in HubSpot: (runtime, writer)."""
    for i in range(3):
        hub.add_contact(phone=f"+1415555{i:04d}")
    rt = live()
    writer = rt.pipeline.writers["hubspot"]
    writer.deliver_many(items(rt, 3, 3, fixture="message_sent"))
    return rt, writer


def test_status_burst_is_one_batch_update_and_a_missing_entry_fails_alone(live, hub):
    rt, writer = three_sent(live, hub)
    gone = rt.store.get_record("hubspot", "burst0002")["object_id"]
    del hub.comms[gone]  # a rep deleted it in HubSpot
    results = writer.deliver_many(items(rt, 3, 3, fixture="status_delivered"))
    [update] = hub.calls("POST", "/crm/v3/objects/communications/batch/update")
    assert [i["id"] for i in update[2]["inputs"]] == [
        rt.store.get_record("hubspot", f"burst{i:04d}")["object_id"] for i in range(3)]
    assert set(update[2]["inputs"][0]) == {"id", "properties"}
    assert "Delivered" in update[2]["inputs"][0]["properties"]["hs_communication_body"]
    assert [type(r).__name__ for r in results] == ["Outcome", "Outcome", "PermanentError"]
    assert "Object not found" in str(results[2])
    assert rt.store.get_record("hubspot", "burst0000")["status"] == "delivered"
    assert rt.store.get_record("hubspot", "burst0002")["status"] == "pending"
    # Late "sent" events change nothing and call nothing.
    calls = len(hub.requests)
    late = writer.deliver_many(items(rt, 2, 3, fixture="status_sent"))
    assert [r.result["operation"] for r in late] == ["none", "none"] and len(hub.requests) == calls


def _answer_update_without(hub, refused: str, error: dict | None):
    """Make the fake's batch update leave ``refused`` out of its results (and name it in
    ``error``, if given), answering 207 as HubSpot does for a partial success."""
    real = hub._batch_update

    def batch_update(body):
        resp = json.loads(real({"inputs": [i for i in body["inputs"] if i["id"] != refused]}).get_data())
        if error:
            resp.update(numErrors=1, errors=[error])
        return Response(json.dumps(resp), status=207, content_type="application/json")
    hub._batch_update = batch_update


def test_a_207_update_error_that_names_its_record_by_id_fails_that_record(live, hub):
    rt, writer = three_sent(live, hub)
    refused = rt.store.get_record("hubspot", "burst0002")["object_id"]
    _answer_update_without(hub, refused, {"status": "error", "category": "VALIDATION_ERROR", "id": refused,
                                          "message": "Property values were not valid", "context": {}})
    results = writer.deliver_many(items(rt, 3, 3, fixture="status_delivered"))
    assert [type(r).__name__ for r in results] == ["Outcome", "Outcome", "PermanentError"]
    assert str(results[2]) == "HubSpot 207 VALIDATION_ERROR: Property values were not valid"
    assert rt.store.get_record("hubspot", "burst0002")["status"] == "pending"
    assert rt.store.get_record("hubspot", "burst0001")["status"] == "delivered"


def test_a_record_a_207_update_answer_does_not_mention_is_retried_not_taken_as_updated(live, hub):
    rt, writer = three_sent(live, hub)
    missing = rt.store.get_record("hubspot", "burst0001")["object_id"]
    _answer_update_without(hub, missing, None)
    results = writer.deliver_many(items(rt, 3, 3, fixture="status_delivered"))
    assert [type(r).__name__ for r in results] == ["Outcome", "TransientError", "Outcome"]
    assert str(results[1]) == f"HubSpot's batch update answer does not show communication {missing} updated"
    assert rt.store.get_record("hubspot", "burst0001")["status"] == "pending"


def test_burst_mixes_skipped_unknown_numbers_and_creates(live, hub):
    hub.add_contact(phone="+14155550000")
    rt = live()
    results = rt.pipeline.writers["hubspot"].deliver_many(items(rt, 2, 2))
    assert results[0].state == "delivered"
    assert results[1].state == "skipped"
    assert results[1].result["reason"].startswith("no HubSpot contact has the number +14155550001")
    assert len(hub.calls("POST", "/crm/v3/objects/communications")) == 1  # one left: single create


def test_ambiguous_batch_failure_is_searched_before_creating_again(live, hub):
    for i in range(2):
        hub.add_contact(phone=f"+1415555{i:04d}")
    hub.fail_next("POST", BATCH, hubspot_error(502, "bad gateway", "INTERNAL_ERROR"), then_run=True)
    rt = live()
    writer = rt.pipeline.writers["hubspot"]
    first = writer.deliver_many(items(rt, 2, 2))
    assert all(isinstance(r, TransientError) for r in first) and len(hub.comms) == 2
    writer.search_lag = 0
    second = writer.deliver_many(items(rt, 2, 2))
    assert [r.state for r in second] == ["delivered", "delivered"]
    assert len(hub.calls("POST", "/crm/v3/objects/communications/search")) == 2
    assert len(hub.comms) == 2 and len(hub.calls("POST", BATCH)) == 1


def test_two_events_of_one_message_in_one_burst_make_one_entry(live, hub):
    hub.add_contact(phone="+13023063029")
    rt = live()
    both = items(rt, 1, 1, fixture="message_sent") + items(rt, 1, 1, fixture="status_delivered")
    for e, _ in both:
        e.external = "+13023063029"
    results = rt.pipeline.writers["hubspot"].deliver_many(both)
    assert [r.result["operation"] for r in results] == ["create", "update"]
    assert len(hub.comms) == 1 and len(hub.calls("PATCH", r"/crm/v3/objects/communications/\d+")) == 1


def test_worker_hands_a_burst_to_deliver_many(live, hub):
    from tests.hubspot_helpers import post, state
    for i in range(3):
        hub.add_contact(phone=f"+1415555{i:04d}")
    rt = live()
    for i in range(6):
        post(rt, "mms_received", id=f"w{i}", raw_digits=f"+1 415 555 {i % 3:04d}")
    rt.worker().run_once()
    assert [(m, p) for m, p, _ in hub.requests] == [
        ("POST", "/crm/v3/objects/contacts/search"),
        ("GET", "/crm/v4/associations/communications/contacts/labels"), ("POST", BATCH)]
    assert [state(rt, f"w{i}")[0]["state"] for i in range(6)] == ["delivered"] * 6
    assert len(hub.comms) == 6


CONTACTS_BATCH = "/crm/v3/objects/contacts/batch/create"


def test_a_burst_from_new_numbers_creates_their_contacts_in_one_batch_call(live, hub):
    known = hub.add_contact(phone="+14155550000")
    rt = live(unknown_number={"action": "create", "firstname": "Texter", "lastname": "{national}"})
    writer = rt.pipeline.writers["hubspot"]
    burst = items(rt, 12, 6)  # six numbers, two messages each; the first is a known contact
    results = writer.deliver_many(burst)
    assert all(isinstance(r, Outcome) and r.state == "delivered" for r in results), results[:3]
    assert [(m, p) for m, p, _ in hub.requests] == [
        ("POST", "/crm/v3/objects/contacts/search"), ("POST", CONTACTS_BATCH),
        ("GET", "/crm/v4/associations/communications/contacts/labels"), ("POST", BATCH)]
    [create] = hub.calls("POST", CONTACTS_BATCH)
    assert create[2]["inputs"][0] == {
        "properties": {"phone": "+14155550001", "firstname": "Texter", "lastname": "(415) 555-0001"},
        "associations": [], "objectWriteTraceId": "+14155550001"}
    assert [i["objectWriteTraceId"] for i in create[2]["inputs"]] == [f"+1415555{i:04d}" for i in range(1, 6)]
    # Every message is on its own number's contact, the known one included.
    by_phone = {c.properties["phone"]: cid for cid, c in hub.contacts.items()}
    assert by_phone["+14155550000"] == known and len(by_phone) == 6
    for (event, _), comm_id in zip(burst, [rt.store.get_record("hubspot", e.message_id)["object_id"] for e, _ in burst]):
        assert hub.comms[comm_id].associations[0][0] == by_phone[event.external]
    # The next burst from the same numbers uses the stored contacts: no search, no create.
    hub.requests.clear()
    writer.deliver_many(items(rt, 6, 6, start=100))
    assert [(m, p) for m, p, _ in hub.requests] == [("POST", BATCH)]


def test_a_refused_contact_create_fails_only_its_messages(live, hub):
    rt = live(unknown_number={"action": "create"})
    writer = rt.pipeline.writers["hubspot"]
    hub.batch_rejects["+14155550001"] = "Property values were not valid: phone"
    results = writer.deliver_many(items(rt, 3, 3))
    assert [type(r).__name__ for r in results] == ["Outcome", "PermanentError", "Outcome"]
    assert "Property values were not valid: phone" in str(results[1])
    assert sorted(c.properties["phone"] for c in hub.contacts.values()) == ["+14155550000", "+14155550002"]
    # Its marker is gone: once the cause is fixed, a replay creates the contact.
    del hub.batch_rejects["+14155550001"]
    [again] = writer.deliver_many(items(rt, 1, 3, start=1))
    assert isinstance(again, Outcome) and again.state == "delivered"
    assert len(hub.contacts) == 3


def test_a_contacts_batch_refused_as_a_whole_is_retried_number_by_number(live, hub):
    rt = live(unknown_number={"action": "create"})
    writer = rt.pipeline.writers["hubspot"]
    hub.fail_next("POST", CONTACTS_BATCH, hubspot_error(400, "Property values were not valid"))
    results = writer.deliver_many(items(rt, 3, 3))
    assert all(isinstance(r, Outcome) for r in results), results
    assert [len(c[2]["inputs"]) for c in hub.calls("POST", CONTACTS_BATCH)] == [3, 1, 1, 1]
    assert len(hub.contacts) == 3


def test_a_contacts_batch_refused_for_a_missing_scope_is_not_resent_number_by_number(live, hub):
    rt = live(unknown_number={"action": "create"})
    hub.fail_next("POST", CONTACTS_BATCH, hubspot_error(
        403, "This app hasn't been granted all required scopes to make this call.", "MISSING_SCOPES"), times=50)
    results = rt.pipeline.writers["hubspot"].deliver_many(items(rt, 20, 20))
    assert all(isinstance(r, PermanentError) and "MISSING_SCOPES" in str(r) for r in results), results[:2]
    assert len(hub.calls("POST", CONTACTS_BATCH)) == 1  # the refusal concerns the app, not an input
    assert rt.store.get_contact("hubspot", "+14155550000") is None  # free to try again later


def test_a_batch_create_refused_for_one_bad_input_writes_the_others(live, hub):
    for i in range(5):
        hub.add_contact(phone=f"+1415555{i:04d}")
    batch_create, create = hub._batch_create, hub._create

    def bad(inp) -> bool:  # HubSpot refuses the whole request for one such input
        return "BAD VALUE" in inp["properties"].get("hs_communication_body", "")
    refused = hubspot_error(400, "Property values were not valid: hs_communication_body")
    hub._batch_create = lambda body, contact=False: (
        refused if not contact and any(map(bad, body["inputs"])) else batch_create(body, contact))
    hub._create = lambda store, body, contact=False: (
        refused if not contact and bad(body) else create(store, body, contact))
    rt = live()
    burst = items(rt, 5, 5)
    burst[1] = items(rt, 1, 5, start=1, body="BAD VALUE")[0]
    results = rt.pipeline.writers["hubspot"].deliver_many(burst)

    assert [type(r).__name__ for r in results] == ["Outcome", "InputRefused", "Outcome", "Outcome", "Outcome"]
    assert "Property values were not valid: hs_communication_body" in str(results[1])
    assert len(hub.comms) == 4
    # Halved until the refused input stood alone: 5 (refused) -> 2 (refused) + 3; the 2 -> 1 + 1.
    sizes = [len(c[2]["inputs"]) for c in hub.calls("POST", BATCH)]
    singles = hub.calls("POST", "/crm/v3/objects/communications")
    assert sizes == [5, 2, 3] and len(singles) == 2
    assert rt.store.get_record("hubspot", "burst0001") == {"object_type": "communications", "object_id": None,
                                                          "status": None, "data": {}}


def senders(rt, *numbers: str) -> list:
    """One inbound SMS from each number."""
    out = []
    for n, sender in enumerate(numbers):
        p = aircall_payload("sms_received")
        p["data"].update(id=f"intl{n}", external_number=sender, raw_digits=sender.lstrip("+"))
        e = aircall.parse(p)
        out.append((e, DeliveryContext(store=rt.store, config=rt.config, media=default_media_views(e))))
    return out


def test_a_burst_sends_each_number_to_its_own_country_s_contact(live, hub):
    # Both numbers' national digits are 2071838750: one IN search finds both contacts.
    uk = hub.add_contact(phone="+44 20 7183 8750")
    us = hub.add_contact(mobilephone="(207) 183-8750")
    rt = live()
    writer = rt.pipeline.writers["hubspot"]
    results = writer.deliver_many(senders(rt, "+12071838750", "+442071838750", "+12071838750"))
    assert all(isinstance(r, Outcome) and r.state == "delivered" for r in results), results
    [search] = hub.calls("POST", "/crm/v3/objects/contacts/search")
    assert search[2]["filterGroups"][0] == {"filters": [
        {"propertyName": "phone", "operator": "IN", "values": ["+12071838750", "+442071838750"]}]}
    assert search[2]["filterGroups"][2] == {"filters": [
        {"propertyName": "hs_searchable_calculated_phone_number", "operator": "EQ", "value": "2071838750"}]}
    assert [r.result["contact_id"] for r in results] == [us, uk, us]
    [create] = hub.calls("POST", BATCH)
    assert [i["associations"][0]["to"]["id"] for i in create[2]["inputs"]] == [us, uk, us]


def test_a_burst_leaves_a_number_no_contact_has_unmatched(live, hub):
    hub.add_contact(phone="+442071838750")
    rt = live()
    writer = rt.pipeline.writers["hubspot"]
    results = writer.deliver_many(senders(rt, "+12071838750", "+442071838750"))
    assert [r.state for r in results] == ["skipped", "delivered"]
    assert results[0].result["reason"].startswith("no HubSpot contact has the number +12071838750")
    assert len(hub.calls("POST", "/crm/v3/objects/contacts/search")) == 1 and len(hub.comms) == 1
