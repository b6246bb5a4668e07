"""Odd but valid JSON from a sender: lone surrogates, NULs, exotic digits, out-of-range
dates. Each gets a clear 4xx at the webhook, or is stored and then delivered; never a 500,
never a dead letter that no replay can cure."""
from __future__ import annotations

import json
import time

import pytest
from sqlalchemy import select

from connector.store import deliveries
from connector.web import create_app
from tests.conftest import aircall_payload

ERROR = "must be epoch seconds, epoch milliseconds or ISO 8601"


@pytest.mark.parametrize("where,value", [
    ("timestamp", "\u00b2"),  # a digit to str.isdigit(), not to int()
    ("timestamp", "1" * 5000),  # more digits than int() takes
    ("timestamp", "0001-01-01T00:00:00+01:00"),  # before year 1 in UTC
    ("created_at", "9999-12-31T23:59:59-01:00"),  # after year 9999 in UTC
])
def test_unreadable_timestamps_are_a_400_naming_the_field(client, runtime, where, value):
    body = aircall_payload("sms_received")
    if where == "timestamp":
        body["timestamp"] = value
    else:
        body["data"]["created_at"] = value
    resp = client.post("/webhooks/aircall", json=body)
    assert resp.status_code == 400
    field = "timestamp" if where == "timestamp" else "data.created_at"
    assert resp.get_json() == {"error": f"{field}: {ERROR}", "field": field}
    assert runtime.store.list_events() == []


def test_a_lone_surrogate_token_is_refused_not_a_500(client):
    resp = client.post("/webhooks/aircall", data='{"token": "\\ud800", "event": "message.received"}',
                       content_type="application/json")
    assert resp.status_code == 401
    assert resp.get_json() == {"error": "missing or invalid webhook token"}


def deliver_all(rt) -> dict:
    for _ in range(3):
        rt.worker().run_once()
    return rt.store.list_events()[0]["targets"]


def post_raw(rt, body: dict) -> None:
    # json.dumps writes a lone surrogate as the escape "\ud83d", as a sender's JSON would.
    resp = create_app(rt.config, rt).test_client().post(
        "/webhooks/aircall", data=json.dumps(body), content_type="application/json")
    assert resp.status_code == 200, resp.get_json()


def test_half_an_emoji_in_the_text_is_delivered_with_a_replacement_character(runtime):
    body = aircall_payload("sms_received")
    body["data"]["body"] = "Thanks \ud83d"  # a client cut the emoji's UTF-16 pair in half
    post_raw(runtime, body)
    targets = deliver_all(runtime)
    assert {t["state"] for t in targets.values()} == {"dry-run"}
    task = targets["salesforce"]["rendered"]["body"]
    assert "Thanks \ufffd" in task["Description"]
    html = targets["hubspot"]["rendered"]["body"]["properties"]["hs_communication_body"]
    assert "<p>Thanks \ufffd</p>" in html


@pytest.mark.parametrize("name,shown", [("front\udc00.jpg", "front\ufffd.jpg"), ("front\u0000.jpg", "front.jpg")])
def test_odd_file_names_are_stored_and_delivered(make_runtime, tmp_path, name, shown):
    rt = make_runtime(media={"dir": str(tmp_path / "m"), "fetch_attempts": 1})
    body = aircall_payload("mms_received")
    body["data"]["media_details"][0]["file_name"] = name
    post_raw(rt, body)
    targets = deliver_all(rt)
    assert {t["state"] for t in targets.values()} == {"dry-run"}
    assert rt.store.media_rows(body["data"]["id"])[0]["name"] == shown


def test_a_nul_in_a_file_name_is_delivered_on_postgresql(make_runtime, tmp_path, pg_url):
    rt = make_runtime(store={"url": pg_url}, media={"dir": str(tmp_path / "m"), "fetch_attempts": 1})
    body = aircall_payload("mms_received")
    body["data"]["media_details"][0]["file_name"] = "front\u0000.jpg"
    body["data"]["body"] = "see\u0000 attached"
    post_raw(rt, body)
    targets = deliver_all(rt)
    assert {t["state"] for t in targets.values()} == {"dry-run"}
    assert "see attached" in targets["salesforce"]["rendered"]["body"]["Description"]


def test_media_fetched_elsewhere_holds_back_only_its_own_delivery(make_runtime, tmp_path):
    rt = make_runtime(media={"dir": str(tmp_path / "m")}, hubspot={"mode": "off"})
    client = create_app(rt.config, rt).test_client()
    mms = aircall_payload("mms_received")
    # Another worker is fetching this MMS's first attachment right now.
    rt.store.media_claim(mms["data"]["id"], 0, name="front.jpg", declared_type="image/jpeg",
                         owner="other-worker", lease_seconds=300)
    assert client.post("/webhooks/aircall", json=mms).status_code == 200
    assert client.post("/webhooks/aircall", json=aircall_payload("sms_received")).status_code == 200
    [first] = rt.store.claim("w", 60, limit=1)
    assert first.message_id == mms["data"]["id"]
    rt.pipeline.process(first)
    with rt.store.engine.connect() as conn:
        rows = {r.message_id: r for r in conn.execute(select(deliveries))}
    held = rows[mms["data"]["id"]]
    assert held.next_at > time.time() + 1 and held.attempts == 0  # back in about 2 s, no attempt spent
    assert held.last_error.startswith("media busy: media of message ")  # not called a rate limit
    assert rows["abdcSM11da5f0b1"].next_at <= time.time()  # the SMS is not held back
    m = rt.metrics.exposition().decode()
    assert 'mms_connector_crm_writes_total{outcome="media_busy",target="salesforce"} 1.0' in m
    assert 'outcome="rate_limited"' not in m
