"""A flaky CRM: 503s for a while, then repeated 429s. Nothing lost, nothing doubled,
each entry at its message's own time, and no call before a Retry-After is over."""
from __future__ import annotations

import time
from contextlib import contextmanager
from datetime import datetime, timezone

from bench.fakecrm import FakeCRM, HttpWriter
from connector.pipeline.writers import load_mapping
from connector.web import create_app
from tests.conftest import aircall_payload
from tests.procs import wait_for

HOOK = "/webhooks/aircall"
# Messages created a minute apart, posted newest first: the timeline must still read in order.
TIMES = [datetime(2026, 11, 20, 9, m, 30, 250000, tzinfo=timezone.utc) for m in range(12)]


@contextmanager
def running(rt, crm):
    rt.pipeline.writers = {"hubspot": HttpWriter("hubspot", crm.url, load_mapping(rt.config, "hubspot"))}
    worker = rt.worker()
    worker.start()
    try:
        yield
    finally:
        worker.stop()


def _post_messages(client, n):
    ids = []
    for i in reversed(range(n)):
        body = aircall_payload("mms_received" if i % 2 else "sms_received")
        body["data"]["id"] = f"msg-{i}"
        body["data"]["created_at"] = TIMES[i].isoformat().replace("+00:00", "Z")
        assert client.post(HOOK, json=body).get_json()["status"] == "stored"
        ids.append(f"msg-{i}")
    return ids


def _states(rt):
    return {e["message_id"]: e["targets"]["hubspot"]["state"] for e in rt.store.list_events(limit=1000)}


def test_crm_down_then_recovers_everything_delivered_at_message_time(make_runtime):
    rt = make_runtime(salesforce={"mode": "off"},
                      worker={"threads": 2, "backoff_initial": 0.05, "backoff_max": 0.3, "max_attempts": 12})
    client = create_app(rt.config, rt).test_client()
    with FakeCRM(seed=3) as crm:
        ids = _post_messages(client, 10)
        # Down for a while: the first calls fail whatever the machine's speed (some after
        # HubSpot stored the entry: the ambiguous case), and then everything for a second.
        crm.fail_next(3, status=503, store_first=True)
        crm.fail_next(3, status=503)
        crm.down_for(1.0)
        with running(rt, crm):
            wait_for(lambda: set(_states(rt).values()) == {"delivered"}, timeout=30, what="all delivered")
        entries = crm.by_external_id()
        failures = [r for r in crm.requests if r[3] == 503]

    assert failures, "the outage was not seen"
    assert sorted(entries) == sorted(ids)
    for i in range(10):
        (entry,) = entries[f"msg-{i}"]  # exactly one entry per message
        assert entry["properties"]["hs_timestamp"] == str(int(TIMES[i].timestamp() * 1000))
        assert rt.store.get_record("hubspot", f"msg-{i}")["object_id"] == entry["id"]
    # Retries were counted and visible while they lasted.
    assert rt.metrics.retries.labels("hubspot", "error")._value.get() >= 1


def test_repeated_429s_no_call_before_the_wait_is_over(make_runtime):
    rt = make_runtime(salesforce={"mode": "off"}, worker={"threads": 1, "max_attempts": 2})
    client = create_app(rt.config, rt).test_client()
    with FakeCRM() as crm:
        crm.fail_next(3, status=429, retry_after=0.4)
        ids = _post_messages(client, 4)
        with running(rt, crm):
            wait_for(lambda: set(_states(rt).values()) == {"delivered"}, timeout=30, what="all delivered")
        entries = crm.by_external_id()
        times = [t for t, *_ in crm.requests]
        limited = [i for i, r in enumerate(crm.requests) if r[3] == 429]

    assert crm.violations == []  # no request arrived while a Retry-After was running
    assert len(limited) == 3
    for i in limited:  # the next call came only after the 0.4 s the CRM asked for
        assert times[i + 1] - times[i] >= 0.4
    # 429s are not failed attempts: max_attempts 2 and three 429s, still delivered once each.
    assert sorted(entries) == sorted(ids) and all(len(v) == 1 for v in entries.values())


def test_rate_limit_parks_the_whole_target(make_runtime):
    """One delivery's 429 parks the other open deliveries of that CRM (any process)."""
    rt = make_runtime(worker={"threads": 1})
    client = create_app(rt.config, rt).test_client()
    with FakeCRM() as crm:
        crm.fail_next(1, status=429, retry_after=30)
        _post_messages(client, 6)
        rt.pipeline.writers["hubspot"] = HttpWriter("hubspot", crm.url, load_mapping(rt.config, "hubspot"))
        (first,) = rt.store.claim("t", 60, limit=1, target="hubspot")
        assert rt.pipeline.process(first) == "retrying"
        assert rt.store.claim("t", 60, target="hubspot") == []  # nothing of hubspot is due now
        assert len(rt.store.claim("t", 60, target="hubspot", now=time.time() + 31)) == 6
        assert len(crm.requests) == 1  # only the call that got the 429
    # Salesforce did not ask us to wait: its deliveries stay due.
    assert len(rt.store.claim("t", 60, target="salesforce")) == 6
    assert all(e["targets"]["hubspot"]["attempts"] == 0 for e in rt.store.list_events())


def test_a_park_holds_deliveries_stored_after_it_and_costs_one_row(make_runtime):
    from sqlalchemy import select

    from connector.crm.base import RateLimited
    from connector.store import deliveries
    rt = make_runtime(salesforce={"mode": "off"})
    client = create_app(rt.config, rt).test_client()
    _post_messages(client, 6)
    calls, parks = [], []

    class Limited:  # the CRM answers a burst with its daily limit
        name = "hubspot"

        def deliver_many(self, items):
            calls.append(len(items))
            return [RateLimited("daily limit", retry_after=600)] * len(items)

    rt.pipeline.writers["hubspot"] = Limited()
    park = rt.store.park_target
    rt.store.park_target = lambda target, until: (parks.append(target), park(target, until))
    def next_at_of_the_rest():
        with rt.store.read() as conn:
            return conn.execute(select(deliveries.c.next_at).where(
                deliveries.c.target == "hubspot", deliveries.c.id.not_in([d.id for d in batch]))).scalar()

    batch = rt.store.claim("w", 60, limit=5, target="hubspot")
    before = next_at_of_the_rest()
    rt.pipeline.process_batch(batch)
    assert calls == [5] and parks == ["hubspot"]  # one park for the batch, not one per item
    assert next_at_of_the_rest() == before  # the park is one row, not a rewrite of the backlog

    late = aircall_payload("sms_received")
    late["data"]["id"] = "stored-during-the-park"
    assert client.post(HOOK, json=late).get_json()["status"] == "stored"
    assert rt.store.claim("w", 60, target="hubspot") == []  # neither the backlog nor the new one
    assert len(rt.store.claim("w", 60, target="hubspot", now=time.time() + 601)) == 7
