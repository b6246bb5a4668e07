"""GET /healthz, /readyz and /metrics (Prometheus text, per-app registry)."""
from __future__ import annotations

import socket

from prometheus_client.parser import text_string_to_metric_families

from connector.crm.base import PermanentError, RateLimited, TransientError
from connector.web import create_app
from tests.conftest import aircall_payload


def samples(text: str) -> dict:
    """A Prometheus text exposition's samples by (name, sorted labels), as ``value`` reads them."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def scrape(client) -> dict:
    r = client.get("/metrics")
    assert r.status_code == 200
    assert r.content_type.startswith("text/plain")
    return samples(r.get_data(as_text=True))


def value(samples, name, **labels):
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


HOOK = "/webhooks/aircall"


def test_webhook_results_and_ack_latency(make_runtime):
    rt = make_runtime(server={"max_body_bytes": 2048})
    client = create_app(rt.config, rt).test_client()
    assert client.post(HOOK, json=aircall_payload("sms_received")).get_json()["status"] == "stored"
    assert client.post(HOOK, json=aircall_payload("sms_received")).get_json()["status"] == "duplicate"
    assert client.post(HOOK, json=aircall_payload("call_created")).get_json()["status"] == "ignored"
    assert client.post(HOOK, json=aircall_payload("sms_received", token="forged")).status_code == 401
    assert client.post(HOOK, data=b"{not json", content_type="application/json").status_code == 400
    assert client.post(HOOK, data=b"x" * 5000, content_type="application/json").status_code == 413
    assert client.get("/no/such/path").status_code == 404  # not counted: no inbound route

    m = scrape(client)
    for result in ("stored", "duplicate", "ignored", "rejected_auth", "rejected_payload", "too_large"):
        assert value(m, "mms_connector_webhooks_total", endpoint=HOOK, result=result) == 1, result
    assert value(m, "mms_connector_ack_latency_seconds_count", endpoint=HOOK) == 6
    assert value(m, "mms_connector_ack_latency_seconds_bucket", endpoint=HOOK, le="5.0") == 6
    # The stored event waits for both CRMs: queue depth comes from the store.
    assert value(m, "mms_connector_queue_depth", target="hubspot", state="pending") == 1
    assert value(m, "mms_connector_queue_depth", target="salesforce", state="pending") == 1
    assert value(m, "mms_connector_oldest_open_age_seconds", target="hubspot") >= 0
    assert value(m, "mms_connector_store_up") == 1


def test_each_app_has_its_own_registry(make_runtime):
    a = create_app(make_runtime().config).test_client()
    a.post(HOOK, json=aircall_payload("call_created"))
    b_rt = make_runtime()
    b = create_app(b_rt.config, b_rt).test_client()
    assert value(scrape(b), "mms_connector_webhooks_total", endpoint=HOOK, result="ignored") == 0


class Flaky:
    def __init__(self, exc):
        self.exc = exc
        self.name = "hubspot"

    def deliver(self, event, ctx):
        raise self.exc


def test_crm_writes_retries_dead_letters(make_runtime):
    rt = make_runtime(salesforce={"mode": "off"}, worker={"max_attempts": 2})
    client = create_app(rt.config, rt).test_client()
    client.post(HOOK, json=aircall_payload("sms_received"))
    client.post(HOOK, json=aircall_payload("mms_received"))
    pipeline = rt.pipeline
    real = pipeline.writers["hubspot"]
    d1, d2 = rt.store.claim("t", 60, limit=2)
    pipeline.writers = {"hubspot": Flaky(RateLimited("429", retry_after=30))}
    pipeline.process(d1)
    pipeline.writers = {"hubspot": Flaky(TransientError("HubSpot 503"))}
    pipeline.process(d2)
    m = scrape(client)
    assert value(m, "mms_connector_crm_writes_total", target="hubspot", outcome="rate_limited") == 1
    assert value(m, "mms_connector_crm_writes_total", target="hubspot", outcome="retrying") == 1
    assert value(m, "mms_connector_retries_total", target="hubspot", reason="rate_limited") == 1
    assert value(m, "mms_connector_retries_total", target="hubspot", reason="error") == 1
    assert value(m, "mms_connector_queue_depth", target="hubspot", state="retrying") == 2

    pipeline.writers = {"hubspot": Flaky(PermanentError("HubSpot 400"))}
    with rt.store.engine.begin() as conn:  # make both due now, the 429's park over
        from connector.store import deliveries, parks
        conn.execute(deliveries.update().values(next_at=0))
        conn.execute(parks.delete())
    rt.worker().run_once()
    pipeline.writers = {"hubspot": real}
    m = scrape(client)
    assert value(m, "mms_connector_crm_writes_total", target="hubspot", outcome="dead") == 2
    assert value(m, "mms_connector_dead_lettered_total", target="hubspot") == 2
    assert value(m, "mms_connector_dead_letters", target="hubspot") == 2
    assert value(m, "mms_connector_queue_depth", target="hubspot", state="retrying") == 0

    rt.store.replay(rt.store.dead_letter_ids()[0])
    rt.worker().run_once()
    m = scrape(client)
    assert value(m, "mms_connector_crm_writes_total", target="hubspot", outcome="dry-run") == 1
    assert value(m, "mms_connector_dead_letters", target="hubspot") == 1


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_healthz_and_readyz(make_runtime):
    rt = make_runtime()
    client = create_app(rt.config, rt).test_client()
    assert client.get("/healthz").get_json() == {"status": "ok"}
    r = client.get("/readyz")
    assert r.status_code == 200
    body = r.get_json()
    assert body["status"] == "ready" and body["checks"] == {"store": "ok"}
    assert body["crm"] == {"hubspot": "no check (dry-run)", "salesforce": "no check (dry-run)"}


def test_readyz_reports_an_unreachable_queue_but_stays_ready(make_runtime):
    from tests.conftest import aircall_payload
    rt = make_runtime(queue={"url": f"redis://127.0.0.1:{_closed_port()}/0"})
    client = create_app(rt.config, rt).test_client()
    assert client.post("/webhooks/aircall", json=aircall_payload("sms_received")).status_code == 200
    r = client.get("/readyz")
    assert r.status_code == 200  # webhooks are still stored: a balancer must keep sending them
    assert r.get_json()["status"] == "ready"
    assert r.get_json()["checks"]["queue"].startswith("unreachable: ")
    assert r.get_json()["checks"]["store"] == "ok"


def test_readyz_reports_unreachable_store(make_runtime):
    rt = make_runtime()
    client = create_app(rt.config, rt).test_client()
    rt.store.engine.dispose()
    rt.store.ping = lambda: (_ for _ in ()).throw(ConnectionError("down"))
    r = client.get("/readyz")
    assert r.status_code == 503
    assert r.get_json()["checks"]["store"] == "unreachable: ConnectionError"
    # The metrics scrape still answers, saying the store did not.
    rt.store.queue_figures = lambda: (_ for _ in ()).throw(ConnectionError("down"))
    assert value(scrape(client), "mms_connector_store_up") == 0


def test_readyz_shows_writer_credential_check(make_runtime):
    rt = make_runtime()
    client = create_app(rt.config, rt).test_client()

    class Live:
        name = "hubspot"

        def __init__(self, status):
            self.status = status

        def credential_status(self):
            return self.status

    rt.pipeline.writers = {"hubspot": Live((False, "401 expired token")), "salesforce": Live(None)}
    body = client.get("/readyz").get_json()
    assert body["crm"] == {"hubspot": "failing: 401 expired token", "salesforce": "not checked yet"}
    # Webhooks are still accepted (and kept) while a CRM credential is being fixed.
    assert body["status"] == "ready"
