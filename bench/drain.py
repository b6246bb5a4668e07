"""Time to drain 1,000 MMS events into a fake HubSpot that answers in 100 ms and
enforces HubSpot's 100 requests per rolling 10 s (429 beyond), with zero 429s wanted.

The real writer, the real hubspot-api-client, the real worker (batching through
``deliver_many``) and the real rate limiter; the fake portal is tests/hubspot_fake.py
with latency and a rolling-window limit added. Two set-ups:

- embedded: one process, 2 worker threads, SQLite, in-process bucket;
- scaled out (when PostgreSQL and Redis are reachable): two ``mms-connector worker``
  processes sharing the Redis bucket for the portal, PostgreSQL store.

    python bench/drain.py [--events 1000] [--contacts 200]
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pytest_httpserver import HTTPServer  # noqa: E402

from bench.workload import mms_payloads  # noqa: E402
from connector.config import load_config  # noqa: E402
from connector.providers import aircall  # noqa: E402
from connector.runtime import Runtime  # noqa: E402
from tests.hubspot_fake import LimitedHubSpot  # noqa: E402

PG_URL = os.environ.get("CONNECTOR_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("CONNECTOR_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
FORMATS = ["(415) 555-{:04d}", "+1 415 555 {:04d}", "415555{:04d}", "+1415555{:04d}"]


def payloads(n_events: int, n_contacts: int) -> list[dict]:
    out = mms_payloads(n_events, n_contacts, prefix="drain")
    for p in out:
        # CRM throughput only: the fixture's media host does not exist here, and fetching
        # (bench/media_zip_memory.py measures media) would time the resolver, not the CRM.
        p["data"].pop("media_details", None)
    return out


def ingest_all(store, items: list[dict]) -> None:
    for p in items:
        e = aircall.parse(p)
        store.ingest(dedup_key=e.dedup_key, provider=e.provider, message_id=e.message_id,
                     event_name=e.event, status=e.status, direction=e.direction, external=e.external,
                     occurred_at=e.occurred_at.timestamp(), payload=json.dumps(p), targets=["hubspot"])


def config_data(store_url: str, queue_url: str, hub_url: str) -> dict:
    return {"store": {"url": store_url}, "aircall": {"webhook_tokens": ["bench"]},
            "queue": {"url": queue_url, "prefix": f"bench-{uuid.uuid4().hex[:8]}"},
            "worker": {"threads": 2, "poll_interval": 0.2, "batch_wait": 0.2},
            "salesforce": {"mode": "off"},
            "hubspot": {"mode": "live", "base_url": hub_url, "access_token": "pat-test",
                        "mapping": str(ROOT / "mappings/hubspot.yaml"), "requests_per_10s": 100},
            "logging": {"level": "WARNING"}}


def wait_drained(store, n: int, timeout: float) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if store.pending_count() == 0:
            return time.monotonic() - t0
        time.sleep(0.05)
    raise TimeoutError(f"{store.pending_count()} of {n} deliveries still open after {timeout:.0f}s")


def outcome(store, hub: LimitedHubSpot, took: float, label: str, n: int) -> None:
    events = store.list_events(limit=n + 10)
    states = Counter(e["targets"]["hubspot"]["state"] for e in events)
    calls = Counter(f"{m} {p}" for m, p, _ in hub.requests)
    print(f"  {label:<44}{took:6.1f} s   429s received {hub.too_many}   CRM calls {sum(calls.values())}"
          f"   entries {len(hub.comms)}   states {dict(states)}   peak requests in 10 s {hub.peak}")


def embedded(n_events: int, n_contacts: int, timeout: float) -> None:
    server = HTTPServer(host="127.0.0.1", port=0, threaded=True)
    server.start()
    try:
        hub = LimitedHubSpot(server)
        for i in range(n_contacts):
            hub.add_contact(phone=FORMATS[i % 4].format(i))
        with tempfile.TemporaryDirectory() as tmp:
            rt = Runtime(load_config(data=config_data(f"sqlite:///{tmp}/drain.db", "", hub.url)))
            ingest_all(rt.store, payloads(n_events, n_contacts))
            worker = rt.worker()
            worker.start()
            try:
                took = wait_drained(rt.store, n_events, timeout)
            finally:
                worker.stop()
            outcome(rt.store, hub, took, "embedded: 1 process, 2 threads, SQLite", n_events)
            rt.store.engine.dispose()
    finally:
        server.stop()


def scaled_out(n_events: int, n_contacts: int, timeout: float, processes: int = 2) -> None:
    try:
        import redis
        from sqlalchemy import create_engine, text
        from sqlalchemy.engine import make_url
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping()
        base = make_url(PG_URL)
        name = f"connector_drain_{uuid.uuid4().hex[:8]}"
        admin = create_engine(base, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:
        print(f"  (PostgreSQL/Redis not reachable, scaled-out drain skipped: {type(exc).__name__})")
        return
    server = HTTPServer(host="127.0.0.1", port=0, threaded=True)
    server.start()
    procs: list[subprocess.Popen] = []
    try:
        hub = LimitedHubSpot(server)
        for i in range(n_contacts):
            hub.add_contact(phone=FORMATS[i % 4].format(i))
        with tempfile.TemporaryDirectory() as tmp:
            import yaml
            url = base.set(database=name).render_as_string(hide_password=False)
            data = config_data(url, REDIS_URL, hub.url)
            path = Path(tmp) / "config.yaml"
            path.write_text(yaml.safe_dump(data))
            rt = Runtime(load_config(path))
            ingest_all(rt.store, payloads(n_events, n_contacts))
            env = {**os.environ, "PYTHONPATH": str(ROOT)}
            procs = [subprocess.Popen([sys.executable, "-m", "connector.cli", "worker", "--config", str(path)],
                                      cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                     for _ in range(processes)]
            took = wait_drained(rt.store, n_events, timeout + 30)  # includes the processes' start-up
            outcome(rt.store, hub, took, f"scaled out: {processes} worker processes, PG + Redis", n_events)
            print("    (the scaled-out time includes starting the worker processes)")
            rt.store.engine.dispose()
            redis.Redis.from_url(REDIS_URL).delete(*redis.Redis.from_url(REDIS_URL).keys(
                f"{data['queue']['prefix']}:*") or ["-"])
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        server.stop()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def report(n_events: int = 1000, n_contacts: int = 200, timeout: float = 120) -> None:
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # the fake's access log
    print(f"\n4. Drain {n_events} message events (text only) ({n_contacts} known contacts) into a fake HubSpot: "
          "100 ms per answer, 100 requests per rolling 10 s")
    embedded(n_events, n_contacts, timeout)
    scaled_out(n_events, n_contacts, timeout)
    print("  goal: under 20 s, zero 429s received")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=1000)
    ap.add_argument("--contacts", type=int, default=200)
    args = ap.parse_args()
    report(args.events, args.contacts)


if __name__ == "__main__":
    main()
