"""Worker side: leases, dry-run records, retries, dead letters, one entry per message."""
from __future__ import annotations

import json
import time

from connector.crm.base import Outcome, PermanentError, RateLimited, TransientError
from connector.store import deliveries
from connector.web import create_app
from sqlalchemy import select
from tests.conftest import aircall_payload


def ingest(runtime, *names):
    client = create_app(runtime.config, runtime).test_client()
    for n in names:
        assert client.post("/webhooks/aircall", json=aircall_payload(n)).status_code == 200


def drain(runtime):
    return runtime.worker().run_once()


def targets_of(runtime, message_id):
    return {e["event"] + ":" + e["status"]: e["targets"] for e in runtime.store.list_events()
            if e["message_id"] == message_id}


def test_dry_run_records_the_rendered_requests(runtime):
    ingest(runtime, "mms_received")
    assert drain(runtime) == 2
    [ev] = runtime.store.list_events()
    hs = ev["targets"]["hubspot"]
    sf = ev["targets"]["salesforce"]
    assert hs["state"] == "dry-run" and sf["state"] == "dry-run"
    req = hs["rendered"]
    assert req["method"] == "POST" and req["path"] == "/crm/v3/objects/communications"
    props = req["body"]["properties"]
    assert props["hs_communication_channel_type"] == "SMS"
    assert props["hs_communication_logged_from"] == "CRM"
    assert props["hs_timestamp"] == str(int(ev_time_ms()))
    body = props["hs_communication_body"]
    # phone-supplied text is escaped
    assert "Photos of the damage &lt;b&gt;attached&lt;/b&gt; &amp; a quote" in body
    # 5 supported attachments: 4 previews and a counter; the mp4 triggers the alert
    assert body.count("<img ") == 3  # three images among the first four previews (4th is a PDF)
    assert "+1 more" in body
    assert "Some media cannot be received due to unsupported format." in body
    assert "clip.mp4: cannot be received" in body
    assert req["body"]["associations"][0]["to"]["id"] == "{contact_id}"
    assert req["body"]["associations"][0]["types"][0]["associationTypeId"] == 81
    sfreq = sf["rendered"]
    assert sfreq["path"] == "/services/data/v59.0/sobjects/Task/"
    assert sfreq["body"]["Subject"] == "MMS from +14155550142"
    assert sfreq["body"]["WhoId"] == "{who_id}"
    assert "Photos of the damage <b>attached</b> & a quote" in sfreq["body"]["Description"]
    assert "Attachments: 6" in sfreq["body"]["Description"]


def ev_time_ms():
    from datetime import datetime, timezone
    return datetime(2026, 11, 20, 15, 4, 4, tzinfo=timezone.utc).timestamp() * 1000


def test_one_entry_per_message_and_status_moves_forward_only(runtime):
    ingest(runtime, "message_sent", "status_delivered")
    drain(runtime)
    ingest(runtime, "status_sent")  # late and out of order
    drain(runtime)
    by_event = targets_of(runtime, "abcdSMc6Dc8ea2bc71ab19102c3de4f60ba18aa")
    assert by_event["message.sent:pending"]["hubspot"]["result"] == {"operation": "create"}
    assert by_event["message.status_updated:delivered"]["hubspot"]["result"] == {"operation": "update"}
    assert "Delivered" in by_event["message.status_updated:delivered"]["hubspot"]["rendered"]["body"]["properties"]["hs_communication_body"]
    late = by_event["message.status_updated:sent"]["hubspot"]
    assert late["rendered"] is None
    assert late["result"] == {"unchanged": "entry already shows status delivered"}
    rec = runtime.store.get_record("hubspot:dry-run", "abcdSMc6Dc8ea2bc71ab19102c3de4f60ba18aa")
    assert rec["status"] == "delivered"


class FlakyWriter:
    name = "hubspot"

    def __init__(self, errors):
        self.errors = list(errors)
        self.calls = 0

    def deliver(self, event, ctx):
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return Outcome("delivered", rendered={"ok": True}, result={"id": "42"})


def only_hubspot(make_runtime, writer, **worker):
    rt = make_runtime(salesforce={"mode": "off"}, worker={"backoff_initial": 0.01, "backoff_max": 0.01, **worker})
    rt.pipeline.writers["hubspot"] = writer
    return rt


def state_of(rt):
    with rt.store.engine.connect() as conn:
        return conn.execute(select(deliveries.c.state, deliveries.c.attempts, deliveries.c.last_error)).one()


def test_transient_errors_retry_then_deliver(make_runtime):
    w = FlakyWriter([TransientError("HTTP 503"), TransientError("timeout")])
    rt = only_hubspot(make_runtime, w)
    ingest(rt, "sms_received")
    drain(rt)
    assert state_of(rt).state == "retrying"
    deadline = time.time() + 5
    while state_of(rt).state != "delivered" and time.time() < deadline:
        time.sleep(0.02)
        drain(rt)
    st = state_of(rt)
    assert st.state == "delivered" and st.attempts == 3 and st.last_error is None
    assert w.calls == 3


def test_attempts_run_out_into_dead_letter(make_runtime):
    w = FlakyWriter([TransientError("HTTP 503")] * 10)
    rt = only_hubspot(make_runtime, w, max_attempts=3)
    ingest(rt, "sms_received")
    deadline = time.time() + 5
    while state_of(rt).state != "dead" and time.time() < deadline:
        time.sleep(0.02)
        drain(rt)
    st = state_of(rt)
    assert st.state == "dead" and st.attempts == 3
    assert st.last_error == "gave up after 3 attempts: HTTP 503"


def test_permanent_error_dead_letters_at_once(make_runtime):
    w = FlakyWriter([PermanentError("Property values were not valid (correlationId 1234)")])
    rt = only_hubspot(make_runtime, w)
    ingest(rt, "sms_received")
    drain(rt)
    st = state_of(rt)
    assert st.state == "dead" and st.last_error == "Property values were not valid (correlationId 1234)"
    assert w.calls == 1


def test_rate_limit_parks_without_counting_an_attempt(make_runtime):
    w = FlakyWriter([RateLimited("DAILY limit reached", retry_after=3600)])
    rt = only_hubspot(make_runtime, w)
    ingest(rt, "sms_received")
    drain(rt)
    st = state_of(rt)
    assert st.state == "retrying" and st.attempts == 0
    assert drain(rt) == 0  # parked: nothing due for an hour
    assert w.calls == 1


def test_expired_lease_is_claimed_again_after_a_worker_died(runtime):
    ingest(runtime, "sms_received")
    dead_worker = runtime.store.claim("dead-worker", lease_seconds=60, limit=10)
    assert len(dead_worker) == 2
    assert runtime.store.claim("other", lease_seconds=60) == []  # leased: not claimable
    assert runtime.store.sweep() == 0  # the lease has not run out yet
    assert runtime.store.sweep(now=time.time() + 61) == 2  # ...and now it has
    assert drain(runtime) == 2
    states = {t: v["state"] for t, v in runtime.store.list_events()[0]["targets"].items()}
    assert states == {"hubspot": "dry-run", "salesforce": "dry-run"}
    # the dead worker's late finish is refused: its lease is gone
    assert runtime.store.finish(dead_worker[0], "delivered") is False


def test_two_events_of_one_message_are_never_claimed_together(runtime):
    ingest(runtime, "message_sent", "status_delivered")
    first = runtime.store.claim("w1", lease_seconds=60, limit=10)
    # one per (target, message): hubspot and salesforce of the first event
    assert sorted((d.target, d.message_id) for d in first) == [
        ("hubspot", "abcdSMc6Dc8ea2bc71ab19102c3de4f60ba18aa"),
        ("salesforce", "abcdSMc6Dc8ea2bc71ab19102c3de4f60ba18aa")]
    assert runtime.store.claim("w2", lease_seconds=60, limit=10) == []


def test_events_json_lists_each_event_newest_first(runtime):
    ingest(runtime, "sms_received", "mms_received", "sms_received")
    drain(runtime)
    rows = runtime.store.list_events()
    assert [r["message_id"] for r in rows] == ["abdcSM77mms0001", "abdcSM11da5f0b1"]
    for r in rows:
        assert set(r) >= {"message_id", "event", "direction", "status", "received_at", "targets"}
        assert set(r["targets"]) == {"hubspot", "salesforce"}
    json.dumps(rows)


def test_a_worker_that_outlived_its_lease_does_not_write_what_another_worker_took_over(make_runtime):
    # Media fetching can outlast the lease; by then another worker may own the delivery.
    # The slow worker must not call the CRM as well: that would be a second entry.
    w = FlakyWriter([])
    rt = only_hubspot(make_runtime, w)
    ingest(rt, "sms_received")
    [slow] = rt.store.claim("slow-worker", lease_seconds=60)
    real_media = rt.pipeline.media

    def slow_media(event, d):
        rt.pipeline.media = real_media
        # The lease ran out (the slow worker stalled and its renewals failed)...
        with rt.store.engine.begin() as conn:
            conn.execute(deliveries.update().values(lease_until=0))
        [taken] = rt.store.claim("other-worker", lease_seconds=60)  # ...and another worker took it
        rt.pipeline.process(taken)
        return real_media(event, d)

    rt.pipeline.media = slow_media
    rt.pipeline.process(slow)
    assert w.calls == 1  # only the worker that held the lease wrote
    assert state_of(rt).state == "delivered" and state_of(rt).attempts == 1


class SlowWriter(FlakyWriter):
    def __init__(self, seconds, during):
        super().__init__([])
        self.seconds, self.during = seconds, during

    def deliver(self, event, ctx):
        deadline = time.monotonic() + self.seconds
        while time.monotonic() < deadline:  # a CRM call held up by rate-limit waits and retries
            self.during()
            time.sleep(0.1)
        return super().deliver(event, ctx)


def test_a_crm_call_longer_than_the_lease_keeps_it_and_no_other_worker_writes_the_message(make_runtime):
    taken = []
    w = SlowWriter(2.5, during=lambda: taken.extend(rt.store.claim("other-worker", lease_seconds=1)))
    rt = only_hubspot(make_runtime, w)
    rt.config.worker.lease_seconds = 1  # the call lasts two and a half leases
    ingest(rt, "sms_received")
    [d] = rt.store.claim("slow-worker", lease_seconds=1)
    assert rt.pipeline.process(d) == "delivered"
    assert taken == []  # the lease was renewed all along: nobody else could claim it
    assert w.calls == 1
    assert state_of(rt).state == "delivered" and state_of(rt).attempts == 1
