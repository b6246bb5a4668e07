"""Worker-side batching: writers with deliver_many get a CRM's due deliveries together,
and each item's outcome is recorded on its own."""
from __future__ import annotations

import copy

from connector.crm.base import Outcome, PermanentError, RateLimited, TransientError

from conftest import aircall_payload


class BatchWriter:
    """A writer with batch endpoints: answers each message per ``script``, records calls."""

    name = "hubspot"

    def __init__(self, script=None, fail_call: Exception | None = None):
        self.script = script or {}
        self.fail_call = fail_call
        self.calls: list[list[str]] = []

    def deliver(self, event, ctx):
        raise AssertionError("a batching writer must get deliver_many")

    def deliver_many(self, items):
        self.calls.append([event.message_id for event, _ in items])
        if self.fail_call:
            raise self.fail_call
        out = []
        for event, _ctx in items:
            r = self.script.get(event.message_id, "ok")
            out.append(Outcome("delivered", rendered={"id": event.message_id}, result={"id": f"c-{event.message_id}"})
                       if r == "ok" else r)
        return out


def _post(client, message_id: str):
    body = copy.deepcopy(aircall_payload("sms_received"))
    body["data"]["id"] = message_id
    r = client.post("/webhooks/aircall", json=body)
    assert r.status_code == 200, r.get_json()


def _states(rt):
    return {e["message_id"]: {t: (v["state"], v["attempts"], v["error"]) for t, v in e["targets"].items()}
            for e in rt.store.list_events(limit=100)}


def _setup(make_runtime, writer, size=3):
    from connector.web import create_app
    rt = make_runtime(hubspot={"batch_size": size}, worker={"max_attempts": 3,
                              "backoff_initial": 60, "backoff_max": 120})  # retries wait: one pass
    rt.pipeline.writers["hubspot"] = writer
    return rt, create_app(rt.config, rt).test_client()


def test_one_call_per_batch_and_per_item_outcomes(make_runtime):
    writer = BatchWriter(script={
        "m2": TransientError("HTTP 503 from batch item"),
        "m3": PermanentError("property hs_communication_body is invalid"),
        "m4": RateLimited("secondly limit", retry_after=30),
    })
    rt, client = _setup(make_runtime, writer, size=3)
    for i in range(1, 6):
        _post(client, f"m{i}")

    ran = rt.worker().run_once()

    assert ran == 10  # 5 hubspot in batches + 5 salesforce (dry-run, one at a time)
    assert writer.calls == [["m1", "m2", "m3"], ["m4", "m5"]]
    states = _states(rt)
    assert {m: s["hubspot"] for m, s in states.items()} == {
        "m1": ("delivered", 1, None),
        "m2": ("retrying", 1, "HTTP 503 from batch item"),
        "m3": ("dead", 1, "property hs_communication_body is invalid"),
        "m4": ("retrying", 0, "rate limited: secondly limit"),  # parked, not an attempt
        "m5": ("delivered", 1, None),
    }
    assert all(s["salesforce"][0] == "dry-run" for s in states.values())
    assert rt.store.list_events(limit=100)[-1]["targets"]["hubspot"]["result"] == {"id": "c-m1"}


def test_a_failed_call_fails_each_item_alone_and_retries(make_runtime):
    writer = BatchWriter(fail_call=TransientError("connection reset"))
    rt, client = _setup(make_runtime, writer)
    for i in range(1, 3):
        _post(client, f"m{i}")
    rt.worker().run_once()
    assert writer.calls == [["m1", "m2"]]
    assert {m: s["hubspot"] for m, s in _states(rt).items()} == {
        "m1": ("retrying", 1, "connection reset"), "m2": ("retrying", 1, "connection reset")}


def test_a_writer_answering_the_wrong_number_of_outcomes_is_a_transient_error(make_runtime):
    class Short(BatchWriter):
        def deliver_many(self, items):
            super().deliver_many(items)
            return [Outcome("delivered")]

    rt, client = _setup(make_runtime, Short())
    _post(client, "m1")
    _post(client, "m2")
    rt.worker().run_once()
    assert {s["hubspot"] for s in _states(rt).values()} == {
        ("retrying", 1, "hubspot answered 1 outcomes for 2 items")}


def test_two_events_of_one_message_never_share_a_batch(make_runtime):
    writer = BatchWriter()
    rt, client = _setup(make_runtime, writer, size=10)
    _post(client, "m1")
    status = copy.deepcopy(aircall_payload("status_delivered"))
    status["data"]["id"] = "m1"
    assert client.post("/webhooks/aircall", json=status).status_code == 200
    _post(client, "m2")
    rt.worker().run_once()
    assert writer.calls == [["m1", "m2"], ["m1"]]


def test_a_partial_batch_waits_to_fill_up_to_batch_size(make_runtime):
    writer = BatchWriter()
    rt, client = _setup(make_runtime, writer, size=3)
    _post(client, "m1")
    real_claim = rt.store.claim
    arrivals = iter([["m2", "m3"], ["m4"]])

    def claim(*args, **kwargs):
        got = real_claim(*args, **kwargs)
        for m in next(arrivals, []):  # more webhooks arrive while the batch waits
            _post(client, m)
        return got

    rt.store.claim = claim
    worker = rt.worker()
    batch = worker.claim_batch("w1", "hubspot", wait=30)  # full at 3: returns long before 30 s
    assert [d.message_id for d in batch] == ["m1", "m2", "m3"]
    rest = worker.claim_batch("w1", "hubspot", wait=0)  # no wait: what is due now
    assert [d.message_id for d in rest] == ["m4"]


def test_an_item_whose_lease_was_lost_keeps_the_new_owners_state(make_runtime):
    """Outcomes commit together, but each only where this worker still holds the lease."""
    from sqlalchemy import update

    from connector.store import deliveries

    class Slow(BatchWriter):
        def deliver_many(self, items):
            # Meanwhile the lease on m1 ran out and another worker took it.
            with rt.store.engine.begin() as conn:
                conn.execute(update(deliveries).where(deliveries.c.message_id == "m1")
                             .values(lease_owner="other-worker"))
            return super().deliver_many(items)

    rt, client = _setup(make_runtime, Slow())
    _post(client, "m1")
    _post(client, "m2")
    batch = rt.worker().claim_batch("w1", "hubspot")
    assert rt.pipeline.process_batch(batch) == ["delivered", "delivered"]
    states = _states(rt)
    assert states["m1"]["hubspot"] == ("pending", 0, None)  # untouched: the other worker owns it
    assert states["m2"]["hubspot"] == ("delivered", 1, None)


def test_a_batch_slower_to_prepare_than_one_lease_keeps_its_leases(make_runtime):
    """Media for a whole batch can take longer than a lease: the worker renews the batch's
    leases while preparing, so the batch is written (once) instead of being lost forever."""
    import time

    from connector.render import default_media_views

    writer = BatchWriter()
    rt, client = _setup(make_runtime, writer, size=6)
    rt.config.worker.lease_seconds = 0.6  # validated >= 5 in files; tiny here to keep the test fast

    def slow_media(event, _d):
        time.sleep(0.25)  # 6 items: 1.5 s of preparing, more than two leases
        return default_media_views(event), ""
    rt.pipeline.media = slow_media
    for i in range(1, 7):
        _post(client, f"m{i}")

    rt.worker().run_once()

    assert writer.calls == [["m1", "m2", "m3", "m4", "m5", "m6"]]
    assert {m: s["hubspot"][0] for m, s in _states(rt).items()} == {f"m{i}": "delivered" for i in range(1, 7)}


def test_a_delivery_slower_to_prepare_than_its_lease_is_not_taken_over_meanwhile(make_runtime):
    import time

    from connector.render import default_media_views
    writer = BatchWriter()
    rt, client = _setup(make_runtime, writer, size=1)
    rt.config.worker.lease_seconds = 0.6  # validated >= 5 in files; tiny here to keep the test fast
    _post(client, "m1")
    [d] = [d for d in rt.store.claim("slow-worker", lease_seconds=0.6) if d.target == "hubspot"]
    taken = []

    def slow_media(event, _d):  # media from a slow host: longer than the lease
        time.sleep(1.0)
        taken.extend(rt.store.claim("other-worker", lease_seconds=60, target="hubspot"))
        return default_media_views(event), ""
    rt.pipeline.media = slow_media
    assert rt.pipeline.process_batch([d]) == ["delivered"]
    assert taken == [] and writer.calls == [["m1"]]  # its lease was kept alive: no second worker took it


def test_a_batch_item_taken_over_while_the_batch_was_prepared_is_not_written(make_runtime):
    writer = BatchWriter()
    rt, client = _setup(make_runtime, writer, size=3)
    for m in ("m1", "m2", "m3"):
        _post(client, m)
    batch = [d for d in rt.store.claim("slow-worker", lease_seconds=60, limit=10) if d.target == "hubspot"]
    real_media = rt.pipeline.media
    prepared = []

    def media(event, d):
        prepared.append(d.message_id)
        if d.message_id == "m3":  # meanwhile m1's lease ran out (renewals failed) and another worker took it
            from connector.store import deliveries
            with rt.store.engine.begin() as conn:
                conn.execute(deliveries.update().where(deliveries.c.message_id == "m1").values(lease_until=0))
            [taken] = rt.store.claim("other-worker", lease_seconds=60, target="hubspot", limit=1)
            assert taken.message_id == "m1"
        return real_media(event, d)

    rt.pipeline.media = media
    states = rt.pipeline.process_batch(sorted(batch, key=lambda d: d.message_id))
    assert states == ["lost", "delivered", "delivered"]
    assert writer.calls == [["m2", "m3"]]  # m1 belongs to the other worker now
