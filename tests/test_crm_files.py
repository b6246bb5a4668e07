"""`attachments: crm-files`: media copied into HubSpot Files and Salesforce Files, once,
with the entry linking to the CRM's copies (and, on Salesforce, the copies linked to it)."""
from __future__ import annotations

import base64
import json
import re

import pytest
import responses
from tenacity import wait_none

import media_files as mf
from conftest import TOKEN, aircall_payload
from connector.config import ConfigError, load_config
from connector.pipeline.crm_files import CrmFiles
from connector.store import DEAD, DELIVERED, RETRYING, SKIPPED, crm_files, deliveries
from connector.store import media as media_table
from connector.web import create_app
from hubspot_fake import FakeHubSpot, hubspot_error
from sf_fake import API, INSTANCE, add_login, add_search, body_of, calls_to, contact
from sqlalchemy import select

PUBLIC = "https://crm-links.example.com"
PNG, PDF = mf.png(), mf.pdf()
OPTIONS = {"access": "PUBLIC_NOT_INDEXABLE", "overwrite": False,
           "duplicateValidationStrategy": "RETURN_EXISTING", "duplicateValidationScope": "EXACT_FOLDER"}
MID = "abcdSMc6Dc8ea2bc71ab19102c3de4f60ba18aa"  # the outbound fixtures' message


@pytest.fixture
def provider(httpserver):
    """Aircall's media URLs: two files the CRM can take, one unsupported, one gone."""
    httpserver.expect_request("/m/front.png").respond_with_data(PNG, content_type="image/png")
    httpserver.expect_request("/m/quote.pdf").respond_with_data(PDF, content_type="application/pdf")
    httpserver.expect_request("/m/clip.mp4").respond_with_data(
        b"\x00\x00\x00\x18ftypmp42" + b"\0" * 500, content_type="video/mp4")
    httpserver.expect_request("/m/gone.png").respond_with_data("expired", status=404)
    return httpserver


def with_media(provider, name: str, status: str | None = None) -> dict:
    """An outbound-message fixture whose attachments are the provider's files."""
    payload = aircall_payload(name)
    base = f"http://localhost:{provider.port}/m"
    payload["data"]["media_details"] = [
        {"file_name": n, "file_type": t, "presigned_url": f"{base}/{n}"}
        for n, t in [("front.png", "image/png"), ("quote.pdf", "application/pdf"),
                     ("clip.mp4", "video/mp4"), ("gone.png", "image/png")]]
    if status:
        payload["data"]["status"] = status
    return payload


def media_sections(tmp_path) -> dict:
    return dict(server={"public_base_url": PUBLIC},
                fetch={"allow_http": True, "allow_hosts": ["localhost"]},
                media={"dir": str(tmp_path / "media"), "fetch_attempts": 1, "fetch_retry_wait": 0})


def post(rt, payload) -> None:
    resp = create_app(rt.config, rt).test_client().post("/webhooks/aircall", json=payload)
    assert resp.status_code == 200, resp.get_json()


def due_now(rt) -> None:
    with rt.store.engine.begin() as conn:
        conn.execute(deliveries.update().where(deliveries.c.state == RETRYING).values(next_at=0))


def delivery_states(rt) -> list[str]:
    with rt.store.engine.connect() as conn:
        return [r.state for r in conn.execute(select(deliveries).order_by(deliveries.c.id))]


def kept(rt) -> list[tuple]:
    with rt.store.engine.connect() as conn:
        return [(r.target, r.idx, r.file_id, r.document_id, r.linked_to)
                for r in conn.execute(select(crm_files).order_by(crm_files.c.target, crm_files.c.idx))]


# -- HubSpot -------------------------------------------------------------------------------
@pytest.fixture
def hub_rt(make_runtime, provider, tmp_path):
    hub = FakeHubSpot(provider)  # after the provider's paths: its catch-all answers the rest
    hub.add_contact(phone="+1 302 306 3029", firstname="Dana")

    def make(**hubspot):
        rt = make_runtime(hubspot={"mode": "live", "base_url": hub.url, "access_token": "pat-test",
                                   "retry_initial": 0.001, "retry_max": 0.002, "retries": 2,
                                   "attachments": "crm-files", **hubspot},
                          salesforce={"mode": "off"}, **media_sections(tmp_path))
        rt.pipeline.writers["hubspot"].api.sleep = lambda s: None
        return rt
    return hub, make


def uploads(hub) -> list:
    return hub.calls("POST", "/files/v3/files")


def test_hubspot_entry_links_to_files_uploaded_once_into_the_portal(hub_rt, provider):
    hub, make = hub_rt
    rt = make()
    post(rt, with_media(provider, "message_sent"))
    rt.worker().run_once()

    # Each file the entry can offer went up once, into the configured folder, with options
    # that keep it out of search engines and make a repeated upload return the first copy.
    sent = [(b["folderPath"], json.loads(b["options"]), b["file"]) for _m, _p, b in uploads(hub)]
    assert sent == [("/MMS attachments", OPTIONS, ("front.png", "image/png", PNG)),
                    ("/MMS attachments", OPTIONS, ("quote.pdf", "application/pdf", PDF))]
    assert [f["data"] for f in hub.files.values()] == [PNG, PDF]
    [comm] = hub.comms.values()
    body = comm.properties["hs_communication_body"]
    front = "https://files.hubspot.example/hubfs/123/MMS%20attachments/front.png"
    quote = "https://files.hubspot.example/hubfs/123/MMS%20attachments/quote.pdf"
    assert f'<a href="{front}"><img src="{front}" alt="front.png" width="120"></a>' in body
    assert f'<li><a href="{quote}">quote.pdf</a> (application/pdf, ' in body
    assert "<li>clip.mp4: cannot be received</li>" in body and "<li>gone.png: unavailable</li>" in body
    assert "Some media cannot be received due to unsupported format." in body
    assert "Some media is unavailable due to an error" in body
    # No per-file link to the connector's copies; "Download all" stays the connector's zip.
    assert re.findall(re.escape(PUBLIC) + r"/media/[^\"]+", body) == \
        re.findall(r'<a href="(' + re.escape(PUBLIC) + r'/media/[^"]+)">Download all</a>', body)
    assert len(re.findall(re.escape(PUBLIC), body)) == 1
    ids = list(hub.files)
    assert kept(rt) == [("hubspot", 0, ids[0], None, None), ("hubspot", 1, ids[1], None, None)]

    # The delivery receipt updates the same entry with the same file links: no new upload.
    post(rt, with_media(provider, "status_delivered"))
    rt.worker().run_once()
    assert len(uploads(hub)) == 2
    [comm] = hub.comms.values()
    assert front in comm.properties["hs_communication_body"]
    assert delivery_states(rt) == [DELIVERED, DELIVERED]


def test_hubspot_copies_stay_linked_after_the_connectors_own_copies_expire(hub_rt, provider):
    hub, make = hub_rt
    rt = make()
    post(rt, with_media(provider, "message_sent"))
    rt.worker().run_once()
    with rt.store.engine.begin() as conn:  # retention ran out: the purge deletes the local files
        conn.execute(media_table.update().values(expires_at=1.0))
    assert rt.media.purge() == (2, len(PNG) + len(PDF))

    post(rt, with_media(provider, "status_delivered"))
    rt.worker().run_once()
    [comm] = hub.comms.values()
    body = comm.properties["hs_communication_body"]
    assert body.count("https://files.hubspot.example/hubfs/123/MMS%20attachments/") == 5  # previews (image: href + src), then 2 links
    assert "<li>front.png: unavailable</li>" not in body and "<li>gone.png: unavailable</li>" in body
    assert "Download all" not in body  # nothing left to zip
    assert len(uploads(hub)) == 2


def test_hubspot_failed_upload_retries_before_any_entry_and_a_lost_answer_makes_no_copy(hub_rt, provider):
    hub, make = hub_rt
    rt = make()
    # HubSpot stores the first file but the answer is lost, twice (the call's own retry too).
    hub.fail_next("POST", "/files/v3/files", hubspot_error(502, "Bad gateway", "INTERNAL_ERROR"),
                  times=2, then_run=True)
    post(rt, with_media(provider, "message_sent"))
    rt.worker().run_once()
    assert delivery_states(rt) == [RETRYING]
    assert hub.comms == {} and kept(rt) == []  # nothing written, nothing remembered

    due_now(rt)
    rt.worker().run_once()
    assert delivery_states(rt) == [DELIVERED]
    assert len(uploads(hub)) == 4  # 2 lost answers, then one per file
    assert [f["data"] for f in hub.files.values()] == [PNG, PDF]  # RETURN_EXISTING: no second copy
    assert len(hub.comms) == 1


def test_hubspot_refused_upload_is_dead_lettered_with_hubspots_words(hub_rt, provider):
    hub, make = hub_rt
    rt = make()
    hub.fail_next("POST", "/files/v3/files", hubspot_error(403, "This app lacks the files scope",
                                                          "MISSING_SCOPES"))
    post(rt, with_media(provider, "message_sent"))
    rt.worker().run_once()
    with rt.store.engine.connect() as conn:
        [row] = conn.execute(select(deliveries)).fetchall()
    assert row.state == DEAD
    assert "HubSpot 403 MISSING_SCOPES: This app lacks the files scope" in row.last_error
    assert hub.comms == {}


def from_unknown_number(payload: dict) -> dict:
    payload["data"]["raw_digits"] = "13025550199"  # no contact or lead has it
    return payload


def test_hubspot_message_from_a_number_without_contact_uploads_nothing_under_skip(hub_rt, provider):
    hub, make = hub_rt
    rt = make()  # unknown_number: skip, the default
    post(rt, from_unknown_number(with_media(provider, "message_sent")))
    rt.worker().run_once()

    assert uploads(hub) == [] and hub.files == {}  # no copies left unlinked in the portal
    assert kept(rt) == [] and hub.comms == {}
    assert delivery_states(rt) == [SKIPPED]
    with rt.store.engine.connect() as conn:
        assert conn.execute(select(deliveries.c.result)).scalar() == json.dumps(
            {"reason": "no HubSpot contact has the number +13025550199 (hubspot.unknown_number.action is skip)"})
    # Asked once: the writer read the answer the upload check left in the contact cache.
    assert len(hub.calls("POST", "/crm/v3/objects/contacts/search")) == 1


def test_links_mode_uploads_nothing(hub_rt, provider):
    hub, make = hub_rt
    rt = make(attachments="links")
    assert not isinstance(rt.pipeline.media, CrmFiles)
    post(rt, with_media(provider, "message_sent"))
    rt.worker().run_once()
    assert uploads(hub) == [] and kept(rt) == []
    [comm] = hub.comms.values()
    assert "files.hubspot.example" not in comm.properties["hs_communication_body"]


def test_attachments_mode_typo_names_the_key(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config(data={"aircall": {"webhook_tokens": [TOKEN]}, "salesforce": {"attachments": "crm-file"}})
    assert any(e.startswith("salesforce.attachments:") and "'links' or 'crm-files'" in e
               for e in err.value.errors), err.value.errors


# -- Salesforce ----------------------------------------------------------------------------
UPSERT = f"{API}/sobjects/Task/MMS_Message_Id__c/{MID}"


@pytest.fixture
def rsps():
    with responses.RequestsMock(assert_all_requests_are_fired=False) as r:
        r.add_passthru("http://localhost")  # the provider's media
        yield r


@pytest.fixture
def sf_rt(make_runtime, provider, tmp_path):
    def make(**salesforce):
        rt = make_runtime(salesforce={"mode": "live", "username": "integration@acme.test", "password": "pw",
                                      "security_token": "tok", "external_id_field": "MMS_Message_Id__c",
                                      "attachments": "crm-files", **salesforce},
                          hubspot={"mode": "off"}, **media_sections(tmp_path))
        rt.pipeline.writers["salesforce"].client.retry_wait = wait_none()
        return rt
    return make


# Salesforce answers a query with each record's attributes and its 18-character Id.
DOCUMENTS = {"totalSize": 2, "done": True, "records": [
    {"attributes": {"type": "ContentVersion", "url": f"/services/data/v59.0/sobjects/ContentVersion/068VERSION{n:08d}"},
     "Id": f"068VERSION{n:08d}", "ContentDocumentId": f"069DOCUMENT{n:07d}"} for n in (2, 1)]}


def sf_org(rsps, links: list[dict]) -> None:
    """Login, the contact, two ContentVersions and their documents, the Task upsert and
    the answers to the ContentDocumentLink collections (in turn)."""
    add_login(rsps)
    add_search(rsps, [contact("003C", "+1 302 306 3029")])
    for n in (1, 2):
        rsps.add(responses.POST, f"{API}/sobjects/ContentVersion/", status=201,
                 json={"id": f"068VERSION{n:08d}", "success": True, "errors": []})
    rsps.add(responses.GET, f"{API}/query/", json=DOCUMENTS)
    rsps.add(responses.PATCH, UPSERT, status=201, json={"id": "00TTASK00000000001", "success": True})
    for answer in links:
        rsps.add(responses.POST, f"{API}/composite/sobjects", json=answer)


OK = {"success": True, "errors": []}


def test_salesforce_files_are_uploaded_then_linked_to_the_task_that_links_to_them(sf_rt, rsps, provider):
    rt = sf_rt()
    sf_org(rsps, [[{"id": "06ALINK1", **OK}, {"id": "06ALINK2", **OK}]])
    post(rt, with_media(provider, "message_sent"))
    rt.worker().run_once()

    versions = [body_of(c) for c in calls_to(rsps, "POST", "/sobjects/ContentVersion/")]
    assert versions == [
        {"Title": "front", "PathOnClient": "front.png", "VersionData": base64.b64encode(PNG).decode()},
        {"Title": "quote", "PathOnClient": "quote.pdf", "VersionData": base64.b64encode(PDF).decode()}]
    queries = [c.request.params["q"] for c in calls_to(rsps, "GET", "/query/")]
    assert queries == ["SELECT Id, ContentDocumentId FROM ContentVersion"
                       " WHERE Id IN ('068VERSION00000001', '068VERSION00000002')"]  # one for both
    desc = body_of(calls_to(rsps, "PATCH", "/sobjects/Task/")[0])["Description"]
    assert f"- front.png: {INSTANCE}/lightning/r/ContentDocument/069DOCUMENT0000001/view" in desc
    assert f"- quote.pdf: {INSTANCE}/lightning/r/ContentDocument/069DOCUMENT0000002/view" in desc
    assert "- clip.mp4: cannot be received" in desc and "- gone.png: unavailable" in desc
    assert re.search(r"Download all: " + re.escape(PUBLIC) + r"/media/\S+", desc)
    [link] = calls_to(rsps, "POST", "/composite/sobjects")
    assert body_of(link) == {"allOrNone": False, "records": [
        {"attributes": {"type": "ContentDocumentLink"}, "ContentDocumentId": f"069DOCUMENT000000{n}",
         "LinkedEntityId": "00TTASK00000000001", "ShareType": "V", "Visibility": "AllUsers"} for n in (1, 2)]}
    assert delivery_states(rt) == [DELIVERED]
    assert kept(rt) == [("salesforce", 0, "068VERSION00000001", "069DOCUMENT0000001", "00TTASK00000000001"),
                        ("salesforce", 1, "068VERSION00000002", "069DOCUMENT0000002", "00TTASK00000000001")]


def test_salesforce_link_that_fails_is_retried_alone_without_uploading_again(sf_rt, rsps, provider):
    rt = sf_rt(files_visibility="InternalUsers")
    lock = {"success": False, "errors": [{"statusCode": "UNABLE_TO_LOCK_ROW", "message": "unable to obtain "
                                          "exclusive access to this record", "fields": []}]}
    dup = {"success": False, "errors": [{"statusCode": "DUPLICATE_VALUE", "message": "Document with ID "
                                         "069DOCUMENT0000002 is already linked with the entity", "fields": []}]}
    sf_org(rsps, [[{"id": "06ALINK1", **OK}, lock], [dup]])
    post(rt, with_media(provider, "message_sent"))
    rt.worker().run_once()
    assert delivery_states(rt) == [RETRYING]
    with rt.store.engine.connect() as conn:
        assert "UNABLE_TO_LOCK_ROW" in conn.execute(select(deliveries.c.last_error)).scalar()
    assert [r[4] for r in kept(rt)] == ["00TTASK00000000001", None]

    due_now(rt)
    rt.worker().run_once()
    assert delivery_states(rt) == [DELIVERED]
    assert len(calls_to(rsps, "POST", "/sobjects/ContentVersion/")) == 2  # not uploaded again
    first, second = [body_of(c)["records"] for c in calls_to(rsps, "POST", "/composite/sobjects")]
    assert [r["Visibility"] for r in first] == ["InternalUsers", "InternalUsers"]
    assert second == [{"attributes": {"type": "ContentDocumentLink"}, "ContentDocumentId": "069DOCUMENT0000002",
                       "LinkedEntityId": "00TTASK00000000001", "ShareType": "V", "Visibility": "InternalUsers"}]
    # Already linked (a lost answer the first time) counts as linked.
    assert [r[4] for r in kept(rt)] == ["00TTASK00000000001", "00TTASK00000000001"]


def test_a_long_non_latin_file_name_is_uploaded_under_a_name_the_disk_takes(hub_rt, provider):
    hub, make = hub_rt
    rt = make()
    payload = aircall_payload("message_sent")
    payload["data"]["media_details"] = [{"file_name": "写" * 90 + ".png", "file_type": "image/png",
                                         "presigned_url": f"http://localhost:{provider.port}/m/front.png"}]
    post(rt, payload)
    rt.worker().run_once()
    assert delivery_states(rt) == [DELIVERED]
    [(_m, _p, body)] = uploads(hub)
    name = body["file"][0]
    assert name == "写" * 66 + ".png" and len(name.encode()) <= 255  # 198 bytes of the stem


def test_salesforce_document_read_back_that_fails_never_uploads_the_file_again(sf_rt, rsps, provider):
    rt = sf_rt()
    add_login(rsps)
    add_search(rsps, [contact("003C", "+1 302 306 3029")])
    for n in (1, 2):
        rsps.add(responses.POST, f"{API}/sobjects/ContentVersion/", status=201,
                 json={"id": f"068VERSION{n:08d}", "success": True, "errors": []})
    for _ in range(rt.config.salesforce.call_retries):  # the read-back hits a Salesforce hiccup
        rsps.add(responses.GET, f"{API}/query/", status=503,
                 json=[{"errorCode": "SERVER_UNAVAILABLE", "message": "busy"}])
    # Then the second version has no document yet: the first is kept, the second read again.
    rsps.add(responses.GET, f"{API}/query/", json={**DOCUMENTS, "records": DOCUMENTS["records"][1:]})
    rsps.add(responses.GET, f"{API}/query/", json={**DOCUMENTS, "records": DOCUMENTS["records"][:1]})
    rsps.add(responses.PATCH, UPSERT, status=201, json={"id": "00TTASK00000000001", "success": True})
    rsps.add(responses.POST, f"{API}/composite/sobjects", json=[{"id": "06AL1", **OK}, {"id": "06AL2", **OK}])
    post(rt, with_media(provider, "message_sent"))
    rt.worker().run_once()
    assert delivery_states(rt) == [RETRYING]
    assert kept(rt) == [("salesforce", 0, "068VERSION00000001", None, None),  # kept before the read-back
                        ("salesforce", 1, "068VERSION00000002", None, None)]

    due_now(rt)
    rt.worker().run_once()
    assert delivery_states(rt) == [RETRYING]
    with rt.store.engine.connect() as conn:
        assert "no document yet for uploaded file(s) 068VERSION00000002" in conn.execute(
            select(deliveries.c.last_error)).scalar()
    assert [(r[2], r[3]) for r in kept(rt)] == [("068VERSION00000001", "069DOCUMENT0000001"),
                                               ("068VERSION00000002", None)]
    assert not calls_to(rsps, "PATCH", "/sobjects/Task/")  # no entry before its links are known

    due_now(rt)
    rt.worker().run_once()
    assert delivery_states(rt) == [DELIVERED]
    assert len(calls_to(rsps, "POST", "/sobjects/ContentVersion/")) == 2  # one per attachment
    # The last read asks only for the version still without its document.
    assert calls_to(rsps, "GET", "/query/")[-1].request.params["q"] == (
        "SELECT Id, ContentDocumentId FROM ContentVersion WHERE Id IN ('068VERSION00000002')")
    assert [(r[2], r[3]) for r in kept(rt)] == [("068VERSION00000001", "069DOCUMENT0000001"),
                                               ("068VERSION00000002", "069DOCUMENT0000002")]


def test_salesforce_message_from_a_number_without_record_uploads_nothing_under_skip(sf_rt, rsps, provider):
    rt = sf_rt()  # unknown_number: skip, the default
    add_login(rsps)
    add_search(rsps, [])
    post(rt, from_unknown_number(with_media(provider, "message_sent")))
    rt.worker().run_once()

    assert calls_to(rsps, "POST", "/sobjects/ContentVersion/") == []  # nothing left unlinked in the org
    assert calls_to(rsps, "PATCH", "/sobjects/Task/") == [] and kept(rt) == []
    assert delivery_states(rt) == [SKIPPED]
    with rt.store.engine.connect() as conn:
        assert conn.execute(select(deliveries.c.result)).scalar() == json.dumps(
            {"reason": "no Contact or Lead has the phone number +13025550199 "
                       "(salesforce.unknown_number.action is skip)"})
    assert len(calls_to(rsps, "GET", "/search/")) == 1  # the write read the cached answer


def test_salesforce_number_that_cannot_be_matched_uploads_nothing_even_when_records_are_created(
        sf_rt, rsps, provider):
    rt = sf_rt(unknown_number={"action": "create_contact"})
    add_login(rsps)
    payload = with_media(provider, "message_sent")
    payload["data"]["raw_digits"] = "anonymous"
    post(rt, payload)
    rt.worker().run_once()

    assert calls_to(rsps, "POST", "/sobjects/ContentVersion/") == []
    assert calls_to(rsps, "GET", "/search/") == [] and delivery_states(rt) == [SKIPPED]
