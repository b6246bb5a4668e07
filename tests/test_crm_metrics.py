"""What /metrics tells an operator about CRM API use: requests sent by result, time held
back by the connector's own rate-limit buckets, contact lookups answered from the cache
or the CRM, and Salesforce's own count of the day's API requests."""
from __future__ import annotations

import copy

import responses

from conftest import aircall_payload
from connector.ratelimit import TokenBucket
from connector.web import create_app
from sf_fake import add_login, add_search, calls_to, contact
from test_metrics_health import samples, scrape, value
from test_salesforce_writer import UPSERT, rsps, sf  # noqa: F401  (fixtures)
from tests.hubspot_fake import rate_limited
from tests.hubspot_helpers import hub, live, post, run  # noqa: F401  (fixtures)

REQUESTS = "mms_connector_crm_requests_total"
LOOKUPS = "mms_connector_contact_lookups_total"
COMMS = "/crm/v3/objects/communications"


def metrics(rt) -> dict:
    return scrape(create_app(rt.config, rt).test_client())


def test_hubspot_requests_by_result_and_contact_lookups_by_source(live, hub):
    hub.add_contact(phone="+14155550142")
    hub.fail_next("POST", COMMS, rate_limited("TEN_SECONDLY_ROLLING", retry_after="7"))
    rt = live()
    post(rt, "mms_received")
    run(rt)
    m = metrics(rt)
    assert value(m, REQUESTS, target="hubspot", result="rate_limited") == 1
    assert value(m, REQUESTS, target="hubspot", result="ok") == len(hub.requests) - 1
    assert value(m, REQUESTS, target="hubspot", result="error") == 0
    assert value(m, LOOKUPS, target="hubspot", source="crm") == 1
    assert value(m, LOOKUPS, target="hubspot", source="cache") == 0

    # A second message from the same number: its contact comes from the cache, no search.
    searches = len(hub.calls("POST", "/crm/v3/objects/contacts/search"))
    post(rt, "mms_received", id="second-message")
    run(rt)
    m = metrics(rt)
    assert len(hub.calls("POST", "/crm/v3/objects/contacts/search")) == searches
    assert value(m, LOOKUPS, target="hubspot", source="cache") == 1
    assert value(m, LOOKUPS, target="hubspot", source="crm") == 1
    assert value(m, REQUESTS, target="hubspot", result="ok") == len(hub.requests) - 1


def test_time_held_by_the_rate_limit_bucket_is_counted(live, hub):
    hub.add_contact(phone="+14155550142")
    rt = live()
    slept = []
    clock = [1000.0]

    def sleep(seconds):
        slept.append(seconds)
        clock[0] += seconds

    # One request at a time, one per 2 s: every request after the first waits its turn.
    rt.pipeline.writers["hubspot"].api.bucket = TokenBucket(1, per=2, capacity=1,
                                                            clock=lambda: clock[0], sleep=sleep)
    post(rt, "mms_received")
    run(rt)
    assert len(hub.requests) >= 2 and len(slept) == len(hub.requests) - 1
    total = value(metrics(rt), "mms_connector_rate_limit_wait_seconds_total", target="hubspot")
    assert total == sum(slept) and total > 0


def test_salesforce_request_limit_exceeded_counts_as_rate_limited(sf, rsps):
    rt, post_payload, run_due = sf()
    add_login(rsps)
    add_search(rsps, [contact("003C", "(415) 555-0142")])
    rsps.add(responses.PATCH, UPSERT + "abdcSM77mms0001", status=403,
             json=[{"message": "TotalRequests Limit exceeded.", "errorCode": "REQUEST_LIMIT_EXCEEDED"}])
    post_payload(aircall_payload("mms_received"))
    run_due()
    m = metrics(rt)
    assert value(m, REQUESTS, target="salesforce", result="rate_limited") == 1
    assert value(m, REQUESTS, target="salesforce", result="ok") == 1  # the search
    assert value(m, REQUESTS, target="salesforce", result="error") == 0
    assert value(m, LOOKUPS, target="salesforce", source="crm") == 1


def test_salesforce_requests_cache_hits_and_the_orgs_api_usage(sf, rsps):
    rt, post_payload, run_due = sf()
    add_login(rsps)
    add_search(rsps, [contact("003C", "(415) 555-0142")])
    second = copy.deepcopy(aircall_payload("mms_received"))
    second["data"]["id"] = "second-message"
    for n, message_id in enumerate(("abdcSM77mms0001", "second-message")):
        rsps.add(responses.PATCH, UPSERT + message_id, status=201,
                 json={"id": f"00T{n}", "success": True, "errors": [], "created": True},
                 headers={"Sforce-Limit-Info": f"api-usage={41234 + n}/100000"})
    post_payload(aircall_payload("mms_received"))
    run_due()
    post_payload(second)
    run_due()
    m = metrics(rt)
    assert len(calls_to(rsps, "GET", "/search/")) == 1
    assert value(m, LOOKUPS, target="salesforce", source="crm") == 1
    assert value(m, LOOKUPS, target="salesforce", source="cache") == 1
    assert value(m, REQUESTS, target="salesforce", result="ok") == 3  # one search, two upserts
    assert value(m, "mms_connector_crm_api_usage", target="salesforce", figure="used") == 41235
    assert value(m, "mms_connector_crm_api_usage", target="salesforce", figure="allocation") == 100000


def test_dry_run_targets_make_no_requests_and_report_none(make_runtime):
    rt = make_runtime()
    client = create_app(rt.config, rt).test_client()
    client.post("/webhooks/aircall", json=aircall_payload("mms_received"))
    for d in rt.store.claim("test", 60, limit=10):
        rt.pipeline.process(d)
    m = scrape(client)
    assert not [k for k in m if k[0] in (REQUESTS, LOOKUPS)]


COUNT_IN_A_PROCESS = """
import sys
from connector.metrics import Metrics
m = Metrics()
m.crm_request("hubspot", "ok")
m.crm_request("hubspot", "ok")
m.rate_limit_wait("hubspot", 0.25)
m.contact_lookups("salesforce", "cache", 3)
m.api_usage("salesforce", int(sys.argv[1]), 100000)
"""
SCRAPE = """
from connector.metrics import Metrics
print(Metrics().exposition().decode())
"""


def test_several_processes_add_up_in_prometheus_multiprocess_mode(tmp_path):
    """README: with PROMETHEUS_MULTIPROC_DIR shared, any process's scrape sums them all
    (and the org's usage is the figure reported last)."""
    import subprocess
    import sys
    from pathlib import Path

    env = {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path), "PATH": "/usr/bin:/bin",
           "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    for used in ("500", "700"):
        subprocess.run([sys.executable, "-c", COUNT_IN_A_PROCESS, used], env=env, check=True, timeout=60)
    text = subprocess.run([sys.executable, "-c", SCRAPE], env=env, check=True, timeout=60,
                          capture_output=True, text=True).stdout
    m = samples(text)
    assert value(m, REQUESTS, target="hubspot", result="ok") == 4
    assert value(m, "mms_connector_rate_limit_wait_seconds_total", target="hubspot") == 0.5
    assert value(m, LOOKUPS, target="salesforce", source="cache") == 6
    assert value(m, "mms_connector_crm_api_usage", target="salesforce", figure="used") == 700
