"""POST /api/v1/messages: auth, every MMS rule over the API, idempotency, the send, the CRM log."""
from __future__ import annotations

import pytest

from connector.outbox import OUT_QUEUED, OUT_REJECTED, OUT_SENT
from tests.conftest import aircall_payload
from tests.outbound_support import (
    API_TOKEN, LINE, TO, aircall_message, expect_send, oclient, ort, outbox_rows, send_requests,
    serve_media,
)

AUTH = {"Authorization": f"Bearer {API_TOKEN}"}
MB, KB = 1024 * 1024, 1024


def post(client, body, key=None, headers=AUTH):
    h = dict(headers)
    if key:
        h["Idempotency-Key"] = key
    return client.post("/api/v1/messages", json=body, headers=h)


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": API_TOKEN},
                                     {"Authorization": f"Basic {API_TOKEN}"}])
def test_requires_the_bearer_token(oclient, ort, headers):
    r = post(oclient, {"to": TO, "text": "hi"}, headers=headers)
    assert r.status_code == 401 and r.json["error"] == "missing or invalid bearer token"
    assert outbox_rows(ort) == []


@pytest.mark.parametrize("body,error", [
    ([], "body must be a JSON object"),
    ({"text": "hi"}, "to is required"),
    ({"to": 14155550142}, "to must be a string"),
    ({"to": TO, "media": "https://x/a.png"}, "media must be an array of URL strings"),
    ({"to": TO, "policy": "lenient"}, "policy must be 'partial' or 'strict'"),
    ({"to": TO, "mediaUrl": []}, "unknown field(s): mediaUrl"),
])
def test_malformed_requests_get_400(oclient, ort, body, error):
    r = post(oclient, body)
    assert r.status_code == 400 and r.json["error"] == error
    assert outbox_rows(ort) == []


def test_valid_mms_is_queued_with_its_validation(oclient, ort, httpserver):
    url = serve_media(httpserver, "a.png", "png", 2000)
    r = post(oclient, {"from": LINE, "to": "(415) 555-0142", "text": "hello", "media": [url]}, key="k1")
    assert r.status_code == 202
    assert r.json["id"] == "out_1" and r.json["state"] == "queued" and r.json["to"] == TO
    v = r.json["validation"]
    assert v["ok"] and v["errors"] == [] and v["removed"] == []
    assert v["attachments"] == [{"index": 0, "source": url, "ok": True, "format": "png", "size": 2000,
                                 "error": None, "detail": None}]
    [row] = outbox_rows(ort)
    assert (row.state, row.line, row.line_id, row.media) == (OUT_QUEUED, LINE, "476258", [url])


@pytest.mark.parametrize("case,error", [
    ("eleven", "You can only upload up to 10 files. Please remove some files and try again"),
    ("big_image", "Your file size exceeds the limit of 5 MB. Please reduce the file size and try again"),
    ("big_pdf", "Your file size exceeds the limit of 600 KB. Please reduce the file size and try again"),
    ("total", "Your total file size exceeds the limit of 5 MB. Please reduce the file size and try again"),
    ("format", "Only pdf, jpg, jpeg, png, or gif files are allowed for MMS"),
    ("missing", "Sorry, the problem has occurred. Please try again later"),
    ("ssrf", "Sorry, the problem has occurred. Please try again later"),
])
def test_each_attachment_rule_broken_alone_strict(oclient, ort, httpserver, case, error):
    ok = serve_media(httpserver, "ok.gif", "gif")
    media = {
        "eleven": [ok] * 11,
        "big_image": [serve_media(httpserver, "big.jpg", "jpg", 5 * MB + 1)],
        "big_pdf": [serve_media(httpserver, "doc.pdf", "pdf", 600 * KB + 1)],
        "total": [serve_media(httpserver, f"p{i}.png", "png", 2 * MB) for i in range(3)],
        "format": [serve_media(httpserver, "clip.jpg", "mp4")],
        "missing": [httpserver.url_for("/media/nope.png")],
        "ssrf": ["http://169.254.169.254/latest/meta-data/iam.png"],
    }[case]
    r = post(oclient, {"from": LINE, "to": TO, "text": "t", "media": media, "policy": "strict"})
    assert r.status_code == 422
    assert r.json["error"] == error and r.json["errors"] == [error]
    assert r.json["state"] == "rejected"
    [row] = outbox_rows(ort)
    assert row.state == OUT_REJECTED  # stored (for the idempotency key), never sent


@pytest.mark.parametrize("body,error", [
    ({"from": LINE, "to": "+33612345678"}, "MMS is available only for numbers in the US, Canada, and Australia, "
                                           "so the recipient must be located in one of these countries"),
    ({"from": "+14155550111", "to": TO}, "The line +14155550111 is not MMS capable. "
                                         "Choose a phone number with the SMS MMS badge"),
    ({"from": "+14155559999", "to": TO}, "The line +14155559999 is not set up for sending (outbound.lines)"),
    ({"from": LINE, "to": "123"}, "The recipient 123 is not a valid phone number"),
])
def test_line_and_recipient_rules(oclient, httpserver, body, error):
    r = post(oclient, {**body, "media": [serve_media(httpserver, "a.png", "png")]})
    assert r.status_code == 422 and r.json["errors"] == [error]


def test_partial_policy_sends_the_valid_files_and_reports_the_removed(oclient, ort, httpserver):
    good = serve_media(httpserver, "good.png", "png")
    bad = serve_media(httpserver, "bad.png", "webp")
    r = post(oclient, {"to": TO, "media": [good, bad], "policy": "partial"})
    assert r.status_code == 202
    assert r.json["validation"]["removed"] == [1]
    assert r.json["validation"]["attachments"][1]["error"] == "Only pdf, jpg, jpeg, png, or gif files are allowed for MMS"
    expect_send(httpserver, aircall_message(text=""))
    ort.outbound.run_once()
    assert send_requests(httpserver) == [{"to": TO, "mediaUrl": [good]}]


def test_idempotency_key_same_body_same_result_no_second_send(oclient, ort, httpserver):
    body = {"to": TO, "text": "once"}
    first = post(oclient, body, key="order-42")
    again = post(oclient, body, key="order-42")
    assert first.status_code == again.status_code == 202
    assert again.json["id"] == first.json["id"] and again.headers["Idempotent-Replayed"] == "true"
    expect_send(httpserver, aircall_message(text="once"))
    assert ort.outbound.run_once() == 1
    third = post(oclient, body, key="order-42")
    assert third.json["id"] == first.json["id"] and third.json["state"] == "sent"
    assert ort.outbound.run_once() == 0
    assert send_requests(httpserver) == [{"to": TO, "body": "once"}]
    conflict = post(oclient, {"to": TO, "text": "different"}, key="order-42")
    assert conflict.status_code == 409
    assert len(outbox_rows(ort)) == 1


def test_rejected_request_replays_the_same_422(oclient, ort):
    body = {"to": "+33612345678", "media": ["https://127.0.0.1/x.png"]}
    a, b = post(oclient, body, key="k"), post(oclient, body, key="k")
    assert a.status_code == b.status_code == 422 and a.json == b.json


def test_get_message_state(oclient, ort):
    mid = post(oclient, {"to": TO, "text": "x"}).json["id"]
    r = oclient.get(f"/api/v1/messages/{mid}", headers=AUTH)
    assert r.status_code == 200 and r.json["state"] == "queued"
    assert oclient.get("/api/v1/messages/out_99", headers=AUTH).status_code == 404
    assert oclient.get(f"/api/v1/messages/{mid}").status_code == 401


def test_api_disabled_without_tokens(ort):
    rt = ort.make(outbound={"api_tokens": []})
    r = post(create_client(rt), {"to": TO, "text": "x"})
    assert r.status_code == 503


def create_client(rt):
    from connector.web import create_app
    return create_app(rt.config, rt).test_client()


def test_sent_message_is_logged_once_and_status_updates_the_same_crm_entry(oclient, ort, httpserver):
    url = serve_media(httpserver, "a.png", "png")
    post(oclient, {"to": TO, "text": "Here is the brochure", "media": [url]})
    expect_send(httpserver, aircall_message("SMlog1", text="Here is the brochure"))
    ort.outbound.run_once()
    [row] = outbox_rows(ort)
    assert (row.state, row.provider_message_id) == (OUT_SENT, "SMlog1")

    worker = ort.worker()
    worker.run_once()
    [ev] = ort.store.list_events()
    assert (ev["message_id"], ev["event"], ev["direction"], ev["status"]) == ("SMlog1", "message.sent", "outbound", "pending")
    hs = ev["targets"]["hubspot"]
    assert hs["state"] == "dry-run" and hs["rendered"]["method"] == "POST"
    assert hs["rendered"]["body"]["properties"]["hs_communication_channel_type"] == "SMS"
    assert "Here is the brochure" in hs["rendered"]["body"]["properties"]["hs_communication_body"]
    assert ev["targets"]["salesforce"]["state"] == "dry-run"

    # Aircall's own webhook for the same message: a duplicate, not a second entry.
    sent = aircall_payload("message_sent")
    sent["data"].update(id="SMlog1", status="pending")
    assert oclient.post("/webhooks/aircall", json=sent).json["status"] == "duplicate"
    # Its delivery status: updates the entry we created.
    upd = aircall_payload("status_delivered")
    upd["data"]["id"] = "SMlog1"
    assert oclient.post("/webhooks/aircall", json=upd).json["status"] == "stored"
    worker.run_once()
    events = ort.store.list_events()
    assert [e["status"] for e in events] == ["delivered", "pending"]
    assert events[0]["targets"]["hubspot"]["rendered"]["method"] == "PATCH"
    rec = ort.store.get_record("hubspot:dry-run", "SMlog1")
    assert rec["status"] == "delivered" and rec["object_id"] == "dry-run-SMlog1"
    assert ort.store.get_record("salesforce:dry-run", "SMlog1")["status"] == "delivered"


def test_an_animated_png_is_a_png(oclient, ort, httpserver):
    import media_files as mf
    httpserver.expect_request("/media/sticker.png").respond_with_data(mf.apng(), content_type="image/png")
    url = httpserver.url_for("/media/sticker.png")
    r = post(oclient, {"from": LINE, "to": TO, "media": [url], "policy": "strict"})
    assert r.status_code == 202, r.json
    assert r.json["validation"]["attachments"][0]["format"] == "png"


@pytest.mark.parametrize("kind,size,error", [
    ("pdf", 6 * MB, "Your file size exceeds the limit of 600 KB. Please reduce the file size and try again"),
    ("mp4", 6 * MB, "Only pdf, jpg, jpeg, png, or gif files are allowed for MMS"),
    ("jpg", 6 * MB, "Your file size exceeds the limit of 5 MB. Please reduce the file size and try again"),
])
def test_a_file_past_every_limit_is_told_the_rule_for_its_type(oclient, ort, httpserver, kind, size, error):
    url = serve_media(httpserver, f"big.{kind}", kind, size)
    r = post(oclient, {"from": LINE, "to": TO, "media": [url], "policy": "strict"})
    assert r.status_code == 422 and r.json["errors"] == [error]


def test_fetch_max_bytes_caps_what_is_fetched_for_sending(ort, httpserver):
    from connector.web import create_app
    rt = ort.make(fetch={"allow_http": True, "allow_networks": ["127.0.0.0/8"], "max_bytes": 1 * MB})
    url = serve_media(httpserver, "photo.jpg", "jpg", 4 * MB)
    r = post(create_app(rt.config, rt).test_client(), {"from": LINE, "to": TO, "media": [url], "policy": "strict"})
    assert r.status_code == 422
    assert r.json["errors"] == ["Your file size exceeds the limit of 1 MB. Please reduce the file size and try again"]


def test_sms_to_a_number_written_with_an_extension_goes_to_that_number(oclient, ort, httpserver):
    # CRM phone fields often carry an extension; "415-555-0142 x3" is a San Francisco line.
    r = oclient.post("/api/v1/messages", json={"from": LINE, "to": "415-555-0142 x3", "text": "hi"}, headers=AUTH)
    assert r.status_code == 202, r.json
    expect_send(httpserver)
    ort.outbound.run_once()
    assert [b["to"] for b in send_requests(httpserver)] == ["+14155550142"]


def test_mms_to_a_canadian_number_written_with_an_extension_is_not_refused_for_its_country(oclient, httpserver):
    url = serve_media(httpserver, "a.png", "png", 2000)
    r = oclient.post("/api/v1/messages", json={"from": LINE, "to": "(604) 555-0142 x7", "text": "hi",
                                               "media": [url]}, headers=AUTH)
    assert r.status_code == 202, r.json
    assert r.json["to"] == "+16045550142" and r.json["validation"]["errors"] == []
