"""Wires config, store, writers and worker together for the web app and the CLI."""
from __future__ import annotations

import gc
import threading

from .config import Config
from . import redisconn
from .metrics import Metrics
from .nudges import Nudges
from .media import MediaService
from .pipeline.worker import Pipeline, Worker
from .pipeline.writers import build_writers
from .store import Store


def store_url(config: Config) -> str:
    url = config.store.url
    if url.startswith("sqlite:///") and not url.startswith("sqlite:////") and ":memory:" not in url:
        # Relative SQLite paths are relative to the config file, not the shell's cwd.
        url = "sqlite:///" + str(config.resolve(url[len("sqlite:///"):]))
    return url


class Runtime:
    def __init__(self, config: Config):
        self.config = config
        self.store = Store(store_url(config))
        self.store.create_schema()
        # No connection made here may cross a fork (gunicorn --preload): start afresh.
        self.store.engine.dispose()
        self.media = MediaService(config, self.store)
        self.wake_event = threading.Event()
        # Redis in the scaled-out mode (queue.url): wake-up nudges to workers anywhere.
        self.queue = Nudges(config) if redisconn.enabled(config) else None
        self.metrics = Metrics(self.store)
        self._pipeline: Pipeline | None = None
        self.in_flight = 0  # web requests being answered; workers in this process give way
        self._in_flight_lock = threading.Lock()
        self._sender = None
        # The webhook write waits for company only while other requests are in flight.
        self.store.inbox_writer.join_window(config.store.commit_delay, lambda: self.in_flight - 1)

    @property
    def pipeline(self) -> Pipeline:
        if self._pipeline is None:
            writers = build_writers(self.config)
            for writer in writers.values():
                if getattr(writer, "meter", None) is not None:  # live writers count their requests
                    writer.meter.metrics = self.metrics
            media = self.media
            if any(getattr(w, "files", None) for w in writers.values()):  # attachments: crm-files
                from .pipeline.crm_files import CrmFiles
                media = CrmFiles(self.store, self.media, writers)
            self._pipeline = Pipeline(self.config, self.store, writers, media=media, metrics=self.metrics)
        return self._pipeline

    def request_started(self) -> None:
        with self._in_flight_lock:
            self.in_flight += 1

    def request_finished(self) -> None:
        with self._in_flight_lock:
            self.in_flight -= 1

    @property
    def outbound(self):
        """The outbound sender (connector.pipeline.outbound), with its outbox and Aircall client."""
        if self._sender is None:
            from .pipeline.outbound import OutboundSender
            self._sender = OutboundSender(self.config, self.store, hubspot_api=self._hubspot_api)
        return self._sender

    def _hubspot_api(self):
        """The live HubSpot writer's API client, or None (dry-run, off)."""
        if self.config.hubspot.mode != "live":
            return None
        return getattr(self.pipeline.writers.get("hubspot"), "api", None)

    def wake(self) -> None:
        """Nudge workers that new work is stored: in this process, and (with Redis) everywhere."""
        self.wake_event.set()
        if self.queue is not None:
            self.queue.publish()

    def worker(self) -> Worker:
        w = Worker(self.config, self.store, self.pipeline, self.wake_event,
                   requests_in_flight=lambda: self.in_flight, nudges=self.queue)
        w.tasks.append(self.outbound)
        w.every(self.config.media.purge_interval, "media-purge", self.media.purge)
        return w


def freeze_startup_heap() -> None:
    """Exclude the objects built at start-up (config, mappings, SQLAlchemy, phone metadata:
    some 100,000) from garbage collection passes, each of which otherwise walks them all
    and stalls every request in the process for tens of milliseconds."""
    gc.collect()
    gc.freeze()


def setup_logging(config: Config) -> None:
    from .logs import setup_logging as _setup
    _setup(config)
