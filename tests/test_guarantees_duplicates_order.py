"""The same webhook 5 times at once: one stored row, one entry. Statuses out of order:
the final one stays."""
from __future__ import annotations

import threading

import requests

from bench.fakecrm import FakeCRM, HttpWriter
from connector.config import load_config
from connector.pipeline.writers import load_mapping
from connector.store import Store, deliveries, inbox
from connector.web import create_app
from tests.conftest import aircall_payload, base_config
from tests.procs import free_port, start, stop, wait_for, wait_http, write_config

from sqlalchemy import func, select


def _count(store: Store, table) -> int:
    with store.engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(table)).scalar()


def test_same_webhook_five_times_concurrently_one_row_one_entry(tmp_path):
    port = free_port()
    cfg_path = write_config(tmp_path / "config.yaml", base_config(
        tmp_path, server={"port": port}, salesforce={"mode": "off"}, worker={"threads": 2}))
    server = start(["serve", "--no-worker", "--config", str(cfg_path)], tmp_path / "server.log")
    url = f"http://127.0.0.1:{port}/webhooks/aircall"
    body = aircall_payload("mms_received")
    barrier = threading.Barrier(5)
    answers: list[tuple[int, dict]] = []

    def send():
        with requests.Session() as s:
            barrier.wait()
            r = s.post(url, json=body, timeout=10)
            answers.append((r.status_code, r.json()))

    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", server)
        threads = [threading.Thread(target=send) for _ in range(5)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(20)
    finally:
        stop(server)

    assert sorted(a[1]["status"] for a in answers) == ["duplicate"] * 4 + ["stored"]
    assert all(code == 200 for code, _ in answers)
    store = Store(f"sqlite:///{tmp_path / 'connector.db'}")
    assert _count(store, inbox) == 1 and _count(store, deliveries) == 1

    with FakeCRM() as crm:
        worker = start(["--config", str(cfg_path), "--crm-url", crm.url], tmp_path / "worker.log",
                       module="bench.fake_worker")
        try:
            wait_for(lambda: store.list_events()[0]["targets"]["hubspot"]["state"] == "delivered",
                     what="delivered")
        finally:
            stop(worker)
        entries = crm.by_external_id()
    assert list(entries) == ["abdcSM77mms0001"] and len(entries["abdcSM77mms0001"]) == 1


def test_status_out_of_order_final_state_stays(make_runtime):
    rt = make_runtime(salesforce={"mode": "off"})
    client = create_app(rt.config, rt).test_client()
    with FakeCRM() as crm:
        rt.pipeline.writers = {"hubspot": HttpWriter("hubspot", crm.url, load_mapping(rt.config, "hubspot"))}
        # delivered arrives first, then the late "sent", then the original message.sent (pending)
        for name in ("status_delivered", "status_sent", "message_sent", "status_delivered"):
            r = client.post("/webhooks/aircall", json=aircall_payload(name)).get_json()
            rt.worker().run_once()
            assert r["status"] in ("stored", "duplicate")
        entries = crm.by_external_id()
        calls = [(m, s) for _, m, _, s in crm.requests]

    (entry,) = entries["abcdSMc6Dc8ea2bc71ab19102c3de4f60ba18aa"]
    assert "Delivered" in entry["properties"]["hs_communication_body"]
    assert rt.store.get_record("hubspot", "abcdSMc6Dc8ea2bc71ab19102c3de4f60ba18aa")["status"] == "delivered"
    assert calls == [("POST", 201)]  # the late statuses changed nothing in the CRM
    results = [e["targets"]["hubspot"] for e in rt.store.list_events()]
    assert sorted(r["state"] for r in results) == ["delivered"] * 3
    assert sum(1 for r in results if r["result"].get("unchanged")) == 2


def test_status_in_order_updates_the_same_entry(make_runtime):
    rt = make_runtime(salesforce={"mode": "off"})
    client = create_app(rt.config, rt).test_client()
    with FakeCRM() as crm:
        rt.pipeline.writers = {"hubspot": HttpWriter("hubspot", crm.url, load_mapping(rt.config, "hubspot"))}
        for name in ("message_sent", "status_sent", "status_delivered"):
            client.post("/webhooks/aircall", json=aircall_payload(name))
            rt.worker().run_once()
        entries = crm.by_external_id()
        calls = [m for _, m, _, _ in crm.requests]
    (entry,) = entries["abcdSMc6Dc8ea2bc71ab19102c3de4f60ba18aa"]
    assert calls == ["POST", "PATCH", "PATCH"]
    assert "Delivered" in entry["properties"]["hs_communication_body"]
