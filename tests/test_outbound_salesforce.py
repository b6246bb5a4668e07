"""POST /outbound/salesforce: Outbound Messages in the documented SOAP shape."""
from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from connector.outbox import OUT_FAILED, OUT_QUEUED, OUT_REJECTED, OUT_SENT
from tests.outbound_support import (
    LINE, ORG, expect_send, aircall_message, oclient, ort, outbox_rows, send_requests, serve_media,
)

SAMPLES = Path("/work/shared/platform/salesforce-outbound-message")
if not SAMPLES.exists():  # a copy travels with the tests
    SAMPLES = Path(__file__).parent / "fixtures" / "salesforce"
REQUEST = (SAMPLES / "outbound-message-request.xml").read_text()
ACK = "<Ack>true</Ack>"


def post(client, xml: str, query=""):
    return client.post(f"/outbound/salesforce{query}", data=xml.encode(),
                       headers={"Content-Type": "text/xml; charset=utf-8", "SOAPAction": '""'})


def with_notifications(n: int) -> str:
    """The sample with ``n`` notifications (ids made unique)."""
    block = re.search(r"   <Notification>.*?</Notification>\n", REQUEST, re.S).group(0)
    blocks = "".join(block.replace("04l5e00000Q1w2eAAB", f"04l5e00000N{i:07d}") for i in range(n))
    return re.sub(r"   <Notification>.*</Notification>\n", lambda _: blocks, REQUEST, flags=re.S)


def test_sample_message_is_queued_then_acknowledged(oclient, ort):
    r = post(oclient, REQUEST)
    assert r.status_code == 200 and r.mimetype == "text/xml"
    assert ACK in r.get_data(as_text=True) and "http://soap.sforce.com/2005/09/outbound" in r.get_data(as_text=True)
    rows = outbox_rows(ort)
    assert [(m.state, m.source, m.line, m.recipient) for m in rows] == [
        (OUT_QUEUED, "salesforce", LINE, "+14155550142"), (OUT_QUEUED, "salesforce", LINE, "+14155550199")]
    assert rows[0].text == "Your order has shipped & is on its way."
    assert rows[0].media == ["https://files.example.com/mms/label-123.jpg"] and not rows[0].validated
    assert rows[1].media == [] and rows[1].text == "Reminder: appointment tomorrow at 10am."


def test_redelivered_message_is_acknowledged_and_queued_once(oclient, ort):
    assert ACK in post(oclient, REQUEST).get_data(as_text=True)
    assert ACK in post(oclient, REQUEST).get_data(as_text=True)
    assert len(outbox_rows(ort)) == 2


def test_wrong_organization_is_403_and_stores_nothing(oclient, ort):
    r = post(oclient, REQUEST.replace(ORG, "00D000000000001AAA"))
    assert r.status_code == 403 and "OrganizationId" in r.get_data(as_text=True)
    assert ACK not in r.get_data(as_text=True) and outbox_rows(ort) == []


def test_fifteen_character_org_id_matches(oclient, ort):
    assert post(oclient, REQUEST.replace(ORG, ORG[:15])).status_code == 200


def test_one_hundred_notifications(oclient, ort):
    r = post(oclient, with_notifications(100))
    assert r.status_code == 200 and ACK in r.get_data(as_text=True)
    assert len(outbox_rows(ort)) == 100
    r = post(oclient, with_notifications(101))
    assert r.status_code == 400 and len(outbox_rows(ort)) == 100


def test_xml_bomb_is_refused(oclient, ort):
    bomb = ('<?xml version="1.0"?>\n<!DOCTYPE lolz [<!ENTITY lol "lol">'
            '<!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">'
            '<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]>\n'
            + REQUEST.split("?>", 1)[1].replace("Your order has shipped", "&lol3;"))
    r = post(oclient, bomb)
    assert r.status_code == 400 and "DTD" in r.get_data(as_text=True)
    assert outbox_rows(ort) == []


def test_external_entity_is_refused(oclient, ort):
    xxe = ('<?xml version="1.0"?>\n<!DOCTYPE x [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>\n'
           + REQUEST.split("?>", 1)[1].replace("Your order has shipped", "&xxe;"))
    assert post(oclient, xxe).status_code == 400 and outbox_rows(ort) == []


@pytest.mark.parametrize("xml", ["not xml at all", "<a><b></a>", "<Envelope/>"])
def test_malformed_or_foreign_xml_is_400(oclient, ort, xml):
    assert post(oclient, xml).status_code == 400 and outbox_rows(ort) == []


def test_token_in_the_endpoint_url(ort):
    rt = ort.make(outbound={"salesforce": {"organization_ids": [ORG], "token": "s3cret"}})
    from connector.web import create_app
    client = create_app(rt.config, rt).test_client()
    assert post(client, REQUEST).status_code == 401
    assert post(client, REQUEST, "?token=wrong").status_code == 401
    assert post(client, REQUEST, "?token=s3cret").status_code == 200


def test_notification_with_a_bad_number_is_acknowledged_and_rejected(oclient, ort):
    r = post(oclient, REQUEST.replace("+14155550199", "not a number"))
    assert ACK in r.get_data(as_text=True)
    rows = outbox_rows(ort)
    assert [m.state for m in rows] == [OUT_QUEUED, OUT_REJECTED]
    assert rows[1].error == "The recipient not a number is not a valid phone number"


def test_queued_notifications_are_validated_from_bytes_then_sent(oclient, ort, httpserver):
    good = serve_media(httpserver, "label.jpg", "jpg")
    bad = serve_media(httpserver, "label.pdf", "pdf", 700 * 1024)
    xml = REQUEST.replace("https://files.example.com/mms/label-123.jpg", f"{good}, {bad}")
    post(oclient, xml)
    expect_send(httpserver, aircall_message("SF1", text="Your order has shipped & is on its way."))
    expect_send(httpserver, aircall_message("SF2", to="+14155550199", text="Reminder: appointment tomorrow at 10am."))
    ort.outbound.run_once()
    assert send_requests(httpserver) == [
        {"to": "+14155550142", "body": "Your order has shipped & is on its way.", "mediaUrl": [good]},
        {"to": "+14155550199", "body": "Reminder: appointment tomorrow at 10am."}]
    first = outbox_rows(ort)[0]
    assert first.state == OUT_SENT and first.validation["removed"] == [1]
    assert first.validation["attachments"][1]["error"] == (
        "Your file size exceeds the limit of 600 KB. Please reduce the file size and try again")


def test_strict_policy_rejects_in_the_worker_and_sends_nothing(ort, httpserver):
    rt = ort.make(outbound={"policy": "strict", "salesforce": {"organization_ids": [ORG]}})
    from connector.web import create_app
    client = create_app(rt.config, rt).test_client()
    bad = serve_media(httpserver, "clip.jpg", "mp4")
    post(client, REQUEST.replace("https://files.example.com/mms/label-123.jpg", bad))
    expect_send(httpserver, aircall_message("SF2", to="+14155550199"))
    rt.outbound.run_once()
    first, second = outbox_rows(rt)
    assert first.state == OUT_REJECTED
    assert first.error == "Only pdf, jpg, jpeg, png, or gif files are allowed for MMS"
    assert second.state == OUT_SENT
    assert [r["to"] for r in send_requests(httpserver)] == ["+14155550199"]


def test_a_media_host_hiccup_delays_the_send_instead_of_dropping_the_file(ort, httpserver):
    from connector.store import outbox
    from connector.web import create_app
    # A backoff long enough that the same run does not try again before the test says so.
    rt = ort.make(outbound={"salesforce": {"organization_ids": [ORG]}}, worker={"backoff_initial": 60, "backoff_max": 120})
    httpserver.expect_oneshot_request("/media/label.jpg").respond_with_data("busy", status=503)
    good = serve_media(httpserver, "label.jpg", "jpg")
    post(create_app(rt.config, rt).test_client(), REQUEST.replace("https://files.example.com/mms/label-123.jpg", good))
    expect_send(httpserver, aircall_message("SF2", to="+14155550199"))
    rt.outbound.run_once()
    first = outbox_rows(rt)[0]
    assert (first.state, first.attempts) == (OUT_QUEUED, 1)
    assert first.error.startswith("attachment not fetched yet: http_error: HTTP 503 from ")
    with rt.store.read() as conn:  # the worker's backoff
        assert conn.execute(outbox.select().where(outbox.c.id == first.id)).first().next_at > time.time() + 30
    assert [r["to"] for r in send_requests(httpserver)] == ["+14155550199"]  # the other went out

    expect_send(httpserver, aircall_message("SF1", text="Your order has shipped & is on its way."))
    with rt.store.write() as conn:  # the backoff is over
        conn.execute(outbox.update().values(next_at=0))
    rt.outbound.run_once()
    assert send_requests(httpserver)[1] == {
        "to": "+14155550142", "body": "Your order has shipped & is on its way.", "mediaUrl": [good]}
    assert outbox_rows(rt)[0].state == OUT_SENT


def test_media_that_stays_unreachable_fails_the_strict_send_so_it_can_be_resent(ort, httpserver):
    from connector.outbox import Outbox
    from connector.web import create_app
    rt = ort.make(outbound={"policy": "strict", "salesforce": {"organization_ids": [ORG]}},
                  worker={"max_attempts": 2})
    httpserver.expect_request("/media/label.jpg").respond_with_data("busy", status=503)
    url = httpserver.url_for("/media/label.jpg")
    post(create_app(rt.config, rt).test_client(),
         REQUEST.replace("https://files.example.com/mms/label-123.jpg", url))
    expect_send(httpserver, aircall_message("SF2", to="+14155550199"))
    rt.outbound.run_once()
    time.sleep(0.1)
    rt.outbound.run_once()
    first = outbox_rows(rt)[0]
    assert (first.state, first.attempts) == (OUT_FAILED, 1)
    assert first.error == "Sorry, the problem has occurred. Please try again later"
    assert [r["to"] for r in send_requests(httpserver)] == ["+14155550199"]  # nothing else sent
    assert Outbox(rt.store).resolve(first.id, OUT_QUEUED)  # outbox resolve --resend takes it
