"""Salesforce pieces: SOSL escaping, truncation, auth modes, config errors, the
no-external-id fallback, and the batch path (sObject Collections)."""
from __future__ import annotations

import time

import jwt
import pytest
import responses
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from tenacity import wait_none

from conftest import aircall_payload, base_config
from connector.config import ConfigError, load_config
from connector.crm.base import DeliveryContext, Outcome, PermanentError, TransientError
from connector.crm.salesforce import TRUNCATED, render, truncate
from connector.crm.salesforce_match import build_sosl, escape_sosl
from connector.pipeline.writers import load_mapping
from connector.providers import aircall
from connector.render import default_media_views
from sf_fake import API, TOKEN_URL, add_login, add_search, body_of, calls_to, contact, sosl_of
from test_salesforce_writer import UPSERT, rsps  # noqa: F401  (fixture)


# -- SOSL ---------------------------------------------------------------------------
def test_escape_sosl_escapes_every_reserved_character():
    hostile = 'x} IN ALL FIELDS RETURNING User(Id) //?&|!{}[]()^~*:\\"\'+-'
    escaped = escape_sosl(hostile)
    assert escaped == ('x\\} IN ALL FIELDS RETURNING User\\(Id\\) //\\?\\&\\|\\!\\{\\}\\[\\]\\(\\)'
                       '\\^\\~\\*\\:\\\\\\"\\\'\\+\\-')
    # No reserved character survives unescaped: drop escaped pairs, nothing special is left.
    import re
    assert not set(re.sub(r"\\.", "", escaped)) & set('?&|!{}[]()^~*:\\"\'+-')


def test_sosl_term_is_digits_for_each_number():
    q = build_sosl(["+14155550142", "+447911123456"], ["Contact"])
    assert q.startswith("FIND {4155550142 OR 7911123456} IN PHONE FIELDS RETURNING Contact(")


def test_sosl_term_keeps_the_leading_zero_of_an_italian_number():
    # Reps in Italy type "06 1234 5678": the zero is part of the national number.
    q = build_sosl(["+390612345678"], ["Contact"])
    assert q.startswith("FIND {0612345678} IN PHONE FIELDS")


def test_hostile_phone_never_reaches_the_query(make_runtime, rsps):
    rt = make_runtime(salesforce=live(), hubspot={"mode": "off"})
    writer = rt.pipeline.writers["salesforce"]
    add_login(rsps)
    payload = aircall_payload("sms_received")
    event = aircall.parse(payload)
    event.external = "+1415} RETURNING User(Id, Password)"  # not E.164: cannot be matched
    out = writer.deliver(event, ctx_for(rt, event))
    assert out.state == "skipped"
    assert not calls_to(rsps, "GET", "/search/")


# -- rendering ----------------------------------------------------------------------
def test_truncate_marks_the_cut_and_counts_utf16():
    assert truncate("short", 255) == "short"
    cut = truncate("a" * 40000, 32000)
    assert len(cut) == 32000 and cut.endswith(TRUNCATED)
    emoji = truncate("😀" * 200, 255)  # each emoji is 2 UTF-16 units
    assert len(emoji.encode("utf-16-le")) // 2 <= 255 and emoji.endswith(TRUNCATED)


def test_long_text_truncated_in_subject_and_description(make_runtime, tmp_path, rsps):
    mapping = tmp_path / "sf.yaml"
    mapping.write_text("object: Task\nwho_field: WhoId\nentries:\n  inbound:\n"
                       "    Subject: \"{{ message.text }}\"\n    Description: \"{{ body_text }}\"\n")
    rt = make_runtime(salesforce=live(mapping=str(mapping)), hubspot={"mode": "off"})
    payload = aircall_payload("sms_received")
    payload["data"]["body"] = "word " * 8000
    event = aircall.parse(payload)
    req = render(event, ctx_for(rt, event), "create", load_mapping(rt.config, "salesforce"), who_id="003C")
    assert len(req["body"]["Subject"]) == 255 and req["body"]["Subject"].endswith(TRUNCATED)
    assert len(req["body"]["Description"]) == 32000
    assert req["body"]["Description"].endswith(TRUNCATED)


def test_description_has_download_all_and_links(make_runtime):
    rt = make_runtime(salesforce=live(), hubspot={"mode": "off"})
    event = aircall.parse(aircall_payload("mms_12_attachments"))
    ctx = ctx_for(rt, event, download_all="https://connector.example/media/all/tok")
    desc = render(event, ctx, "create", load_mapping(rt.config, "salesforce"))["body"]["Description"]
    assert "Download all: https://connector.example/media/all/tok" in desc
    assert f"Attachments: {len(event.media)}" in desc
    assert all(m.url in desc for m in event.media if m.content_type in
               ("image/jpeg", "image/png", "image/gif", "application/pdf"))


def test_preview_equals_live_request(make_runtime, rsps):
    rt = make_runtime(salesforce=live(), hubspot={"mode": "off"})
    add_login(rsps)
    add_search(rsps, [contact("003C", "(415) 555-0142")])
    rsps.add(responses.PATCH, UPSERT + "abdcSM77mms0001", status=201, json={"id": "00T1", "success": True})
    event = aircall.parse(aircall_payload("mms_received"))
    ctx = ctx_for(rt, event)
    preview = render(event, ctx, "create", load_mapping(rt.config, "salesforce"), who_id="003C")
    out = rt.pipeline.writers["salesforce"].deliver(event, ctx)
    [call] = calls_to(rsps, "PATCH", "/sobjects/Task/")
    assert call.request.url == "https://acme.my.salesforce.com" + preview["path"]
    assert body_of(call) == preview["body"] == out.rendered["body"]


# -- auth and config ----------------------------------------------------------------
def test_jwt_bearer_login(make_runtime, tmp_path, rsps):
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    (tmp_path / "sf.key").write_bytes(pem)
    rt = make_runtime(salesforce=live(auth="jwt", password="", consumer_key="3MVG9-key",
                                      private_key_file=str(tmp_path / "sf.key")), hubspot={"mode": "off"})
    rsps.add(responses.POST, TOKEN_URL, json={"access_token": "JWT-SESSION",
                                              "instance_url": "https://acme.my.salesforce.com"})
    rsps.add(responses.GET, f"{API}/search/", json={"searchRecords": []})
    client = rt.pipeline.writers["salesforce"].client
    client.call("search/", params={"q": "FIND {1}"})
    form = dict(p.split("=", 1) for p in calls_to(rsps, "POST", TOKEN_URL)[0].request.body.split("&"))
    assert form["grant_type"] == "urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer"
    claims = jwt.decode(form["assertion"], key.public_key(), algorithms=["RS256"],
                        audience="https://login.salesforce.com")
    assert claims["iss"] == "3MVG9-key" and claims["sub"] == "integration@acme.test"
    assert calls_to(rsps, "GET", "/search/")[0].request.headers["Authorization"] == "Bearer JWT-SESSION"


def test_token_auth_with_overridden_http_instance(make_runtime, rsps):
    rt = make_runtime(salesforce=live(auth="token", access_token="TOKEN-1",
                                      instance_url="http://127.0.0.1:9999/"), hubspot={"mode": "off"})
    rsps.add(responses.GET, "http://127.0.0.1:9999/services/data/v59.0/search/", json={"searchRecords": []})
    rt.pipeline.writers["salesforce"].client.call("search/", params={"q": "FIND {1}"})
    assert rsps.calls[0].request.headers["Authorization"] == "Bearer TOKEN-1"


def test_expired_fixed_token_is_a_permanent_error(make_runtime, rsps):
    rt = make_runtime(salesforce=live(auth="token", access_token="TOKEN-1",
                                      instance_url="https://acme.my.salesforce.com"), hubspot={"mode": "off"})
    rsps.add(responses.GET, f"{API}/search/", status=401,
             json=[{"message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID"}])
    with pytest.raises(PermanentError, match="salesforce.access_token expired"):
        rt.pipeline.writers["salesforce"].client.call("search/", params={"q": "FIND {1}"})


@pytest.mark.parametrize("section,error", [
    ({"password": ""}, "salesforce: auth 'password' needs salesforce.password (set them from environment variables)"),
    ({"auth": "jwt", "consumer_key": ""}, "salesforce: auth 'jwt' needs salesforce.consumer_key, "
     "salesforce.private_key or salesforce.private_key_file (set them from environment variables)"),
    ({"unknown_number": {"action": "create"}}, "salesforce.unknown_number.action: Input should be "
     "'skip', 'create_lead' or 'create_contact'"),
    ({"external_id_field": "Bad/Field"}, "salesforce.external_id_field: String should match pattern"),
    ({"match": {"objects": ["Opportunity"]}}, "salesforce.match.objects[0]: Input should be"),
    ({"passwrd": "x"}, "salesforce.passwrd: unknown key"),
])
def test_config_errors_name_the_key(tmp_path, section, error):
    with pytest.raises(ConfigError) as exc:
        load_config(data=base_config(tmp_path, salesforce=live(**section)))
    assert any(e.startswith(error) for e in exc.value.errors), exc.value.errors


# -- without an external id field -----------------------------------------------------
def test_fallback_map_creates_then_updates_by_id(make_runtime, rsps):
    rt = make_runtime(salesforce=live(external_id_field=""), hubspot={"mode": "off"})
    writer = rt.pipeline.writers["salesforce"]
    add_login(rsps)
    add_search(rsps, [contact("003C", "+1 302 306 3029")])
    rsps.add(responses.POST, f"{API}/sobjects/Task/", status=201, json={"id": "00TNEW", "success": True})
    rsps.add(responses.PATCH, f"{API}/sobjects/Task/00TNEW", status=204)
    sent = aircall.parse(aircall_payload("message_sent"))
    assert writer.deliver(sent, ctx_for(rt, sent)).result["id"] == "00TNEW"
    done = aircall.parse(aircall_payload("status_delivered"))
    writer.deliver(done, ctx_for(rt, done))
    assert len(calls_to(rsps, "POST", "/sobjects/Task/")) == 1
    assert "Delivered" in body_of(calls_to(rsps, "PATCH", "/sobjects/Task/00TNEW")[0])["Description"]
    assert rt.store.get_record("salesforce", sent.message_id)["object_id"] == "00TNEW"


def test_fallback_intent_finds_the_record_a_lost_create_made(make_runtime, rsps):
    rt = make_runtime(salesforce=live(external_id_field=""), hubspot={"mode": "off"})
    writer = rt.pipeline.writers["salesforce"]
    add_login(rsps)
    add_search(rsps, [contact("003C", "(415) 555-0142")])
    event = aircall.parse(aircall_payload("mms_received"))
    ctx = ctx_for(rt, event)
    body = render(event, ctx, "create", writer.mapping, who_id="003C")["body"]
    # The worker wrote its intent, created the Task, and died before recording the id.
    rt.store.save_record("salesforce", event.message_id, object_type="Task", object_id=None,
                         status=None, data={"intent_at": time.time() - 5})
    other = {**body, "Id": "00TOTHER", "Description": "another message"}
    rsps.add(responses.GET, f"{API}/query/", json={"totalSize": 2, "done": True, "records": [
        other, {**body, "Id": "00TMADE", "Description": body["Description"].replace("\n", "\r\n")}]})
    out = writer.deliver(event, ctx)
    assert out.result == {"operation": "create", "id": "00TMADE", "recovered": True,
                          "linked_to": {"type": "Contact", "id": "003C", "created": False}}
    assert not calls_to(rsps, "POST", "/sobjects/Task/")
    soql = calls_to(rsps, "GET", "/query/")[0].request.url
    assert "WhoId+%3D+%27003C%27" in soql and "CreatedDate+%3E%3D+" in soql


# -- batches --------------------------------------------------------------------------
def test_deliver_many_one_search_one_collection_per_200(make_runtime, rsps):
    rt = make_runtime(salesforce=live(batch_size=2), hubspot={"mode": "off"})
    writer = rt.pipeline.writers["salesforce"]
    add_login(rsps)
    add_search(rsps, [contact("003A", "(415) 555-0142"), contact("003B", "870-457-5426")])
    results = [
        [{"id": "00T1", "success": True, "errors": [], "created": True},
         {"id": None, "success": False, "errors": [
             {"statusCode": "FIELD_CUSTOM_VALIDATION_EXCEPTION", "message": "No prices", "fields": []}]}],
        [{"id": None, "success": False, "errors": [
            {"statusCode": "UNABLE_TO_LOCK_ROW", "message": "locked", "fields": []}]}],
    ]
    for r in results:
        rsps.add(responses.PATCH, f"{API}/composite/sobjects/Task/MMS_Message_Id__c", json=r)
    items = []
    for i, name in enumerate(["mms_received", "sms_received", "mms_received"]):
        p = aircall_payload(name)
        p["data"]["id"] = f"m{i}"
        ev = aircall.parse(p)
        items.append((ev, ctx_for(rt, ev)))
    out = writer.deliver_many(items)
    assert isinstance(out[0], Outcome) and out[0].result["id"] == "00T1"
    assert isinstance(out[1], PermanentError) and str(out[1]) == (
        "Salesforce refused the record: FIELD_CUSTOM_VALIDATION_EXCEPTION: No prices")
    assert isinstance(out[2], TransientError) and not isinstance(out[2], PermanentError)
    [search] = calls_to(rsps, "GET", "/search/")
    assert sosl_of(search).startswith("FIND {4155550142 OR 8704575426} IN PHONE FIELDS")
    posts = calls_to(rsps, "PATCH", "/composite/sobjects/")
    assert [len(body_of(c)["records"]) for c in posts] == [2, 1]
    first = body_of(posts[0])
    assert first["allOrNone"] is False
    assert first["records"][0]["attributes"] == {"type": "Task"}
    assert first["records"][0]["MMS_Message_Id__c"] == "m0"
    assert first["records"][0]["WhoId"] == "003A" and first["records"][1]["WhoId"] == "003B"
    expected = render(items[0][0], items[0][1], "create", writer.mapping, who_id="003A")["body"]
    assert {k: v for k, v in first["records"][0].items()
            if k not in ("attributes", "MMS_Message_Id__c")} == expected
    assert rt.store.get_record("salesforce", "m0")["object_id"] == "00T1"
    assert rt.store.get_record("salesforce", "m1") is None


def test_new_numbers_in_a_batch_get_their_leads_from_one_lookup_and_one_create(make_runtime, rsps):
    rt = make_runtime(salesforce=live(unknown_number={"action": "create_lead"}), hubspot={"mode": "off"})
    writer = rt.pipeline.writers["salesforce"]
    add_login(rsps)
    add_search(rsps, [])  # none of the three numbers is known
    rsps.add(responses.GET, f"{API}/query/", json={"totalSize": 1, "done": True, "records": [
        {"attributes": {"type": "Lead"}, "Id": "00QLOST", "Phone": "+14155550002"}]})  # an answer lost earlier
    rsps.add(responses.POST, f"{API}/composite/sobjects", json=[
        {"id": "00QNEW0", "success": True, "errors": []},
        {"id": None, "success": False, "errors": [
            {"statusCode": "DUPLICATES_DETECTED", "message": "Use one of these records?", "fields": []}]}])
    rsps.add(responses.PATCH, f"{API}/composite/sobjects/Task/MMS_Message_Id__c", json=[
        {"id": f"00T{i}", "success": True, "errors": [], "created": True} for i in range(2)])
    items = []
    for i in range(3):
        p = aircall_payload("sms_received")
        p["data"].update(id=f"m{i}", external_number=f"+1 415 555 {i:04d}")
        ev = aircall.parse(p)
        items.append((ev, ctx_for(rt, ev)))
    out = writer.deliver_many(items)
    assert isinstance(out[0], Outcome) and isinstance(out[2], Outcome)
    assert isinstance(out[1], PermanentError) and str(out[1]) == (
        "Salesforce refused the record: DUPLICATES_DETECTED: Use one of these records?")
    [query] = calls_to(rsps, "GET", "/query/")
    assert sosl_of(query) == ("SELECT Id, Phone FROM Lead WHERE Phone IN ('+14155550000','+14155550001',"
                              "'+14155550002') AND IsConverted = false ORDER BY CreatedDate, Id")
    [create] = calls_to(rsps, "POST", "/composite/sobjects")
    assert [r["Phone"] for r in body_of(create)["records"]] == ["+14155550000", "+14155550001"]
    assert body_of(create)["records"][0] == {"attributes": {"type": "Lead"}, "LastName": "+14155550000",
                                             "Company": "Unknown (+14155550000)", "Phone": "+14155550000"}
    [tasks] = calls_to(rsps, "PATCH", "/composite/sobjects/Task/")
    assert [r["WhoId"] for r in body_of(tasks)["records"]] == ["00QNEW0", "00QLOST"]
    assert rt.store.get_contact("salesforce", "+14155550000")["record_id"] == "00QNEW0"
    assert rt.store.get_contact("salesforce", "+14155550001") is None  # refused: free to try again


def test_a_create_whose_answer_timed_out_keeps_its_markers_until_the_lookup_can_see(make_runtime, rsps):
    import requests
    rt = make_runtime(salesforce=live(unknown_number={"action": "create_lead"}), hubspot={"mode": "off"})
    writer = rt.pipeline.writers["salesforce"]
    add_login(rsps)
    add_search(rsps, [])
    rsps.add(responses.GET, f"{API}/query/", json={"totalSize": 0, "done": True, "records": []})
    rsps.add(responses.POST, f"{API}/composite/sobjects", body=requests.ReadTimeout("read timed out"))
    p = aircall_payload("sms_received")
    ev = aircall.parse(p)
    [out] = writer.deliver_many([(ev, ctx_for(rt, ev))])
    assert isinstance(out, TransientError)
    # Salesforce may still create the Lead: nobody creates another until the marker expires.
    assert rt.store.get_contact("salesforce", ev.external)["record_type"] == "creating"
    assert len(calls_to(rsps, "POST", "/composite/sobjects")) == 1  # not repeated in the call


# -- helpers --------------------------------------------------------------------------
def live(**more) -> dict:
    return {"mode": "live", "username": "integration@acme.test", "password": "pw",
            "security_token": "tok", "external_id_field": "MMS_Message_Id__c", **more}


def ctx_for(rt, event, download_all: str = "") -> DeliveryContext:
    rt.pipeline.writers["salesforce"].client.retry_wait = wait_none()
    return DeliveryContext(store=rt.store, config=rt.config, media=default_media_views(event),
                           download_all_link=download_all)


def test_create_that_timed_out_is_not_repeated_blindly(make_runtime, rsps):
    import requests
    rt = make_runtime(salesforce=live(external_id_field=""), hubspot={"mode": "off"})
    writer = rt.pipeline.writers["salesforce"]
    add_login(rsps)
    add_search(rsps, [contact("003C", "(415) 555-0142")])
    rsps.add(responses.POST, f"{API}/sobjects/Task/", body=requests.ReadTimeout("read timed out"))
    event = aircall.parse(aircall_payload("mms_received"))
    with pytest.raises(TransientError, match="ReadTimeout"):
        writer.deliver(event, ctx_for(rt, event))
    assert len(calls_to(rsps, "POST", "/sobjects/Task/")) == 1  # a POST may have landed: no in-call repeat
    intent = rt.store.get_record("salesforce", event.message_id)
    assert intent["object_id"] is None and "intent_at" in intent["data"]
    # The retry asks Salesforce first; nothing there, so it creates.
    rsps.add(responses.GET, f"{API}/query/", json={"totalSize": 0, "done": True, "records": []})
    rsps.replace(responses.POST, f"{API}/sobjects/Task/", status=201, json={"id": "00TNEW", "success": True})
    out = writer.deliver(event, ctx_for(rt, event))
    assert out.result["id"] == "00TNEW"
    assert len(calls_to(rsps, "GET", "/query/")) == 1
    assert rt.store.get_record("salesforce", event.message_id) == {
        "object_type": "Task", "object_id": "00TNEW", "status": "received",
        "data": {"link_type": "Contact", "link_id": "003C"}}


def test_person_account_and_account_matching(make_runtime, rsps):
    rt = make_runtime(salesforce=live(match={"objects": ["PersonAccount", "Account"]}), hubspot={"mode": "off"})
    writer = rt.pipeline.writers["salesforce"]
    add_login(rsps)
    add_search(rsps, [
        {"attributes": {"type": "Account"}, "Id": "001BIZ", "Phone": "4155550142", "CreatedDate": "2020",
         "IsPersonAccount": False, "PersonContactId": None},
        {"attributes": {"type": "Account"}, "Id": "001PERSON", "Phone": None, "PersonMobilePhone": "+14155550142",
         "CreatedDate": "2024", "IsPersonAccount": True, "PersonContactId": "003PERSON"},
        {"attributes": {"type": "Account"}, "Id": "001BIZ2", "Phone": "8704575426", "CreatedDate": "2020",
         "IsPersonAccount": False, "PersonContactId": None}])
    rsps.add(responses.PATCH, f"{API}/composite/sobjects/Task/MMS_Message_Id__c", json=[
        {"id": "00T1", "success": True, "errors": []}, {"id": "00T2", "success": True, "errors": []}])
    items = []
    for name in ("mms_received", "sms_received"):
        ev = aircall.parse(aircall_payload(name))
        items.append((ev, ctx_for(rt, ev)))
    writer.deliver_many(items)
    sosl = sosl_of(calls_to(rsps, "GET", "/search/")[0])
    assert sosl.endswith("RETURNING Account(Id, Phone, CreatedDate, PersonMobilePhone, PersonHomePhone, "
                         "PersonOtherPhone, PersonContactId, IsPersonAccount)")
    records = body_of(calls_to(rsps, "PATCH", "/composite/")[0])["records"]
    assert records[0]["WhoId"] == "003PERSON" and "WhatId" not in records[0]
    assert records[1]["WhatId"] == "001BIZ2" and "WhoId" not in records[1]


def test_deliver_many_without_external_id_and_repeated_message(make_runtime, rsps):
    rt = make_runtime(salesforce=live(external_id_field=""), hubspot={"mode": "off"})
    writer = rt.pipeline.writers["salesforce"]
    add_login(rsps)
    add_search(rsps, [contact("003C", "+1 302 306 3029"), contact("003D", "(415) 555-0142")])
    rt.store.save_record("salesforce", "old", object_type="Task", object_id="00TOLD", status="sent")
    rsps.add(responses.POST, f"{API}/composite/sobjects", json=[{"id": "00TNEW", "success": True, "errors": []}])
    rsps.add(responses.PATCH, f"{API}/composite/sobjects", json=[{"id": "00TOLD", "success": True, "errors": []}])
    rsps.add(responses.PATCH, f"{API}/sobjects/Task/00TNEW", status=204)
    status_old = aircall_payload("status_delivered")
    status_old["data"]["id"] = "old"
    items = [aircall.parse(p) for p in (aircall_payload("message_sent"), status_old, aircall_payload("status_delivered"))]
    out = writer.deliver_many([(e, ctx_for(rt, e)) for e in items])
    assert [o.result["operation"] for o in out] == ["create", "update", "update"]
    [create] = calls_to(rsps, "POST", "/composite/sobjects")
    assert body_of(create)["records"][0]["WhoId"] == "003C"
    [update] = calls_to(rsps, "PATCH", "/composite/sobjects")
    assert body_of(update)["records"][0]["id"] == "00TOLD"
    assert set(body_of(update)["records"][0]) == {"attributes", "id", "Description"}
    # The same message's later status waited for its create, then updated that record.
    assert len(calls_to(rsps, "PATCH", "/sobjects/Task/00TNEW")) == 1
    assert rt.store.get_record("salesforce", items[0].message_id)["status"] == "delivered"


def test_default_mapping_marks_a_cut_description(make_runtime):
    rt = make_runtime(salesforce=live(), hubspot={"mode": "off"})
    payload = aircall_payload("sms_received")
    payload["data"]["body"] = "x" * 40000
    event = aircall.parse(payload)
    desc = render(event, ctx_for(rt, event), "create", load_mapping(rt.config, "salesforce"))["body"]["Description"]
    assert len(desc) == 32000 and desc.endswith("x… [truncated]")


def test_login_url_and_instance_url_point_at_a_local_fake_org(make_runtime, rsps):
    from sf_fake import soap_login_ok
    rt = make_runtime(salesforce=live(login_url="http://127.0.0.1:9999", instance_url="http://127.0.0.1:9999"),
                      hubspot={"mode": "off"})
    rsps.add(responses.POST, "http://127.0.0.1:9999/services/Soap/u/59.0", body=soap_login_ok("FAKE"),
             content_type="text/xml")
    rsps.add(responses.GET, "http://127.0.0.1:9999/services/data/v59.0/search/", json={"searchRecords": []})
    rt.pipeline.writers["salesforce"].client.call("search/", params={"q": "FIND {1}"})
    assert [c.request.url.split("?")[0] for c in rsps.calls] == [
        "http://127.0.0.1:9999/services/Soap/u/59.0", "http://127.0.0.1:9999/services/data/v59.0/search/"]
    assert b"<n1:username>integration@acme.test</n1:username>" in rsps.calls[0].request.body.encode()
    assert rsps.calls[1].request.headers["Authorization"] == "Bearer FAKE"


def test_instance_url_needs_a_scheme(tmp_path):
    with pytest.raises(ConfigError) as exc:
        load_config(data=base_config(tmp_path, salesforce=live(instance_url="acme.my.salesforce.com")))
    assert exc.value.errors == ["salesforce.instance_url: must be a base URL such as "
                                "https://acme.my.salesforce.com (http:// only for a local fake org), without a path"]
