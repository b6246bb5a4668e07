"""A create whose answer was lost, without hubspot.message_id_property: the retry's search
(contact + hs_timestamp + SMS) also finds the customer's other texts of that second."""
from __future__ import annotations

from connector.crm.base import DeliveryContext, TransientError
from connector.providers import aircall
from connector.render import default_media_views
from tests.conftest import aircall_payload
from tests.hubspot_fake import hubspot_error
from tests.hubspot_helpers import hub, live, post, run, state  # noqa: F401 (fixtures)

COMMS = "/crm/v3/objects/communications"
SECOND = "2026-11-20T15:04:04.000Z"  # Aircall's created_at: 1-second precision
STAMP = "1795187044000"
OUT = "abcdSMc6Dc8ea2bc71ab19102c3de4f60ba18aa"


def _bodies(hub) -> dict:
    return {cid: c.properties["hs_communication_body"] for cid, c in hub.comms.items()}


def _lagless(rt):
    rt.pipeline.writers["hubspot"].search_lag = 0
    return rt


def test_a_retried_create_does_not_adopt_another_messages_entry_of_the_same_second(live, hub):
    cid = hub.add_contact(phone="+18704575426")
    rt = _lagless(live())
    post(rt, "sms_received", id="msgA", body="first text", created_at=SECOND)
    run(rt)
    [a] = hub.comms
    hub.fail_next("POST", COMMS, hubspot_error(503, "unavailable", "SERVICE_UNAVAILABLE"))  # B not made
    post(rt, "sms_received", id="msgB", body="second text", created_at=SECOND)
    run(rt)
    run(rt, later=60)
    [search] = hub.calls("POST", f"{COMMS}/search")
    assert search[2] == {"filterGroups": [{"filters": [
        {"propertyName": "associations.contact", "operator": "EQ", "value": cid},
        {"propertyName": "hs_timestamp", "operator": "EQ", "value": STAMP},
        {"propertyName": "hs_communication_channel_type", "operator": "EQ", "value": "SMS"}]}],
        "properties": ["hs_timestamp", "hs_communication_body"], "sorts": [], "limit": 100, "after": "0"}
    assert len(hub.calls("POST", COMMS)) == 3  # A, B refused, B again
    b = rt.store.get_record("hubspot", "msgB")["object_id"]
    assert b != a and rt.store.get_record("hubspot", "msgA")["object_id"] == a
    assert "first text" in _bodies(hub)[a] and "second text" in _bodies(hub)[b]
    [st] = state(rt, "msgB")
    assert st["state"] == "delivered" and st["result"]["operation"] == "create" and st["result"]["id"] == b


def test_the_same_text_twice_in_one_second_still_makes_two_entries(live, hub):
    hub.add_contact(phone="+18704575426")
    rt = _lagless(live())
    post(rt, "sms_received", id="msgA", body="ok", created_at=SECOND)
    run(rt)
    hub.fail_next("POST", COMMS, hubspot_error(503, "unavailable", "SERVICE_UNAVAILABLE"))
    post(rt, "sms_received", id="msgB", body="ok", created_at=SECOND)
    run(rt)
    run(rt, later=60)
    # Same body, but A's entry is mapped to A: B gets its own.
    [a, b] = hub.comms
    assert _bodies(hub)[a] == _bodies(hub)[b]
    assert [rt.store.get_record("hubspot", m)["object_id"] for m in ("msgA", "msgB")] == [a, b]
    assert state(rt, "msgB")[0]["result"]["operation"] == "create"


def _event(rt, message_id: str, body: str):
    payload = aircall_payload("sms_received")
    payload["data"].update(id=message_id, body=body, created_at=SECOND)
    e = aircall.parse(payload)
    return e, DeliveryContext(store=rt.store, config=rt.config, media=default_media_views(e))


def test_two_lost_creates_of_one_second_each_find_their_own_entry(live, hub):
    hub.add_contact(phone="+18704575426")
    rt = live()
    writer = rt.pipeline.writers["hubspot"]
    a, b = _event(rt, "msgA", "first text"), _event(rt, "msgB", "second text")
    # A landed but its answer was lost (unmapped); B was refused by a 503 (not made).
    hub.fail_next("POST", COMMS, hubspot_error(500, "internal", "INTERNAL_ERROR"), then_run=True)
    hub.fail_next("POST", COMMS, hubspot_error(503, "unavailable", "SERVICE_UNAVAILABLE"))
    assert all(isinstance(r, TransientError) for r in [writer.deliver_many([a])[0], writer.deliver_many([b])[0]])
    [comm_a] = hub.comms
    writer.search_lag = 0
    # B first: A's entry is in no one's map, but its body is not B's.
    results = writer.deliver_many([b, a])
    assert [r.result["operation"] for r in results] == ["create", "none"]
    assert len(hub.calls("POST", f"{COMMS}/search")) == 2 and len(hub.comms) == 2
    comm_b = rt.store.get_record("hubspot", "msgB")["object_id"]
    assert rt.store.get_record("hubspot", "msgA")["object_id"] == comm_a != comm_b
    assert "first text" in _bodies(hub)[comm_a] and "second text" in _bodies(hub)[comm_b]


def test_a_status_event_retrying_a_lost_create_adopts_the_entry_the_create_sent(live, hub):
    hub.add_contact(phone="+13023063029")
    rt = live()
    hub.fail_next("POST", COMMS, hubspot_error(500, "internal", "INTERNAL_ERROR"), then_run=True)
    post(rt, "message_sent")
    run(rt)
    [comm] = hub.comms
    sent_body = _bodies(hub)[comm]
    _lagless(rt)
    post(rt, "status_delivered")  # renders another body ("Delivered") than the lost create sent
    run(rt, later=60)
    assert len(hub.comms) == 1 and len(hub.calls("POST", COMMS)) == 1
    assert rt.store.get_record("hubspot", OUT)["object_id"] == comm
    [patch] = hub.calls("PATCH", rf"{COMMS}/{comm}")
    assert patch[2]["properties"]["hs_communication_body"] != sent_body
    assert "Delivered" in _bodies(hub)[comm]


def test_an_intent_written_before_bodies_were_kept_compares_the_rendered_body(live, hub):
    hub.add_contact(phone="+18704575426")
    rt = live()
    hub.fail_next("POST", COMMS, hubspot_error(500, "internal", "INTERNAL_ERROR"), then_run=True)
    post(rt, "sms_received", id="msgA", body="first text", created_at=SECOND)
    run(rt)
    [a] = hub.comms
    rec = rt.store.get_record("hubspot", "msgA")
    del rec["data"]["intent"]["bodies"]  # as an older version wrote it
    rt.store.save_record("hubspot", "msgA", object_type="communications", object_id=None,
                         status=None, data=rec["data"])
    _lagless(rt)
    run(rt, later=60)
    assert len(hub.comms) == 1 and rt.store.get_record("hubspot", "msgA")["object_id"] == a
    assert state(rt, "msgA")[0]["state"] == "delivered"
