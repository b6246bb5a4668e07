"""The store on a real PostgreSQL: the webhook's write, leases, and concurrent claimers."""
from __future__ import annotations

import json
import threading
import time

import pytest

from connector.store import DELIVERED, RETRYING, Store


@pytest.fixture
def pg_store(pg_url):
    store = Store(pg_url)
    store.create_schema()
    yield store
    store.engine.dispose()


def _ingest(store: Store, message_id: str, status: str = "received", targets=("hubspot", "salesforce")):
    return store.ingest(dedup_key=f"aircall:{message_id}:{status}", provider="aircall",
                        message_id=message_id, event_name="message.received", status=status,
                        direction="inbound", external="+15550000001", occurred_at=time.time(),
                        payload=json.dumps({"id": message_id, "status": status}), targets=targets)


def test_ingest_claim_finish_on_postgresql(pg_store):
    first = _ingest(pg_store, "m1")
    assert first is not None
    assert _ingest(pg_store, "m1") is None  # a redelivery is stored once

    claimed = pg_store.claim("w1", lease_seconds=60, limit=10)
    assert sorted(d.target for d in claimed) == ["hubspot", "salesforce"]
    assert all(d.payload == {"id": "m1", "status": "received"} for d in claimed)
    assert pg_store.claim("w2", lease_seconds=60, limit=10) == []  # leased

    hub = next(d for d in claimed if d.target == "hubspot")
    sf = next(d for d in claimed if d.target == "salesforce")
    assert pg_store.finish(hub, DELIVERED, result={"id": "c-1"})
    assert pg_store.finish(sf, RETRYING, error="HTTP 503", next_at=time.time() - 1)
    assert not pg_store.finish(hub, DELIVERED)  # the lease is gone: a stale worker cannot overwrite

    again = pg_store.claim("w2", lease_seconds=60, limit=10)
    assert [(d.target, d.attempts) for d in again] == [("salesforce", 1)]
    [event] = pg_store.list_events()
    assert event["targets"]["hubspot"]["state"] == DELIVERED
    assert event["targets"]["hubspot"]["result"] == {"id": "c-1"}
    assert event["targets"]["salesforce"]["error"] == "HTTP 503"


def test_expired_lease_is_swept_and_claimed_again(pg_store):
    _ingest(pg_store, "m1", targets=("hubspot",))
    [d] = pg_store.claim("dead-worker", lease_seconds=60)
    assert pg_store.sweep(now=time.time() + 61) == 1
    [again] = pg_store.claim("w2", lease_seconds=60)
    assert again.id == d.id and again.lease_owner == "w2"
    assert not pg_store.finish(d, DELIVERED)


def test_record_map_and_contact_cache_upsert_on_postgresql(pg_store):
    pg_store.save_record("hubspot", "m1", object_type="communications", object_id="1", status="sent")
    pg_store.save_record("hubspot", "m1", object_type="communications", object_id="1", status="delivered")
    assert pg_store.get_record("hubspot", "m1")["status"] == "delivered"
    pg_store.put_contact("hubspot", "+15550000001", "contact", "c1", ttl=60)
    pg_store.put_contact("hubspot", "+15550000001", "contact", "c2", ttl=60)
    assert pg_store.get_contact("hubspot", "+15550000001") == {"record_type": "contact", "record_id": "c2"}
    pg_store.put_contact("hubspot", "+15550000002", "contact", "c3", ttl=-1)
    assert pg_store.get_contact("hubspot", "+15550000002") is None


def test_concurrent_claimers_never_hold_one_crm_record_twice(pg_store, pg_url):
    """8 workers (own engines, like separate processes) drain 40 messages x 3 events x 2 CRMs;
    two events of one message for one CRM are never leased at the same time."""
    for i in range(40):
        for status in ("received", "sent", "delivered"):
            _ingest(pg_store, f"m{i}", status=status)
    held: dict[tuple[str, str], str] = {}
    lock = threading.Lock()
    violations: list[str] = []
    processed: list[int] = []
    errors: list[BaseException] = []

    def work(name: str) -> None:
        store = Store(pg_url)
        try:
            idle = 0
            while idle < 3:
                batch = store.claim(name, lease_seconds=60, limit=4)
                if not batch:
                    idle += 1
                    time.sleep(0.02)
                    continue
                idle = 0
                with lock:
                    for d in batch:
                        key = (d.target, d.message_id)
                        if key in held:
                            violations.append(f"{key} held by {held[key]} and {name}")
                        held[key] = name
                time.sleep(0.002)
                for d in batch:
                    with lock:  # release before the outcome commits: the lease still guards it
                        held.pop((d.target, d.message_id), None)
                    assert store.finish(d, DELIVERED)
                    processed.append(d.id)
        except BaseException as exc:  # surfaced below
            errors.append(exc)
        finally:
            store.engine.dispose()

    threads = [threading.Thread(target=work, args=(f"w{i}",)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert violations == []
    assert sorted(processed) == sorted(set(processed))  # each delivery processed once
    assert len(processed) == 40 * 3 * 2
    assert pg_store.pending_count() == 0
    assert all(t["state"] == DELIVERED for e in pg_store.list_events(limit=500)
               for t in e["targets"].values())


def _between_select_and_lease(store: Store, action) -> None:
    """Run ``action`` once, in another connection, after ``store``'s claim has chosen its
    rows and before it leases them."""
    from sqlalchemy import event
    fired = []

    @event.listens_for(store.engine, "before_cursor_execute")
    def hook(conn, cursor, statement, params, context, executemany):
        if not fired and statement.startswith("UPDATE deliveries SET lease_until"):
            fired.append(1)
            action()


def test_a_claim_never_takes_a_delivery_its_late_worker_finished_meanwhile(pg_store, pg_url):
    _ingest(pg_store, "m1", targets=("hubspot",))
    [mine] = pg_store.claim("A", lease_seconds=0.05)
    time.sleep(0.1)  # A's lease ran out while its CRM call was slow
    other = Store(pg_url)
    try:
        finished = []
        _between_select_and_lease(other, lambda: finished.append(pg_store.finish(mine, DELIVERED, result={"id": "c-1"})))
        assert other.claim("B", lease_seconds=60) == [] and finished == [True]
    finally:
        other.engine.dispose()
    assert pg_store.get_delivery(mine.id)["state"] == DELIVERED


def test_a_claim_never_takes_a_delivery_whose_worker_renewed_its_lease_meanwhile(pg_store, pg_url):
    _ingest(pg_store, "m1", targets=("hubspot",))
    [mine] = pg_store.claim("A", lease_seconds=0.05)
    time.sleep(0.1)
    other = Store(pg_url)
    try:
        renewed = []
        _between_select_and_lease(other, lambda: renewed.append(pg_store.renew_leases([mine], 60)))
        assert other.claim("B", lease_seconds=60) == []  # A goes on with its CRM call alone
        assert renewed == [{mine.id}]
    finally:
        other.engine.dispose()
