"""A worker killed with SIGKILL in the middle of a CRM write: still exactly one entry."""
from __future__ import annotations

import os
import signal

import pytest

from bench.fakecrm import FakeCRM
from connector.config import load_config
from connector.runtime import Runtime
from connector.web import create_app
from tests.conftest import aircall_payload, base_config
from tests.procs import start, stop, wait_for, write_config

MESSAGE = "abdcSM77mms0001"


@pytest.mark.parametrize("hang", ["after", "before"],
                         ids=["crm-stored-it-then-worker-died", "worker-died-before-crm-stored-it"])
def test_sigkill_mid_write_leaves_exactly_one_entry(tmp_path, hang):
    cfg_path = write_config(tmp_path / "config.yaml", base_config(
        tmp_path, salesforce={"mode": "off"},
        worker={"threads": 1, "lease_seconds": 5, "sweep_interval": 0.5, "poll_interval": 0.05}))
    rt = Runtime(load_config(cfg_path))
    client = create_app(rt.config, rt).test_client()
    assert client.post("/webhooks/aircall", json=aircall_payload("mms_received")).get_json()["status"] == "stored"

    with FakeCRM() as crm:
        crm.hang_create = hang
        args = ["--config", str(cfg_path), "--crm-url", crm.url]
        first = start(args, tmp_path / "worker1.log", module="bench.fake_worker")
        try:
            assert crm.hung.wait(30), (tmp_path / "worker1.log").read_text()
            os.kill(first.pid, signal.SIGKILL)
            first.wait(10)
        finally:
            stop(first)
        assert first.returncode == -signal.SIGKILL
        # The delivery is still open, leased by the dead worker.
        row = rt.store.list_events()[0]["targets"]["hubspot"]
        assert row["state"] == "pending"
        crm.release.set()

        second = start(args, tmp_path / "worker2.log", module="bench.fake_worker")
        try:
            wait_for(lambda: rt.store.list_events()[0]["targets"]["hubspot"]["state"] == "delivered",
                     timeout=40, what="delivery after the lease ran out")
        finally:
            stop(second)
        entries = crm.by_external_id()

    assert list(entries) == [MESSAGE]
    assert len(entries[MESSAGE]) == 1
    record = rt.store.get_record("hubspot", MESSAGE)
    assert record["object_id"] == entries[MESSAGE][0]["id"]
    assert record["status"] == "received"
    # The second worker looked before creating: it adopted the entry the dead one made,
    # or created it once when the CRM never got the first request through.
    answered = [(method, status) for _, method, _, status in crm.requests]
    delivery = rt.store.get_delivery(row["delivery_id"])
    if hang == "after":
        assert answered == [("GET", 200)]
        assert delivery["result"] == {"operation": "adopted", "id": record["object_id"]}
    else:
        assert answered == [("GET", 200), ("POST", 201)]
        assert delivery["result"] == {"operation": "create", "id": record["object_id"]}


@pytest.mark.parametrize("hang", ["after", "before"],
                         ids=["hubspot-stored-it-then-worker-died", "worker-died-before-hubspot-stored-it"])
def test_sigkill_mid_write_live_hubspot_writer(tmp_path, httpserver, hang):
    """The same with the live HubSpot writer (hubspot-api-client) against a fake portal."""
    import threading

    from tests.hubspot_fake import FakeHubSpot, hubspot_error

    hub = FakeHubSpot(httpserver)
    hub.add_contact(phone="+14155550142")
    comms = "/crm/v3/objects/communications"
    hung, release, armed = threading.Event(), threading.Event(), [True]
    route = hub._route

    def hanging_route(request, body):
        first_create = armed[0] and request.method == "POST" and request.path in (comms, comms + "/batch/create")
        if not first_create:
            return route(request, body)
        armed[0] = False
        answer = route(request, body) if hang == "after" else hubspot_error(503, "unavailable")
        hung.set()
        release.wait(60)  # the worker is SIGKILLed meanwhile: nobody reads this answer
        return answer

    hub._route = hanging_route
    cfg_path = write_config(tmp_path / "config.yaml", base_config(
        tmp_path, salesforce={"mode": "off"},
        hubspot={"mode": "live", "base_url": hub.url, "access_token": "pat-test"},
        worker={"threads": 1, "lease_seconds": 5, "sweep_interval": 0.5, "poll_interval": 0.05}))
    rt = Runtime(load_config(cfg_path))
    client = create_app(rt.config, rt).test_client()
    assert client.post("/webhooks/aircall", json=aircall_payload("mms_received")).get_json()["status"] == "stored"

    first = start(["worker", "--config", str(cfg_path)], tmp_path / "worker1.log")
    try:
        assert hung.wait(30), (tmp_path / "worker1.log").read_text()
        os.kill(first.pid, signal.SIGKILL)
        first.wait(10)
    finally:
        stop(first)
        release.set()
    assert rt.store.list_events()[0]["targets"]["hubspot"]["state"] == "pending"
    assert len(hub.comms) == (1 if hang == "after" else 0)

    second = start(["worker", "--config", str(cfg_path)], tmp_path / "worker2.log")
    try:  # lease (5 s), then HubSpot's search lag (10 s) before looking for the lost create
        wait_for(lambda: rt.store.list_events()[0]["targets"]["hubspot"]["state"] == "delivered",
                 timeout=60, what="delivery by the second worker")
    finally:
        stop(second)
    assert len(hub.comms) == 1
    [comm_id] = hub.comms
    assert rt.store.get_record("hubspot", MESSAGE)["object_id"] == comm_id
    creates = [r for r in hub.calls("POST") if r[1] in (comms, comms + "/batch/create")]
    assert len(creates) == (1 if hang == "after" else 2)
