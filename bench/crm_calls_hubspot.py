"""HubSpot API calls per 1,000 MMS events from 200 known contacts.

Runs the real writer and the real hubspot-api-client against a local fake portal
(tests/hubspot_fake.py on pytest-httpserver: contacts with phones typed in several
formats, communications, batch and search endpoints) and counts the requests that reach
it. Three ways of writing the same events:

- batched: ``deliver_many`` in bursts of ``--batch`` (what the worker's batcher hands over);
- per message: ``deliver`` one by one (contact cache on);
- naive: one search and one create per message (the contact cache off).

With ``--new-numbers`` none of the numbers is in the portal yet and
``hubspot.unknown_number.action`` is ``create`` (a campaign's first replies): contacts are
created too, a batch create per 100 numbers when batched.

Usage: python bench/crm_calls_hubspot.py [--events 1000] [--contacts 200] [--batch 100]
                                         [--new-numbers]
Other benches can ``from bench.crm_calls_hubspot import count_calls``.
"""
from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pytest_httpserver import HTTPServer  # noqa: E402

from connector.config import load_config  # noqa: E402
from connector.crm.base import DeliveryContext  # noqa: E402
from bench.workload import mms_payloads  # noqa: E402
from connector.providers import aircall  # noqa: E402
from connector.render import default_media_views  # noqa: E402
from connector.runtime import Runtime  # noqa: E402
from tests.hubspot_fake import FakeHubSpot  # noqa: E402

FORMATS = ["(415) 555-{:04d}", "+1 415 555 {:04d}", "415555{:04d}", "+1415555{:04d}"]


def events(n_events: int, n_contacts: int) -> list:
    return [aircall.parse(p) for p in mms_payloads(n_events, n_contacts)]


def count_calls(mode: str = "batched", n_events: int = 1000, n_contacts: int = 200,
                batch: int = 100, new_numbers: bool = False) -> dict:
    """Write the events in ``mode``; returns {"calls": Counter, "entries": n, "seconds": s}."""
    evs = events(n_events, n_contacts)
    server = HTTPServer(host="127.0.0.1", port=0)
    server.start()
    try:
        hub = FakeHubSpot(server)
        for i in range(0 if new_numbers else n_contacts):
            hub.add_contact(phone=FORMATS[i % 4].format(i))
        with tempfile.TemporaryDirectory() as tmp:
            cfg = load_config(data={
                "store": {"url": f"sqlite:///{tmp}/bench.db"},
                "aircall": {"webhook_tokens": ["bench"]},
                "salesforce": {"mode": "off"},
                # Pacing off: this counts calls; the drain bench measures time under the limit.
                "hubspot": {"mode": "live", "base_url": hub.url, "access_token": "pat-test",
                            "mapping": str(ROOT / "mappings/hubspot.yaml"), "batch_size": batch,
                            "requests_per_10s": 1_000_000, "searches_per_second": 1_000_000,
                            "contact_cache_ttl": 0 if mode == "naive" else 86400,
                            "unknown_number": {"action": "create" if new_numbers else "skip"}},
            })
            rt = Runtime(cfg)
            writer = rt.pipeline.writers["hubspot"]
            items = [(e, DeliveryContext(store=rt.store, config=cfg, media=default_media_views(e)))
                     for e in evs]
            t0 = time.perf_counter()
            failed = 0
            if mode == "batched":
                for start in range(0, len(items), batch):
                    results = writer.deliver_many(items[start:start + batch])
                    failed += sum(1 for r in results if isinstance(r, Exception))
            else:
                for e, ctx in items:
                    writer.deliver(e, ctx)
            took = time.perf_counter() - t0
            rt.store.engine.dispose()
        assert len(hub.comms) == n_events and not failed, (len(hub.comms), failed)
        assert len({c.associations[0][0] for c in hub.comms.values()}) == n_contacts
        calls = Counter(f"{m} {p}" for m, p, _ in hub.requests)
        return {"calls": calls, "entries": len(hub.comms), "seconds": took}
    finally:
        server.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=1000)
    ap.add_argument("--contacts", type=int, default=200)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--new-numbers", action="store_true", help="numbers not in the portal yet (created)")
    args = ap.parse_args()
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # the fake's access log
    who = "new numbers (contacts created)" if args.new_numbers else "known contacts"
    print(f"HubSpot API calls for {args.events} MMS events from {args.contacts} {who}")
    print(f"{'mode':<14}{'calls':>7}  {'per 1,000':>9}  entries  {'seconds':>7}  breakdown")
    for mode in ("batched", "per-message", "naive"):
        if mode == "naive" and args.new_numbers:
            continue  # without the contact cache every message would create another contact
        out = count_calls(mode, args.events, args.contacts, args.batch, args.new_numbers)
        total = sum(out["calls"].values())
        short = {k.replace("/crm/v3/objects/", "").replace("/crm/v4/associations/", "v4 "): v
                 for k, v in out["calls"].items()}
        print(f"{mode:<14}{total:>7}  {total * 1000 / args.events:>9.1f}  {out['entries']:>7}  "
              f"{out['seconds']:>7.1f}  " + ", ".join(f"{k} {v}" for k, v in sorted(short.items())))
    print("goal: at most 25 calls per 1,000 events (batched)")


if __name__ == "__main__":
    main()
