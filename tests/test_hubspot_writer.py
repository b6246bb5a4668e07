"""Live HubSpot writer against a fake portal: the requests HubSpot receives."""
from __future__ import annotations

import pytest

from tests.hubspot_helpers import hub, live, post, run, state  # noqa: F401 (fixtures)

SMS = "abdcSM11da5f0b1"
MMS = "abdcSM77mms0001"
OUT = "abcdSMc6Dc8ea2bc71ab19102c3de4f60ba18aa"


def test_inbound_sms_creates_one_communication_on_the_matched_contact(live, hub):
    cid = hub.add_contact(phone="+18704575426", firstname="Ann")
    rt = live()
    post(rt, "sms_received")
    run(rt)
    search = hub.calls("POST", "/crm/v3/objects/contacts/search")
    assert len(search) == 1
    assert {k: v for k, v in search[0][2].items() if k != "filterGroups"} == {
        "properties": ["phone", "mobilephone", "hs_searchable_calculated_phone_number",
                       "hs_searchable_calculated_mobile_number", "createdate", "lastmodifieddate",
                       "associatedcompanyid"],
        "sorts": [], "limit": 100, "after": "0"}
    assert search[0][2]["filterGroups"] == [
        {"filters": [{"propertyName": "phone", "operator": "EQ", "value": "+18704575426"}]},
        {"filters": [{"propertyName": "mobilephone", "operator": "EQ", "value": "+18704575426"}]},
        {"filters": [{"propertyName": "hs_searchable_calculated_phone_number", "operator": "EQ",
                      "value": "8704575426"}]},
        {"filters": [{"propertyName": "hs_searchable_calculated_mobile_number", "operator": "EQ",
                      "value": "8704575426"}]},
    ]
    labels = hub.calls("GET", "/crm/v4/associations/communications/contacts/labels")
    assert len(labels) == 1
    [create] = hub.calls("POST", "/crm/v3/objects/communications")
    body = create[2]
    assert body["associations"] == [{"to": {"id": cid}, "types": [
        {"associationCategory": "HUBSPOT_DEFINED", "associationTypeId": 81}]}]
    props = body["properties"]
    assert props["hs_communication_channel_type"] == "SMS"
    assert props["hs_communication_logged_from"] == "CRM"
    assert props["hs_timestamp"] == "1722604989000"
    assert "Hi, can you send me the brochure?" in props["hs_communication_body"]
    assert "SMS received from +18704575426" in props["hs_communication_body"]
    [st] = state(rt, SMS)
    assert st["state"] == "delivered"
    assert st["result"]["id"] == next(iter(hub.comms))
    rec = rt.store.get_record("hubspot", SMS)
    assert rec["object_id"] == next(iter(hub.comms)) and rec["status"] == "received"


def test_live_request_is_exactly_the_rendered_preview(live, hub):
    hub.add_contact(phone="+14155550142")
    rt = live()
    post(rt, "mms_received")
    run(rt)
    [create] = hub.calls("POST", "/crm/v3/objects/communications")
    [st] = state(rt, MMS)
    assert st["rendered"]["method"] == "POST"
    assert st["rendered"]["path"] == "/crm/v3/objects/communications"
    assert st["rendered"]["body"] == create[2]


def test_mms_body_escapes_phone_text_and_follows_preview_rules(live, hub):
    hub.add_contact(phone="+14155550142")
    rt = live()
    post(rt, "mms_received", body='<script>alert("x")</script> & <b>hi</b>')
    run(rt)
    [create] = hub.calls("POST", "/crm/v3/objects/communications")
    html = create[2]["properties"]["hs_communication_body"]
    assert "<script>" not in html and "<b>hi</b>" not in html
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt; &amp; &lt;b&gt;hi&lt;/b&gt;" in html
    # 6 attachments, 5 supported: 4 previews, "+1 more", the video cannot be received.
    assert html.count("<img ") == 3 and ">quote.pdf</a>" in html
    assert "+1 more" in html
    assert "Some media cannot be received due to unsupported format." in html
    assert "clip.mp4: cannot be received" in html
    assert 'href="https://media.aircall.example/m/1/back.jpg?X-Amz-Signature=mno"' in html


def test_status_updates_patch_the_same_communication_and_never_regress(live, hub):
    hub.add_contact(phone="+13023063029")
    rt = live()
    post(rt, "message_sent")
    run(rt)
    [comm_id] = hub.comms
    post(rt, "status_delivered")
    run(rt)
    post(rt, "status_sent")  # late: must not overwrite "Delivered"
    run(rt)
    post(rt, "message_sent")  # duplicate webhook: stored once, nothing sent
    run(rt)
    assert len(hub.calls("POST", "/crm/v3/objects/communications")) == 1
    patches = hub.calls("PATCH", f"/crm/v3/objects/communications/{comm_id}")
    assert len(patches) == 1
    assert "Delivered" in patches[0][2]["properties"]["hs_communication_body"]
    assert set(patches[0][2]) == {"properties"}
    assert "Delivered" in hub.comms[comm_id].properties["hs_communication_body"]
    assert rt.store.get_record("hubspot", OUT)["status"] == "delivered"
    states = [s["state"] for s in state(rt, OUT)]
    assert states == ["delivered", "delivered", "delivered"]


def test_status_before_create_makes_the_entry_then_the_late_create_changes_nothing(live, hub):
    hub.add_contact(phone="+13023063029")
    rt = live()
    post(rt, "status_delivered")
    run(rt)
    post(rt, "message_sent")
    run(rt)
    assert len(hub.comms) == 1
    assert len(hub.calls("POST", "/crm/v3/objects/communications")) == 1
    assert hub.calls("PATCH", r"/crm/v3/objects/communications/\d+") == []
    assert "Delivered" in next(iter(hub.comms.values())).properties["hs_communication_body"]


@pytest.mark.parametrize("stored", ["(415) 555-0142", "+1 415 555 0142", "4155550142", "+14155550142"])
def test_matching_across_phone_formats(live, hub, stored):
    cid = hub.add_contact(phone=stored)
    rt = live()
    post(rt, "mms_received")
    run(rt)
    [create] = hub.calls("POST", "/crm/v3/objects/communications")
    assert create[2]["associations"][0]["to"]["id"] == cid


def test_mobile_number_matches_too(live, hub):
    cid = hub.add_contact(phone="+33142685300", mobilephone="(415) 555 0142")
    rt = live()
    post(rt, "mms_received")
    run(rt)
    [create] = hub.calls("POST", "/crm/v3/objects/communications")
    assert create[2]["associations"][0]["to"]["id"] == cid


def test_a_lone_hit_on_national_digits_of_another_country_is_not_the_contact(live, hub):
    uk = hub.add_contact(phone="+442071838750", firstname="London")  # calculated: 2071838750
    rt = live(unknown_number={"action": "create", "lastname": "{international}"})
    post(rt, "sms_received", external_number="+12071838750", raw_digits="12071838750")
    run(rt)
    [search] = hub.calls("POST", "/crm/v3/objects/contacts/search")
    assert search[2]["filterGroups"][2] == {"filters": [
        {"propertyName": "hs_searchable_calculated_phone_number", "operator": "EQ", "value": "2071838750"}]}
    [made] = hub.calls("POST", "/crm/v3/objects/contacts/batch/create")
    assert made[2]["inputs"][0]["properties"]["phone"] == "+12071838750"
    [create] = hub.calls("POST", "/crm/v3/objects/communications")
    new = create[2]["associations"][0]["to"]["id"]
    assert new != uk and hub.contacts[new].properties["phone"] == "+12071838750"
    assert state(rt, SMS)[0]["result"]["contact_id"] == new


@pytest.mark.parametrize("sender,expected", [("+12071838750", 0), ("+442071838750", 1)])
def test_same_national_digits_in_two_countries_go_to_the_right_contact(live, hub, sender, expected):
    ids = [hub.add_contact(phone="(207) 183-8750", created_days=5),  # typed without country code
           hub.add_contact(mobilephone="+44 20 7183 8750", created_days=1)]
    rt = live()
    post(rt, "sms_received", external_number=sender, raw_digits=sender.lstrip("+"))
    run(rt)
    [search] = hub.calls("POST", "/crm/v3/objects/contacts/search")
    assert search[2]["properties"][:2] == ["phone", "mobilephone"]
    [create] = hub.calls("POST", "/crm/v3/objects/communications")
    assert create[2]["associations"][0]["to"]["id"] == ids[expected]


def test_custom_match_property_is_checked_with_the_typed_phones(live, hub):
    # Only calculated digits and a custom property are searched: phone is still read to check.
    uk = hub.add_contact(phone="+442071838750")
    us = hub.add_contact(work_phone="+12071838750")
    rt = live(match_properties=["hs_searchable_calculated_phone_number", "work_phone"])
    post(rt, "sms_received", external_number="+12071838750", raw_digits="12071838750")
    run(rt)
    [search] = hub.calls("POST", "/crm/v3/objects/contacts/search")
    assert search[2]["properties"] == ["phone", "mobilephone", "hs_searchable_calculated_phone_number",
                                       "work_phone", "createdate", "lastmodifieddate", "associatedcompanyid"]
    [create] = hub.calls("POST", "/crm/v3/objects/communications")
    assert create[2]["associations"][0]["to"]["id"] == us != uk


@pytest.mark.parametrize("rule,expected", [("oldest", 0), ("newest", 1), ("last_modified", 2)])
def test_several_matches_follow_the_configured_rule(live, hub, rule, expected):
    ids = [hub.add_contact(phone="+14155550142", created_days=1, modified_days=5),
           hub.add_contact(phone="4155550142", created_days=9, modified_days=9),
           hub.add_contact(mobilephone="+14155550142", created_days=3, modified_days=30)]
    rt = live(multiple_matches=rule)
    post(rt, "mms_received")
    run(rt)
    [create] = hub.calls("POST", "/crm/v3/objects/communications")
    assert create[2]["associations"][0]["to"]["id"] == ids[expected]


def test_unknown_number_skip_records_skipped_with_reason(live, hub):
    rt = live()  # default policy: skip
    post(rt, "sms_received")
    run(rt)
    [st] = state(rt, SMS)
    assert st["state"] == "skipped"
    assert st["result"]["reason"] == ("no HubSpot contact has the number +18704575426 "
                                      "(hubspot.unknown_number.action is skip)")
    assert hub.calls("POST", "/crm/v3/objects/communications") == []
    assert hub.calls("POST", "/crm/v3/objects/contacts/batch/create") == []


def test_unknown_number_create_makes_a_named_contact(live, hub):
    rt = live(unknown_number={"action": "create", "firstname": "Texter", "lastname": "{national}"})
    post(rt, "sms_received")
    run(rt)
    [contact] = hub.calls("POST", "/crm/v3/objects/contacts/batch/create")
    assert contact[2] == {"inputs": [{"properties": {"phone": "+18704575426", "firstname": "Texter",
                                                     "lastname": "(870) 457-5426"},
                                      "associations": [], "objectWriteTraceId": "+18704575426"}]}
    new_id = next(iter(hub.contacts))
    [create] = hub.calls("POST", "/crm/v3/objects/communications")
    assert create[2]["associations"][0]["to"]["id"] == new_id
    [st] = state(rt, SMS)
    assert st["state"] == "delivered" and st["result"]["contact_created"] is True


def test_owner_and_company_association(live, hub):
    cid = hub.add_contact(phone="+14155550142", associatedcompanyid="777")
    rt = live(owner_id="42", associate_company=True)
    post(rt, "mms_received")
    run(rt)
    [create] = hub.calls("POST", "/crm/v3/objects/communications")
    assert create[2]["properties"]["hubspot_owner_id"] == "42"
    assert create[2]["associations"] == [
        {"to": {"id": cid}, "types": [{"associationCategory": "HUBSPOT_DEFINED", "associationTypeId": 81}]},
        {"to": {"id": "777"}, "types": [{"associationCategory": "HUBSPOT_DEFINED", "associationTypeId": 87}]},
    ]
    assert len(hub.calls("GET", "/crm/v4/associations/communications/companies/labels")) == 1


def test_missing_association_type_is_a_clear_dead_letter(live, hub):
    hub.add_contact(phone="+14155550142")
    hub.labels["contacts"] = [82]
    rt = live()
    post(rt, "mms_received")
    run(rt)
    [st] = state(rt, MMS)
    assert st["state"] == "dead"
    assert st["error"] == ("hubspot.contact_association_type_id: 81 is not a HUBSPOT_DEFINED "
                           "communications -> contacts association type in this portal (it has: 82 (HUBSPOT_DEFINED))")
    assert hub.calls("POST", "/crm/v3/objects/communications") == []


def test_association_labels_and_contacts_are_looked_up_once(live, hub):
    hub.add_contact(phone="+14155550142")
    rt = live()
    for n in range(3):
        post(rt, "mms_received", id=f"m{n}")
        run(rt)
    assert len(hub.calls("GET", "/crm/v4/associations/communications/contacts/labels")) == 1
    assert len(hub.calls("POST", "/crm/v3/objects/contacts/search")) == 1
    assert len(hub.comms) == 3


def test_deal_association_uses_the_contacts_latest_deal(live, hub):
    cid = hub.add_contact(phone="+14155550142")
    hub.deals[cid] = ["501", "733", "612"]
    rt = live(associate_deal=True)
    post(rt, "mms_received", id="d1")
    post(rt, "mms_received", id="d2")
    run(rt)
    [read] = hub.calls("POST", "/crm/v4/associations/contacts/deals/batch/read")
    assert read[2] == {"inputs": [{"id": cid}]}
    creates = hub.calls("POST", "/crm/v3/objects/communications")
    assert len(creates) == 2
    assert creates[1][2]["associations"][1] == {"to": {"id": "733"}, "types": [
        {"associationCategory": "HUBSPOT_DEFINED", "associationTypeId": 85}]}
    assert len(hub.calls("GET", "/crm/v4/associations/communications/deals/labels")) == 1


def test_preview_command_prints_the_request_live_mode_sends(live, hub, tmp_path):
    import json

    import yaml
    from click.testing import CliRunner

    from connector.cli import main
    from tests.conftest import aircall_payload
    cid = hub.add_contact(phone="+14155550142")
    rt = live(owner_id="42")
    # The media views preview shows (it fetches nothing); everything else must be identical.
    from connector.render import preview_media_views
    rt.pipeline.media = lambda ev, _d: preview_media_views(ev, rt.config.server.public_base_url)
    post(rt, "mms_received")
    run(rt)
    [create] = hub.calls("POST", "/crm/v3/objects/communications")
    cfg = tmp_path / "preview.yaml"
    cfg.write_text(yaml.safe_dump({k: v for k, v in rt.config.model_dump(by_alias=True).items()
                                   if k in ("store", "aircall", "hubspot", "salesforce", "time_zone")}))
    event = tmp_path / "event.json"
    event.write_text(json.dumps(aircall_payload("mms_received")))
    out = CliRunner().invoke(main, ["preview", "--config", str(cfg), "--crm", "hubspot", str(event)])
    assert out.exit_code == 0, out.output
    [shown] = json.loads(out.output)
    assert shown["method"] == "POST" and shown["path"] == "/crm/v3/objects/communications"
    assert shown["body"]["associations"][0]["to"]["id"] == "{contact_id}"
    shown["body"]["associations"][0]["to"]["id"] = cid
    assert shown["body"] == create[2]


def test_a_message_seen_in_dry_run_gets_its_entry_once_live(make_runtime, hub, live):
    hub.add_contact(phone="+1 302 306 3029", firstname="Dana")
    dry = make_runtime(salesforce={"mode": "off"})  # hubspot in dry-run, the default
    post(dry, "message_sent")
    run(dry)
    rt = live()  # the admin switches hubspot.mode to live, same store
    post(rt, "status_delivered")
    run(rt)
    [delivered] = [s for s in state(rt, "abcdSMc6Dc8ea2bc71ab19102c3de4f60ba18aa") if s["state"] == "delivered"]
    assert delivered["result"]["operation"] == "create"  # not an update of the dry-run placeholder
    [comm] = hub.comms.values()
    assert "Delivered" in comm.properties["hs_communication_body"]


@pytest.mark.parametrize("sender, typed", [("+5511912345678", "(11) 91234-5678"),
                                           ("+8613800138000", "138 0013 8000")])
def test_a_contact_saved_without_country_code_is_found_for_a_sender_of_its_country(live, hub, sender, typed):
    cid = hub.add_contact(mobilephone=typed, firstname="Existing")
    # HubSpot's "number without country code", which the search matched on
    hub.contacts[cid].properties["hs_searchable_calculated_mobile_number"] = sender[3:]
    rt = live(unknown_number={"action": "create"})
    post(rt, "sms_received", external_number=sender, raw_digits=sender.lstrip("+"))
    run(rt)
    assert hub.calls("POST", "/crm/v3/objects/contacts/batch/create") == []  # no duplicate contact
    [create] = hub.calls("POST", "/crm/v3/objects/communications")
    assert create[2]["associations"][0]["to"]["id"] == cid


def test_the_line_breaks_of_a_text_show_in_the_html_entry(live, hub):
    hub.add_contact(phone="+18704575426")
    rt = live()
    post(rt, "sms_received", body="Order #123\nStreet 1 & <Co>\r\nSpringfield")
    run(rt)
    [create] = hub.calls("POST", "/crm/v3/objects/communications")
    body = create[2]["properties"]["hs_communication_body"]
    assert "<p>Order #123<br>\nStreet 1 &amp; &lt;Co&gt;<br>\nSpringfield</p>" in body
