"""The outbox on a real PostgreSQL: idempotent enqueue, exclusive claims, sent + CRM log
in one transaction, sweep and reconciliation queries."""
from __future__ import annotations

import json
import threading
import time

import pytest

from connector.outbox import OUT_QUEUED, OUT_SENT, OUT_UNKNOWN, Outbox
from connector.providers import aircall
from connector.store import Store
from tests.outbound_support import ort  # noqa: F401 (fixture)


@pytest.fixture
def box(pg_url):
    store = Store(pg_url)
    store.create_schema()
    yield Outbox(store)
    store.engine.dispose()


def item(key: str, text: str = "hi") -> dict:
    return dict(idem_key=key, request_hash="h", source="api", line="+14155550100", line_id="1",
                recipient="+14155550142", text=text, media=[], policy="partial", validated=True,
                validation={"ok": True}, state=OUT_QUEUED)


def test_enqueue_is_idempotent_and_claims_are_exclusive(box):
    results = box.enqueue([item(f"k{i}") for i in range(20)] + [item("k0")])
    assert [created for _, created in results] == [True] * 20 + [False]
    assert results[20][0].id == results[0][0].id

    got: list[int] = []
    lock = threading.Lock()

    def claimer(name):
        while True:
            batch = box.claim(name, lease_seconds=60, limit=3)
            if not batch:
                return
            for m in batch:
                assert box.begin_send(m)
                with lock:
                    got.append(m.id)

    threads = [threading.Thread(target=claimer, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(got) == sorted(m.id for m, c in results if c)  # each row exactly once


def test_sent_with_log_event_then_sweep_and_reconcile(box):
    [(a, _), (b, _)] = box.enqueue([item("a", "first"), item("b", "second")])
    [a, b] = box.claim("w", lease_seconds=0.01, limit=2)
    box.begin_send(a)
    box.begin_send(b)
    payload = {"resource": "message", "event": "message.sent", "timestamp": int(time.time() * 1000),
               "data": {"id": "SM1", "status": "pending", "direction": "outbound", "body": "first",
                        "raw_digits": "14155550142", "number": {"digits": "+14155550100", "country": "US"}}}
    box.mark_sent(a, "SM1", payload["data"], dict(
        dedup_key="aircall:SM1:message.sent:pending", provider="aircall", message_id="SM1",
        event_name="message.sent", status="pending", direction="outbound", external="+14155550142",
        occurred_at=time.time(), payload=json.dumps(payload), targets=["hubspot"]))
    assert box.get(a.id).state == OUT_SENT
    assert box.store.list_events()[0]["message_id"] == "SM1"
    time.sleep(0.02)
    assert box.sweep() == 1 and box.get(b.id).state == OUT_UNKNOWN
    late = json.loads(json.dumps(payload))
    late["data"].update(id="SM2", body="second")
    box.store.ingest(dedup_key="aircall:SM2:message.sent:pending", provider="aircall", message_id="SM2",
                     event_name="message.sent", status="pending", direction="outbound",
                     external="+14155550142", occurred_at=time.time(), payload=json.dumps(late),
                     targets=["hubspot"])
    assert box.reconcile(aircall.parse, window=600) == [(b.id, "SM2")]
    assert box.get(b.id).provider_message_id == "SM2"


@pytest.mark.parametrize("body,error", [
    ({"from": "+14155550100", "to": "call me at the office, ext. 1234, ask for Jane Doe", "text": "hi"},
     "The recipient call me at the office, ext. 1234, ask for Jane Doe is not a valid phone number"),
    ({"from": "the sales line, the one printed on our website", "to": "+14155550142", "text": "hi"},
     "The line the sales line, the one printed on our website is not set up for sending (outbound.lines)"),
])
def test_a_long_non_number_is_rejected_with_its_text_not_a_500(ort, pg_url, body, error):
    from connector.web import create_app
    from tests.outbound_support import API_TOKEN, outbox_rows
    rt = ort.make(store={"url": pg_url})
    r = create_app(rt.config, rt).test_client().post(
        "/api/v1/messages", json=body, headers={"Authorization": f"Bearer {API_TOKEN}"})
    assert r.status_code == 422 and r.json["errors"] == [error]
    [row] = outbox_rows(rt)
    assert row.state == "rejected" and row.error == error


def test_one_unusable_salesforce_notification_does_not_lose_the_others(ort, pg_url):
    from connector.web import create_app
    from tests.outbound_support import ORG, outbox_rows
    from tests.test_outbound_salesforce import REQUEST
    text = REQUEST.replace("+14155550199", "see the account's billing contact for the number")
    rt = ort.make(store={"url": pg_url}, outbound={"salesforce": {"organization_ids": [ORG]}})
    r = create_app(rt.config, rt).test_client().post("/outbound/salesforce", data=text.encode(),
                                                     headers={"Content-Type": "text/xml"})
    assert r.status_code == 200 and b"<Ack>true</Ack>" in r.data
    assert sorted(row.state for row in outbox_rows(rt)) == ["queued", "rejected"]


def test_the_same_keys_in_other_orders_queue_instead_of_deadlocking(pg_url):
    stores = [Store(pg_url), Store(pg_url)]
    stores[0].create_schema()
    boxes = [Outbox(s) for s in stores]
    errors = []
    for round_ in range(5):
        keys = [f"sf:{round_}:{i}" for i in range(20)]
        start = threading.Barrier(2)

        def enqueue(box, ks):
            start.wait()
            try:
                results = box.enqueue([item(k) for k in ks])
                assert [m.idem_key for m, _ in results] == ks  # answered in request order
            except Exception as exc:  # a deadlock surfaced as a 500 before
                errors.append(exc)

        threads = [threading.Thread(target=enqueue, args=(boxes[0], keys)),
                   threading.Thread(target=enqueue, args=(boxes[1], keys[::-1]))]
        [t.start() for t in threads]
        [t.join() for t in threads]
    assert errors == []
    for s in stores:
        s.engine.dispose()
