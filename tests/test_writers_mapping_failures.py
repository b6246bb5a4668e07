"""A mapping that fails on one message fails that message alone, as a dead letter with the
reason (to replay once the mapping is fixed), never the rest of its batch; and record.*
carries the record a create is linked to."""
from __future__ import annotations

import json

import responses

from connector.crm.base import DeliveryContext, Outcome
from connector.mapping import MappingError
from connector.providers import aircall
from connector.render import default_media_views
from connector.store import DEAD, DELIVERED
from tests.conftest import ROOT, aircall_payload
from tests.hubspot_helpers import hub, live  # noqa: F401 (fixtures)
from tests.sf_fake import API, add_login, add_search, body_of, calls_to, contact
from tests.test_salesforce_writer import UPSERT, delivery_rows, rsps, sf  # noqa: F401 (fixtures)

SF_MAPPING = (ROOT / "mappings" / "salesforce.yaml").read_text()
HS_MAPPING = (ROOT / "mappings" / "hubspot.yaml").read_text()
# Passes `check` (its samples have one preview or none), fails on an MMS with exactly one.
SECOND_PREVIEW = "{% if media_count > 1 %}{{ previews[1].name }}{% endif %}"
REASON = "the mapping cannot render this message: {path}:{at}: entries.inbound.{field}: list object has no element 1"


def mms_with_one_preview() -> dict:
    p = aircall_payload("mms_received")
    p["data"]["media_details"] = [p["data"]["media_details"][0], p["data"]["media_details"][5]]  # jpg + mp4
    return p


def test_salesforce_batch_writes_the_others_and_dead_letters_the_one(sf, rsps, tmp_path):
    path = tmp_path / "salesforce.yaml"
    path.write_text(SF_MAPPING.replace('Description: "{{ body_text }}"',
                                       f'Description: "{SECOND_PREVIEW}{{{{ body_text }}}}"', 1))
    rt, post, run = sf(mapping=str(path))
    add_login(rsps)
    add_search(rsps, [contact("003C", "+1 870 457 5426"), contact("003D", "+1 415 555 0142")])
    rsps.add(responses.PATCH, f"{API}/composite/sobjects/Task/MMS_Message_Id__c", status=200,
             json=[{"id": "00T1", "success": True, "created": True}])
    post(aircall_payload("sms_received"))
    post(mms_with_one_preview())
    run()
    rows = {r["message_id"]: r for r in delivery_rows(rt)}
    assert rows["abdcSM11da5f0b1"]["state"] == DELIVERED
    mms = rows[mms_with_one_preview()["data"]["id"]]
    assert (mms["state"], mms["attempts"]) == (DEAD, 1)
    assert mms["last_error"] == REASON.format(path=path, at="28:18", field="Description")
    [batch] = calls_to(rsps, "PATCH", "/composite/sobjects/")
    assert len(body_of(batch)["records"]) == 1  # the SMS only


def test_hubspot_burst_writes_the_others_and_fails_the_one(live, hub, tmp_path):
    path = tmp_path / "hubspot.yaml"
    path.write_text(HS_MAPPING.replace('hs_communication_body: "{{ body_html }}"',
                                       f'hs_communication_body: "{SECOND_PREVIEW}{{{{ body_html }}}}"', 1))
    hub.add_contact(phone="+18704575426")
    hub.add_contact(phone="+14155550142")
    rt = live(mapping=str(path))
    events = [aircall.parse(aircall_payload("sms_received")), aircall.parse(mms_with_one_preview())]
    items = [(e, DeliveryContext(store=rt.store, config=rt.config, media=default_media_views(e))) for e in events]
    sms, mms = rt.pipeline.writers["hubspot"].deliver_many(items)
    assert isinstance(sms, Outcome) and sms.state == "delivered"
    assert isinstance(mms, MappingError)  # the pipeline dead-letters it with REASON
    assert REASON.format(path=path, at="27:28", field="hs_communication_body").endswith(str(mms))
    assert len(hub.comms) == 1


def test_record_id_is_the_contact_a_create_is_linked_to(sf, rsps, tmp_path):
    path = tmp_path / "salesforce.yaml"
    path.write_text(SF_MAPPING.replace('Description: "{{ body_text }}"',
                                       'Description: "on {{ record.type }} {{ record.id }}"', 1))
    rt, post, run = sf(mapping=str(path))
    add_login(rsps)
    add_search(rsps, [contact("003C", "+1 870 457 5426")])
    rsps.add(responses.PATCH, UPSERT + "abdcSM11da5f0b1", status=201, json={"id": "00T1", "success": True})
    post(aircall_payload("sms_received"))
    run()
    body = body_of(calls_to(rsps, "PATCH", "/sobjects/Task/")[0])
    assert (body["WhoId"], body["Description"]) == ("003C", "on Contact 003C")
    assert json.loads(delivery_rows(rt)[0]["result"])["id"] == "00T1"
