"""The Aircall adapter's normalization: numbers, timestamps, media, statuses."""
from __future__ import annotations

from datetime import datetime, timezone

import pytest

from connector.events import DELIVERED, FAILED, PENDING, RECEIVED, parse_timestamp, status_advances
from connector.phones import to_e164
from connector.providers import aircall
from tests.conftest import aircall_payload


def test_mms_received_is_normalized():
    ev = aircall.parse(aircall_payload("mms_received"))
    assert ev.provider == "aircall"
    assert ev.event == "message.received"
    assert ev.kind == "inbound"
    assert ev.message_id == "abdcSM77mms0001"
    assert ev.direction == "inbound" and ev.status == RECEIVED
    assert ev.channel == "mms"
    assert ev.line == "+14244162288"
    assert ev.line_name == "Sales US" and ev.line_country == "US"
    assert ev.external == "+14155550142"  # from "(415) 555-0142"
    assert ev.text == "Photos of the damage <b>attached</b> & a quote"
    assert [m.file_name for m in ev.media] == ["front.jpg", "side.png", "spin.gif", "quote.pdf",
                                               "back.jpg", "clip.mp4"]
    assert ev.media[5].content_type == "video/mp4"
    assert ev.media[0].url.startswith("https://media.aircall.example/m/1/front.jpg")
    # created_at (the message's own time), not the envelope timestamp
    assert ev.occurred_at == datetime(2026, 11, 20, 15, 4, 4, tzinfo=timezone.utc)
    assert ev.raw["data"]["id"] == "abdcSM77mms0001"


def test_sms_and_status_events():
    sms = aircall.parse(aircall_payload("sms_received"))
    assert sms.channel == "sms" and sms.media == []
    assert sms.occurred_at == datetime.fromtimestamp(1722604989, tz=timezone.utc)
    st = aircall.parse(aircall_payload("status_delivered"))
    assert st.kind == "status" and st.status == DELIVERED and st.direction == "outbound"
    sent = aircall.parse(aircall_payload("message_sent"))
    assert sent.kind == "outbound" and sent.status == PENDING
    assert sent.external == "+13023063029"


def test_twelve_attachments_are_all_kept():
    ev = aircall.parse(aircall_payload("mms_12_attachments"))
    assert len(ev.media) == 12
    assert ev.external == "+14155550142"  # national bare digits on a US line


@pytest.mark.parametrize("raw, expected", [
    ("(415) 555-0142", "+14155550142"),
    ("+1 415 555 0142", "+14155550142"),
    ("4155550142", "+14155550142"),
    ("14155550142", "+14155550142"),
    ("+61 2 9374 4000", "+61293744000"),
    ("61293744000", "+61293744000"),
    ("1 (415) 555-0142", "+14155550142"),
    # An extension's digits are not a country code: not Switzerland, not Malaysia.
    ("415-555-0142 x3", "+14155550142"),
    ("(415) 555-0142 #2", "+14155550142"),
    ("(604) 555-0142 x7", "+16045550142"),
    ("415-555-0142 ext. 12", "+14155550142"),
    ("", None),
    ("hello", None),
])
def test_phone_normalization(raw, expected):
    assert to_e164(raw) == expected


@pytest.mark.parametrize("value, expected", [
    (1722604989, datetime(2024, 8, 2, 13, 23, 9, tzinfo=timezone.utc)),
    (1722604989549, datetime(2024, 8, 2, 13, 23, 9, 549000, tzinfo=timezone.utc)),
    ("2024-08-02T13:23:09.549Z", datetime(2024, 8, 2, 13, 23, 9, 549000, tzinfo=timezone.utc)),
    ("2024-08-02T15:23:09+02:00", datetime(2024, 8, 2, 13, 23, 9, tzinfo=timezone.utc)),
    ("1722604989", datetime(2024, 8, 2, 13, 23, 9, tzinfo=timezone.utc)),
    ("garbage", None),
    (True, None),
    (None, None),
])
def test_timestamps(value, expected):
    assert parse_timestamp(value) == expected


def test_status_never_regresses():
    assert status_advances(None, PENDING)
    assert status_advances(PENDING, "sent")
    assert status_advances("sent", DELIVERED)
    assert not status_advances(DELIVERED, "sent")
    assert not status_advances(FAILED, DELIVERED)
    assert not status_advances(DELIVERED, DELIVERED)
    assert not status_advances(PENDING, "unknown")


def test_proxy_callback_event_name_is_accepted():
    p = aircall_payload("status_delivered")
    p["event_name"] = "message.updated"
    del p["event"]
    ev = aircall.parse(p)
    assert ev.event == "message.status_updated"


def test_unknown_provider_status_is_kept_but_ranked_lowest():
    p = aircall_payload("status_delivered")
    p["data"]["status"] = "teleported"
    ev = aircall.parse(p)
    assert ev.status == "unknown" and ev.provider_status == "teleported"


@pytest.mark.parametrize("typed, region, expected", [
    ("(11) 91234-5678", "BR", "+5511912345678"),  # a São Paulo mobile saved without +55
    ("138 0013 8000", "CN", "+8613800138000"),  # a Chinese mobile saved without +86
    ("61298765432", "US", "+61298765432"),  # no valid US number: the digits carry a country code
    ("14155550142", "US", "+14155550142"),
])
def test_a_number_typed_in_a_crm_is_read_in_its_country_first(typed, region, expected):
    assert to_e164(typed, region, typed=True) == expected
