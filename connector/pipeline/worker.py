"""Workers: claim due deliveries with a lease, deliver, record; sweep dead leases.

At-least-once: a delivery stays open until its outcome is committed, and a worker
killed mid-write leaves a lease that runs out and is claimed again. Writers are
idempotent (record map / external-id upsert), so a second run never makes a second
CRM entry.
"""
from __future__ import annotations

import contextlib
import logging
import threading
import time
from typing import Callable

from tenacity import RetryCallState, wait_exponential, wait_random

from ..config import Config
from ..crm.base import DeliveryContext, Outcome, PermanentError, RateLimited, TransientError, Writer
from ..mapping import MappingError
from ..providers import PARSERS
from ..providers.aircall import Ignored, PayloadError
from ..render import default_media_views
from ..store import DEAD, RETRYING, Delivery, Store, new_owner_id

log = logging.getLogger("connector.worker")


# Outcomes that wait without spending an attempt: the CRM's rate limit, media another
# worker is fetching.
WAITS = ("rate_limited", "media_busy")


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
        # target -> how many times it was parked for a rate limit; deliveries claimed before
        # a park are given back instead of called (Worker.run_round).
        self.parks: dict[str, int] = {}
        self.store = store
        self.writers = writers
        # media(event, delivery) -> (views, download_all_link); replaced when media is stored.
        self.media = media or (lambda event, d: (default_media_views(event), ""))
        # after_write(target, event, result) -> result: attachments copied into the CRM are
        # linked to the entry just written (connector/pipeline/crm_files.py).
        self.after_write = getattr(self.media, "attached", lambda target, event, result: result)

    def _count(self, d: Delivery, outcome: str) -> str:
        if self.metrics is not None:
            self.metrics.write(d.target, outcome)
        return RETRYING if outcome in WAITS else outcome

    def _prepare(self, d: Delivery):
        """(event, writer, ctx) for a claimed delivery, or the error that is its outcome."""
        try:
            event = PARSERS[d.provider](d.payload)
        except (PayloadError, Ignored, KeyError) as exc:  # stored payloads were validated; be safe
            return PermanentError(f"stored payload no longer parses: {exc}")
        writer = self.writers.get(d.target)
        if writer is None:
            return PermanentError(f"{d.target} is not configured")
        try:
            views, download_all = self.media(event, d)
        except Exception as exc:  # e.g. an attachment could not be stored yet: retry
            return exc
        return event, writer, DeliveryContext(store=self.store, config=self.config, media=views,
                                              download_all_link=download_all)

    @staticmethod
    def _lost(d: Delivery) -> str:
        # Preparing (media) outlasted the lease: another worker may own this delivery now,
        # and two writers would make two CRM entries. Leave it to the lease holder.
        log.warning("delivery %s message %s %s: lease lost before the CRM call; not written",
                    d.id, d.message_id, d.target)
        return "lost"

    def process(self, d: Delivery) -> str:
        """Deliver one delivery with ``writer.deliver`` and record its outcome."""
        with self._leases_kept([d]):  # fetching its media may outlast a lease
            prepared = self._prepare(d)
        if isinstance(prepared, BaseException):
            return self.record(d, prepared)
        event, writer, ctx = prepared
        try:
            with self._leases_kept([d]) as held:
                if d.id not in held:
                    return self._lost(d)
                result = writer.deliver(event, ctx)
        except Exception as exc:
            result = exc
        return self.record(d, self.after_write(d.target, event, result))

    @contextlib.contextmanager
    def _leases_kept(self, ds: list[Delivery]):
        """Renew ``ds``'s leases every third of a lease while their CRM call runs: a call
        slowed by rate-limit waits and retries must not outlive its lease, or another
        worker would take the deliveries over and write the same messages again.
        Yields the ids still held when the call starts: only those may be written."""
        lease = self.config.worker.lease_seconds
        held = self.store.renew_leases(ds, lease)
        ds = [d for d in ds if d.id in held]
        done = threading.Event()

        def keep() -> None:
            while not done.wait(lease / 3):
                try:
                    self.store.renew_leases(ds, lease)
                except Exception as exc:  # the next beat tries again; the lease has slack
                    log.warning("lease renewal failed: %s: %s", type(exc).__name__, exc)

        keeper = threading.Thread(target=keep, name="lease-keeper", daemon=True)
        keeper.start()
        try:
            yield held
        finally:
            done.set()
            keeper.join()

    def process_batch(self, batch: list[Delivery]) -> list[str]:
        """Deliver deliveries of one CRM with one ``writer.deliver_many`` call; each item's
        outcome (or exception) is recorded on its own, so one failed item retries or
        dead-letters alone."""
        states: list[str | None] = [None] * len(batch)
        items, where = [], []
        # Preparing a batch (media fetches) can take longer than a lease, even for one of its
        # deliveries: the leases are kept alive meanwhile, or they would be swept and taken
        # over, and nobody would ever write them.
        with self._leases_kept(batch):
            for i, d in enumerate(batch):
                prepared = self._prepare(d)
                if isinstance(prepared, BaseException):
                    states[i] = self.record(d, prepared)
                else:
                    items.append(prepared)
                    where.append(i)
        if items:
            writer = items[0][1]
            try:
                with self._leases_kept([batch[i] for i in where]) as held:
                    for i in [i for i in where if batch[i].id not in held]:
                        states[i] = self._lost(batch[i])
                    items = [it for it, i in zip(items, where) if batch[i].id in held]
                    where = [i for i in where if batch[i].id in held]
                    results = list(writer.deliver_many([(event, ctx) for event, _, ctx in items])) \
                        if items else []
                if len(results) != len(items):
                    raise TransientError(f"{writer.name} answered {len(results)} outcomes for "
                                         f"{len(items)} items")
            except Exception as exc:  # the whole call failed: every item shares the outcome
                results = [exc] * len(items)
            results = [self.after_write(batch[i].target, event, result)
                       for i, (event, _, _), result in zip(where, items, results)]
            # The batch's outcomes commit together: one transaction, not one per item.
            finished: list = []
            parks: list = []
            for i, result in zip(where, results):
                states[i] = self.record(batch[i], result,
                                        finish=lambda d, state, **kw: finished.append((d, state, kw)),
                                        park=lambda target, until: parks.append((target, until)))
            self.store.finish_many(finished)
            for target in {t for t, _ in parks}:  # one park per CRM: the latest end
                self.store.park_target(target, max(u for t, u in parks if t == target))
        return states  # type: ignore[return-value]

    def record(self, d: Delivery, result: Outcome | BaseException, finish=None, park=None) -> str:
        """Commit one delivery's outcome: done, parked (rate limit), retry later, or dead.
        ``finish``/``park`` default to the store's (a batch passes collectors instead)."""
        cfg = self.config.worker
        finish = finish or self.store.finish
        park = park or self.store.park_target
        if isinstance(result, Outcome):
            finish(d, result.state, rendered=result.rendered, result=result.result)
            log.info("delivery %s message %s %s: %s", d.id, d.message_id, d.target, result.state)
            return self._count(d, result.state)
        exc = result if isinstance(result, BaseException) else TransientError(
            f"{d.target} writer returned {result!r} instead of an outcome")
        if isinstance(exc, MappingError):
            # The mapping fails on this message (an index past the end of its media, say):
            # its dead letter, to replay once the mapping is fixed.
            exc = PermanentError(f"the mapping cannot render this message: {exc}")
        if isinstance(exc, RateLimited):
            wait = exc.retry_after if exc.retry_after is not None else cfg.backoff_initial
            finish(d, RETRYING, error=f"{exc.reason.replace('_', ' ')}: {exc}", next_at=time.time() + wait,
                   count_attempt=False)
            if exc.whole_crm:
                # The wait is the CRM's, not this message's: park that CRM's other open work
                # too, so no worker, in any process, calls it before the wait is over.
                park(d.target, time.time() + wait)
                self.parks[d.target] = self.parks.get(d.target, 0) + 1
            log.info("delivery %s message %s %s: %s, back in %.0fs", d.id, d.message_id, d.target,
                     exc.reason.replace("_", " "), wait)
            return self._count(d, exc.reason)
        if isinstance(exc, PermanentError):
            finish(d, DEAD, error=str(exc))
            log.warning("delivery %s message %s %s: dead letter: %s", d.id, d.message_id, d.target, exc)
            return self._count(d, DEAD)
        # TransientError, or a bug: retry, dead-letter when attempts run out.
        attempt = d.attempts + 1
        reason = str(exc) if isinstance(exc, TransientError) else f"{type(exc).__name__}: {exc}"
        if not isinstance(exc, TransientError):
            log.error("delivery %s message %s %s: unexpected error", d.id, d.message_id, d.target,
                      exc_info=exc)
        if attempt >= cfg.max_attempts:
            finish(d, DEAD, error=f"gave up after {attempt} attempts: {reason}")
            log.warning("delivery %s message %s %s: dead letter after %d attempts: %s",
                        d.id, d.message_id, d.target, attempt, reason)
            return self._count(d, DEAD)
        wait = backoff_seconds(attempt, cfg.backoff_initial, cfg.backoff_max)
        if isinstance(exc, TransientError) and exc.retry_after:
            wait = max(wait, exc.retry_after)
        finish(d, RETRYING, error=reason, next_at=time.time() + wait)
        log.info("delivery %s message %s %s: attempt %d failed (%s), retry in %.1fs",
                 d.id, d.message_id, d.target, attempt, reason, wait)
        return self._count(d, RETRYING)


class Worker:
    """Threads that claim and process deliveries until stopped.

    Writers with ``deliver_many`` get their deliveries in batches of up to
    ``<crm>.batch_size`` (claimed together, one ``deliver_many`` call); a worker holding a
    partial batch waits up to ``worker.batch_wait`` for more. Others get one at a time.
    """

    def __init__(self, config: Config, store: Store, pipeline: Pipeline, wake: threading.Event | None = None,
                 requests_in_flight=lambda: 0, nudges=None):
        self.config = config
        self.store = store
        self.pipeline = pipeline
        self.wake = wake or threading.Event()
        # In `serve`, workers share one process (and the GIL and SQLite's write lock) with
        # the web threads: webhook acknowledgements go first, CRM work waits a moment.
        self.requests_in_flight = requests_in_flight
        self.nudges = nudges  # connector.nudges.Nudges in the scaled-out mode
        self.stop_event = threading.Event()
        self.threads: list[threading.Thread] = []
        # More work sources (the outbound sender): run_once(owner) -> int, sweep() -> int.
        self.tasks: list = []
        # Housekeeping on a timer (media purge): (interval seconds, name, callable).
        self.periodic: list[tuple[float, str, Callable[[], object]]] = []

    def batching_targets(self) -> list[str]:
        return [t for t, w in self.pipeline.writers.items() if callable(getattr(w, "deliver_many", None))]

    def claim_batch(self, owner: str, target: str, wait: float = 0.0) -> list[Delivery]:
        """Up to the target's batch size; with ``wait``, a partial batch waits that long to fill."""
        size = getattr(getattr(self.config, target, None), "batch_size", 1)
        lease = self.config.worker.lease_seconds
        batch = self.store.claim(owner, lease, limit=size, target=target)
        deadline = time.monotonic() + wait
        while batch and len(batch) < size and not self.stop_event.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self.stop_event.wait(min(remaining, 0.05))
            batch += self.store.claim(owner, lease, limit=size - len(batch), target=target)
        return batch

    def run_round(self, owner: str, wait: float = 0.0) -> int:
        """One batch per batching CRM, then a few single deliveries for the others; how many ran."""
        done = 0
        batching = self.batching_targets()
        for target in batching:
            batch = self.claim_batch(owner, target, wait)
            if batch:
                self._give_way()
                self.pipeline.process_batch(batch)
                done += len(batch)
        claimed = self.store.claim(owner, self.config.worker.lease_seconds, limit=10, exclude=batching)
        parks = dict(self.pipeline.parks)
        for d in claimed:
            if self.pipeline.parks.get(d.target, 0) != parks.get(d.target, 0):
                self.store.release(d)  # its CRM asked us to wait since the claim: parked now
                continue
            self._give_way()
            self.pipeline.process(d)
            done += 1
        return done

    def every(self, interval: float, name: str, task: Callable[[], object]) -> None:
        """Run ``task`` every ``interval`` seconds while the worker runs (e.g. media purge)."""
        self.periodic.append((interval, name, task))

    def run_once(self, owner: str | None = None) -> int:
        """Claim and process what is due now (no waiting); returns how many deliveries ran."""
        owner = owner or new_owner_id()
        done = 0
        while True:
            n = self.run_round(owner)
            if n == 0:
                return done
            done += n

    def _give_way(self, most: float = 0.05) -> None:
        deadline = time.monotonic() + most
        while self.requests_in_flight() and time.monotonic() < deadline:
            time.sleep(0.0005)

    def _loop(self) -> None:
        owner = new_owner_id()
        while not self.stop_event.is_set():
            try:
                done = self.run_round(owner, self.config.worker.batch_wait)
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

    def _periodic_loop(self, interval: float, name: str, task: Callable[[], object]) -> None:
        while not self.stop_event.wait(interval):
            try:
                task()
            except Exception:
                log.exception("%s error", name)

    def start(self) -> None:
        for i in range(self.config.worker.threads):
            t = threading.Thread(target=self._loop, name=f"worker-{i}", daemon=True)
            t.start()
            self.threads.append(t)
        t = threading.Thread(target=self._sweep_loop, name="sweeper", daemon=True)
        t.start()
        self.threads.append(t)
        if self.nudges is not None:
            t = threading.Thread(target=self.nudges.listen, args=(self.wake, self.stop_event),
                                 name="nudges", daemon=True)
            t.start()
            self.threads.append(t)
        for interval, name, task in self.periodic:
            t = threading.Thread(target=self._periodic_loop, args=(interval, name, task), name=name, daemon=True)
            t.start()
            self.threads.append(t)

    def stop(self, timeout: float = 10) -> None:
        self.stop_event.set()
        self.wake.set()
        for t in self.threads:
            t.join(timeout)
