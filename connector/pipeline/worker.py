"""Workers: claim due deliveries with a lease, deliver, record; sweep dead leases.

At-least-once: a delivery stays open until its outcome is committed, and a worker
killed mid-write leaves a lease that runs out and is claimed again. Writers are
idempotent (record map / external-id upsert), so a second run never makes a second
CRM entry.
"""
from __future__ import annotations

import logging
import threading
import time

from tenacity import RetryCallState, wait_exponential, wait_random

from ..config import Config
from ..crm.base import DeliveryContext, PermanentError, RateLimited, TransientError, Writer
from ..providers import PARSERS
from ..providers.aircall import Ignored, PayloadError
from ..render import default_media_views
from ..store import DEAD, RETRYING, Delivery, Store, new_owner_id

log = logging.getLogger("connector.worker")


def backoff_seconds(attempt: int, initial: float, maximum: float) -> float:
    """Exponential backoff with jitter for the ``attempt``-th failure (tenacity's curve)."""
    state = RetryCallState(retry_object=None, fn=None, args=(), kwargs={})
    state.attempt_number = attempt
    wait = wait_exponential(multiplier=initial, max=maximum) + wait_random(0, initial)
    return min(maximum, wait(state))


class Pipeline:
    """Processes one claimed delivery end to end."""

    def __init__(self, config: Config, store: Store, writers: dict[str, Writer], media=None,
                 metrics=None):
        self.config = config
        self.metrics = metrics  # connector.metrics.Metrics, or None
        # target -> time before which this process makes no call to that CRM (its 429 wait).
        self.paused_until: dict[str, float] = {}
        self.store = store
        self.writers = writers
        # media(event, delivery) -> (views, download_all_link); replaced when media is stored.
        self.media = media or (lambda event, d: (default_media_views(event), ""))

    def _count(self, d: Delivery, outcome: str) -> str:
        if self.metrics is not None:
            self.metrics.write(d.target, outcome)
        return RETRYING if outcome == "rate_limited" else outcome

    def process(self, d: Delivery) -> str:
        cfg = self.config.worker
        try:
            event = PARSERS[d.provider](d.payload)
        except (PayloadError, Ignored, KeyError) as exc:  # stored payloads were validated; be safe
            self.store.finish(d, DEAD, error=f"stored payload no longer parses: {exc}")
            return self._count(d, DEAD)
        writer = self.writers.get(d.target)
        if writer is None:
            self.store.finish(d, DEAD, error=f"{d.target} is not configured")
            return self._count(d, DEAD)
        paused = self.paused_until.get(d.target, 0.0)
        if paused > time.time():  # the CRM asked us to wait: no call before that, for any message
            self.store.finish(d, RETRYING, count_attempt=False, next_at=paused,
                              error=f"rate limited: {d.target} paused for {paused - time.time():.0f}s")
            return RETRYING
        try:
            views, download_all = self.media(event, d)
            ctx = DeliveryContext(store=self.store, config=self.config, media=views,
                                  download_all_link=download_all)
            outcome = writer.deliver(event, ctx)
        except RateLimited as exc:
            wait = exc.retry_after if exc.retry_after is not None else cfg.backoff_initial
            self.paused_until[d.target] = max(paused, time.time() + wait)
            self.store.finish(d, RETRYING, error=f"rate limited: {exc}", next_at=time.time() + wait,
                              count_attempt=False)
            log.info("delivery %s message %s %s: rate limited, parked %.0fs", d.id, d.message_id, d.target, wait)
            return self._count(d, "rate_limited")
        except PermanentError as exc:
            self.store.finish(d, DEAD, error=str(exc))
            log.warning("delivery %s message %s %s: dead letter: %s", d.id, d.message_id, d.target, exc)
            return self._count(d, DEAD)
        except Exception as exc:  # TransientError, or a bug: retry, dead-letter when attempts run out
            attempt = d.attempts + 1
            reason = str(exc) if isinstance(exc, TransientError) else f"{type(exc).__name__}: {exc}"
            if not isinstance(exc, TransientError):
                log.exception("delivery %s message %s %s: unexpected error", d.id, d.message_id, d.target)
            if attempt >= cfg.max_attempts:
                self.store.finish(d, DEAD, error=f"gave up after {attempt} attempts: {reason}")
                log.warning("delivery %s message %s %s: dead letter after %d attempts: %s",
                            d.id, d.message_id, d.target, attempt, reason)
                return self._count(d, DEAD)
            wait = backoff_seconds(attempt, cfg.backoff_initial, cfg.backoff_max)
            if isinstance(exc, TransientError) and exc.retry_after:
                wait = max(wait, exc.retry_after)
            self.store.finish(d, RETRYING, error=reason, next_at=time.time() + wait)
            log.info("delivery %s message %s %s: attempt %d failed (%s), retry in %.1fs",
                     d.id, d.message_id, d.target, attempt, reason, wait)
            return self._count(d, RETRYING)
        self.store.finish(d, outcome.state, rendered=outcome.rendered, result=outcome.result)
        log.info("delivery %s message %s %s: %s", d.id, d.message_id, d.target, outcome.state)
        return self._count(d, outcome.state)


class Worker:
    """Threads that claim and process deliveries until stopped."""

    def __init__(self, config: Config, store: Store, pipeline: Pipeline, wake: threading.Event | None = None,
                 requests_in_flight=lambda: 0):
        self.config = config
        self.store = store
        self.pipeline = pipeline
        self.wake = wake or threading.Event()
        # In `serve`, workers share one process (and the GIL and SQLite's write lock) with
        # the web threads: webhook acknowledgements go first, CRM work waits a moment.
        self.requests_in_flight = requests_in_flight
        self.stop_event = threading.Event()
        self.threads: list[threading.Thread] = []
        # More work sources (the outbound sender): run_once(owner) -> int, sweep() -> int.
        self.tasks: list = []

    def run_once(self, owner: str | None = None) -> int:
        """Claim and process what is due now; returns how many deliveries ran."""
        owner = owner or new_owner_id()
        done = 0
        while True:
            batch = self.store.claim(owner, self.config.worker.lease_seconds, limit=10)
            if not batch:
                return done
            for d in batch:
                self._give_way()
                self.pipeline.process(d)
                done += 1

    def _give_way(self, most: float = 0.05) -> None:
        deadline = time.monotonic() + most
        while self.requests_in_flight() and time.monotonic() < deadline:
            time.sleep(0.0005)

    def _loop(self) -> None:
        owner = new_owner_id()
        while not self.stop_event.is_set():
            try:
                done = self.run_once(owner)
                for task in self.tasks:
                    done += task.run_once(owner)
                if done == 0:
                    self.wake.wait(self.config.worker.poll_interval)
                    self.wake.clear()
            except Exception:  # store unreachable, etc.: keep the worker alive
                log.exception("worker loop error")
                self.stop_event.wait(self.config.worker.poll_interval)

    def _sweep_loop(self) -> None:
        while not self.stop_event.wait(self.config.worker.sweep_interval):
            try:
                n = self.store.sweep()
                for task in self.tasks:
                    task.sweep()
                if n:
                    log.warning("sweep: released %d expired leases", n)
                    self.wake.set()
            except Exception:
                log.exception("sweep error")

    def start(self) -> None:
        for i in range(self.config.worker.threads):
            t = threading.Thread(target=self._loop, name=f"worker-{i}", daemon=True)
            t.start()
            self.threads.append(t)
        t = threading.Thread(target=self._sweep_loop, name="sweeper", daemon=True)
        t.start()
        self.threads.append(t)

    def stop(self, timeout: float = 10) -> None:
        self.stop_event.set()
        self.wake.set()
        for t in self.threads:
            t.join(timeout)
