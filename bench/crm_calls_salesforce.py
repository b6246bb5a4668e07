"""Salesforce API calls per 1,000 MMS events from 200 known contacts.

Runs the real writer and the real simple-salesforce client against a local fake org
(`responses` answering search, upsert and sObject Collections like Salesforce does) and
counts the REST calls that reach it (logins are counted separately: they do not use the
org's API allocation). Three ways of writing the same 1,000 events:

- batched: ``deliver_many`` in bursts of 200 (what the worker's batcher hands over);
- per message: ``deliver`` one by one (contact cache on);
- naive: one search and one write per message (the contact cache off).

With ``--new-numbers`` no record has the numbers yet and ``salesforce.unknown_number.action``
is ``create_lead``: the Leads are created too (batched: one lookup and one sObject
Collections create per 200 new numbers).

Usage: python bench/crm_calls_salesforce.py [--events 1000] [--contacts 200] [--batch 200]
                                            [--new-numbers]
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import responses

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from connector.config import load_config  # noqa: E402
from connector.crm.base import DeliveryContext  # noqa: E402
from bench.workload import mms_payloads  # noqa: E402
from connector.providers import aircall  # noqa: E402
from connector.render import default_media_views  # noqa: E402
from connector.runtime import Runtime  # noqa: E402

INSTANCE = "https://bench.my.salesforce.com"
API = f"{INSTANCE}/services/data/v59.0"
LOGIN = "https://login.salesforce.com/services/Soap/u/59.0"
LOGIN_OK = f"""<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope
 xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns="urn:partner.soap.sforce.com">
<soapenv:Body><loginResponse><result><serverUrl>{INSTANCE}/services/Soap/u/59.0/00D</serverUrl>
<sessionId>BENCH</sessionId></result></loginResponse></soapenv:Body></soapenv:Envelope>"""


class FakeOrg:
    """Contacts with phones as reps type them; Tasks upserted by external id."""

    def __init__(self, contacts: dict[str, str]):
        self.contacts = contacts  # national digits -> Contact Id
        self.tasks: dict[str, dict] = {}
        self.leads: dict[str, str] = {}  # Phone -> Lead Id, created by the connector
        self.calls: Counter = Counter()

    def install(self, rsps: responses.RequestsMock) -> None:
        rsps.add(responses.POST, LOGIN, body=LOGIN_OK, content_type="text/xml")
        rsps.add_callback(responses.GET, f"{API}/search/", callback=self.search)
        rsps.add_callback(responses.PATCH, re.compile(rf"{re.escape(API)}/sobjects/Task/MMS_Message_Id__c/.+"),
                          callback=self.upsert_one)
        rsps.add_callback(responses.PATCH, f"{API}/composite/sobjects/Task/MMS_Message_Id__c",
                          callback=self.upsert_many)
        rsps.add_callback(responses.GET, f"{API}/query/", callback=self.query)
        rsps.add_callback(responses.POST, f"{API}/composite/sobjects", callback=self.create_many)

    def _answer(self, body, status=200):
        return status, {"Sforce-Limit-Info": f"api-usage={sum(self.calls.values())}/100000"}, json.dumps(body)

    def search(self, request):
        self.calls["search"] += 1
        q = parse_qs(urlparse(request.url).query)["q"][0]
        terms = re.search(r"FIND \{(.*?)\} IN PHONE FIELDS", q).group(1).split(" OR ")
        found = [{"attributes": {"type": "Contact"}, "Id": self.contacts[t],
                  "Phone": f"({t[:3]}) {t[3:6]}-{t[6:]}", "CreatedDate": "2024-01-01T00:00:00.000+0000"}
                 for t in terms if t in self.contacts]
        return self._answer({"searchRecords": found})

    def _store(self, key: str, record: dict) -> dict:
        created = key not in self.tasks
        self.tasks.setdefault(key, {"Id": f"00T{len(self.tasks):012d}"}).update(record)
        return {"id": self.tasks[key]["Id"], "success": True, "errors": [], "created": created}

    def upsert_one(self, request):
        self.calls["upsert"] += 1
        result = self._store(request.url.rsplit("/", 1)[1], json.loads(request.body))
        return self._answer(result, 201 if result["created"] else 200)

    def query(self, request):  # the lookup before creating: nothing was created behind our back
        self.calls["query"] += 1
        return self._answer({"totalSize": 0, "done": True, "records": []})

    def create_many(self, request):
        self.calls["collections create"] += 1
        out = []
        for r in json.loads(request.body)["records"]:
            self.leads[r["Phone"]] = f"00Q{len(self.leads):012d}"
            out.append({"id": self.leads[r["Phone"]], "success": True, "errors": []})
        return self._answer(out)

    def upsert_many(self, request):
        self.calls["collections upsert"] += 1
        records = json.loads(request.body)["records"]
        return self._answer([self._store(r["MMS_Message_Id__c"], r) for r in records])


def events(n_events: int, n_contacts: int) -> list:
    return [aircall.parse(p) for p in mms_payloads(n_events, n_contacts)]


def run(mode: str, evs: list, n_contacts: int, batch: int,
        new_numbers: bool = False) -> tuple[Counter, int, int]:
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(data={
            "store": {"url": f"sqlite:///{tmp}/bench.db"},
            "aircall": {"webhook_tokens": ["bench"]},
            "hubspot": {"mode": "off"},
            "salesforce": {"mode": "live", "username": "bench@acme.test", "password": "pw",
                           "security_token": "", "external_id_field": "MMS_Message_Id__c",
                           "mapping": str(ROOT / "mappings/salesforce.yaml"), "batch_size": 200,
                           "contact_cache_ttl": 0 if mode == "naive" else 86400,
                           "unknown_number": {"action": "create_lead" if new_numbers else "skip"}},
        })
        rt = Runtime(cfg)
        writer = rt.pipeline.writers["salesforce"]
        org = FakeOrg({} if new_numbers else {f"415555{i:04d}": f"003{i:012d}" for i in range(n_contacts)})
        with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
            org.install(rsps)
            items = [(e, DeliveryContext(store=rt.store, config=cfg, media=default_media_views(e)))
                     for e in evs]
            failed = 0
            if mode == "batched":
                for start in range(0, len(items), batch):
                    results = writer.deliver_many(items[start:start + batch])
                    failed += sum(1 for r in results if isinstance(r, Exception))
            else:
                for e, ctx in items:
                    writer.deliver(e, ctx)
            logins = sum(1 for c in rsps.calls if c.request.url == LOGIN)
        assert len(org.tasks) == len(evs) and not failed, (len(org.tasks), failed)
        assert len(org.leads) == (n_contacts if new_numbers else 0)
        return org.calls, logins, len(org.tasks)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=1000)
    ap.add_argument("--contacts", type=int, default=200)
    ap.add_argument("--batch", type=int, default=200)
    ap.add_argument("--new-numbers", action="store_true", help="numbers no record has yet (Leads created)")
    args = ap.parse_args()
    evs = events(args.events, args.contacts)
    who = "new numbers (Leads created)" if args.new_numbers else "known contacts"
    print(f"Salesforce API calls for {args.events} MMS events from {args.contacts} {who}")
    print(f"{'mode':<14}{'calls':>7}  {'per 1,000':>9}  {'logins':>6}  tasks  {'seconds':>7}  breakdown")
    for mode in ("batched", "per-message", "naive"):
        if mode == "naive" and args.new_numbers:
            continue  # without the contact cache every message would create another Lead
        t0 = time.perf_counter()
        calls, logins, tasks = run(mode, evs, args.contacts, args.batch, args.new_numbers)
        took = time.perf_counter() - t0
        total = sum(calls.values())
        print(f"{mode:<14}{total:>7}  {total * 1000 / args.events:>9.1f}  {logins:>6}  {tasks:>5}  "
              f"{took:>7.1f}  " + ", ".join(f"{k} {v}" for k, v in sorted(calls.items())))
    print("goal: at most 12 calls per 1,000 events (batched)")


if __name__ == "__main__":
    main()
