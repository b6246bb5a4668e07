"""Prometheus metrics: counters the web app and workers bump, figures read from the store.

Each Runtime owns its CollectorRegistry (tests build many apps in one process). Queue
depth, dead letters and the age of the oldest open delivery are read from the store at
scrape time, so they are right whichever process did the work. Under gunicorn (several
processes) set PROMETHEUS_MULTIPROC_DIR: counters and the histogram are then written
to files there and every scrape sums them across processes (prometheus_client's
multiprocess mode).
"""
from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector

PREFIX = "mms_connector"

# Acknowledgement must stay well under Aircall's 5 s; buckets cover the interesting range.
ACK_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class StoreCollector:
    """Figures computed from the store at scrape time."""

    def __init__(self, store):
        self.store = store

    def describe(self):
        return []  # figures depend on the store; skip describe-time collection

    def collect(self):
        depth = GaugeMetricFamily(f"{PREFIX}_queue_depth", "Open deliveries (pending or retrying)",
                                  labels=["target", "state"])
        dead = GaugeMetricFamily(f"{PREFIX}_dead_letters", "Deliveries in the dead-letter state now",
                                 labels=["target"])
        age = GaugeMetricFamily(f"{PREFIX}_oldest_open_age_seconds",
                                "Age of the oldest open delivery (since its webhook was stored)",
                                labels=["target"])
        up = GaugeMetricFamily(f"{PREFIX}_store_up", "1 when the store answered this scrape")
        try:
            figures = self.store.queue_figures()
        except Exception:  # an unreachable store is a figure too, not a failed scrape
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        targets = {t for t, _ in figures["counts"]}
        for t in sorted(targets):
            for state in ("pending", "retrying"):
                depth.add_metric([t, state], figures["counts"].get((t, state), 0))
            dead.add_metric([t], figures["counts"].get((t, "dead"), 0))
            age.add_metric([t], figures["oldest_open_age"].get(t, 0.0))
        yield from (up, depth, dead, age)


class Metrics:
    def __init__(self, store=None):
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.webhooks = Counter(f"{PREFIX}_webhooks", "Inbound requests by endpoint and result "
                                "(stored, duplicate, ignored, rejected_auth, rejected_payload, too_large, ...)",
                                ["endpoint", "result"], registry=r)
        self.ack_latency = Histogram(f"{PREFIX}_ack_latency_seconds",
                                     "Time from request received to response, inbound endpoints",
                                     ["endpoint"], buckets=ACK_BUCKETS, registry=r)
        self.crm_writes = Counter(f"{PREFIX}_crm_writes", "CRM write attempts by target and outcome "
                                  "(delivered, dry-run, skipped, retrying, rate_limited, dead)",
                                  ["target", "outcome"], registry=r)
        self.retries = Counter(f"{PREFIX}_retries", "Deliveries scheduled for another attempt",
                               ["target", "reason"], registry=r)
        self.dead_lettered = Counter(f"{PREFIX}_dead_lettered", "Deliveries moved to the dead letters",
                                     ["target"], registry=r)
        self.crm_requests = Counter(f"{PREFIX}_crm_requests", "Requests sent to a CRM's API by target and "
                                    "result (ok, rate_limited, error)", ["target", "result"], registry=r)
        self.rate_limit_waits = Counter(f"{PREFIX}_rate_limit_wait_seconds",
                                        "Time CRM requests waited for the connector's own rate-limit bucket",
                                        ["target"], registry=r)
        self.contact_lookup = Counter(f"{PREFIX}_contact_lookups", "Phone numbers matched to CRM records, by "
                                      "where the answer came from (cache, crm)", ["target", "source"], registry=r)
        self.api_usage_figure = Gauge(f"{PREFIX}_crm_api_usage", "The CRM's own count of API requests "
                                      "used and its allocation (Salesforce: Sforce-Limit-Info), as last reported",
                                      ["target", "figure"], registry=r, multiprocess_mode="mostrecent")
        self._inbound: dict = {}  # (endpoint, result) -> its two labelled children
        self.store = store
        if store is not None:
            r.register(StoreCollector(store))

    def exposition(self) -> bytes:
        """The text a scrape returns."""
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            reg = CollectorRegistry()
            MultiProcessCollector(reg)
            if self.store is not None:
                reg.register(StoreCollector(self.store))
            return generate_latest(reg)
        return generate_latest(self.registry)

    def inbound(self, endpoint: str, result: str, seconds: float | None) -> None:
        """One answered inbound request (webhook, trigger, API call) and its latency."""
        children = self._inbound.get((endpoint, result))
        if children is None:  # labels() costs more than the counting: once per pair
            children = self._inbound[(endpoint, result)] = (
                self.webhooks.labels(endpoint, result), self.ack_latency.labels(endpoint))
        children[0].inc()
        if seconds is not None:
            children[1].observe(seconds)

    # -- what the CRM clients report (connector.crm.base.Meter) -----------------------
    def crm_request(self, target: str, result: str) -> None:
        self.crm_requests.labels(target, result).inc()

    def rate_limit_wait(self, target: str, seconds: float) -> None:
        self.rate_limit_waits.labels(target).inc(seconds)

    def contact_lookups(self, target: str, source: str, count: int) -> None:
        self.contact_lookup.labels(target, source).inc(count)

    def api_usage(self, target: str, used: int, allocation: int) -> None:
        self.api_usage_figure.labels(target, "used").set(used)
        self.api_usage_figure.labels(target, "allocation").set(allocation)

    # -- what the pipeline reports ---------------------------------------------------
    def write(self, target: str, outcome: str) -> None:
        self.crm_writes.labels(target, outcome).inc()
        if outcome in ("retrying", "rate_limited", "media_busy"):
            self.retries.labels(target, "error" if outcome == "retrying" else outcome).inc()
        elif outcome == "dead":
            self.dead_lettered.labels(target).inc()
