"""Fixtures for the HubSpot tests: a fake portal and a live-mode runtime pointed at it."""
from __future__ import annotations

import time

import pytest

from tests.conftest import aircall_payload
from tests.hubspot_fake import FakeHubSpot


@pytest.fixture
def hub(httpserver):
    return FakeHubSpot(httpserver)


@pytest.fixture
def live(make_runtime, hub):
    """make(**hubspot_keys) -> runtime in live HubSpot mode against the fake; waits are recorded."""
    def make(**hs):
        cfg = {"mode": "live", "base_url": hub.url, "access_token": "pat-test",
               "retry_initial": 0.001, "retry_max": 0.002, **hs}
        rt = make_runtime(hubspot=cfg, salesforce={"mode": "off"})
        writer = rt.pipeline.writers["hubspot"]
        rt.waits = []
        writer.api.sleep = rt.waits.append  # in-call retry waits, recorded instead of slept
        writer.contacts.poll = 0.01
        return rt
    return make


def post(rt, name: str, **data) -> dict:
    """Post an Aircall fixture (``data`` overrides fields of its ``data``) to the webhook."""
    from connector.web import create_app
    payload = aircall_payload(name)
    payload["data"].update(data)
    resp = create_app(rt.config, rt).test_client().post("/webhooks/aircall", json=payload)
    assert resp.status_code == 200, resp.get_json()
    return resp.get_json()


def run(rt, later: float = 0) -> None:
    """Process, once each, the deliveries due now (or ``later`` seconds from now)."""
    from sqlalchemy import update

    from connector.store import deliveries
    store, seen = rt.store, set()
    while True:
        batch = store.claim("test", 60, limit=1, now=time.time() + later)
        if not batch:
            return
        if batch[0].id in seen:  # due again at once (parked for less than ``later``): leave it
            with store.engine.begin() as conn:
                conn.execute(update(deliveries).where(deliveries.c.id == batch[0].id)
                             .values(lease_until=None, lease_owner=None))
            return
        seen.add(batch[0].id)
        rt.pipeline.process(batch[0])


def state(rt, message_id: str) -> list[dict]:
    return [e["targets"]["hubspot"] for e in rt.store.list_events(limit=50)
            if e["message_id"] == message_id]
