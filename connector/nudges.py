"""Wake-up nudges from web processes to workers on any machine (Redis pub/sub).

After a webhook's transaction commits, the web process publishes one small message;
idle workers subscribed to the channel claim at once instead of at their next poll. A
nudge is not work: it carries nothing, is not stored, and a lost one only costs up to
``worker.poll_interval`` of latency. That keeps the webhook at one durable write.

Publishing happens on a thread of its own, so no request waits on Redis, and the
nudges asked for while one is being sent fold into the next: a burst of webhooks costs
one publish per 5 ms, and every commit is still followed by a publish that starts after it.
"""
from __future__ import annotations

import logging
import os
import threading
import time

from . import redisconn
from .config import Config

log = logging.getLogger("connector.nudges")

# After Redis fails, skip nudging this long: the webhook must not wait on a dead Redis.
QUIET_AFTER_FAILURE = 5.0
SPACING = 0.005


class Nudges:
    def __init__(self, config: Config):
        self.config = config
        self.channel = redisconn.key(config, "nudge")
        self._quiet_until = 0.0
        self._wanted = threading.Event()
        self._start_lock = threading.Lock()
        self._sender_pid = 0  # the publishing thread's process: a fork leaves it behind

    def ping(self) -> None:
        redisconn.client(self.config).ping()

    def publish(self) -> None:
        """Ask for a nudge; returns at once."""
        if self._sender_pid != os.getpid():
            with self._start_lock:
                if self._sender_pid != os.getpid():
                    threading.Thread(target=self._send_forever, name="nudges", daemon=True).start()
                    self._sender_pid = os.getpid()
        self._wanted.set()

    def _send_forever(self) -> None:
        while True:
            self._wanted.wait()
            self._wanted.clear()
            self.publish_now()
            time.sleep(SPACING)  # at most one nudge per SPACING: workers claim everything due

    def publish_now(self) -> None:
        if time.monotonic() < self._quiet_until:
            return
        try:
            redisconn.client(self.config).publish(self.channel, b"1")
        except Exception as exc:  # the store has the work; workers will poll it
            self._quiet_until = time.monotonic() + QUIET_AFTER_FAILURE
            log.warning("nudge not sent (workers will poll): %s: %s", type(exc).__name__, exc)

    def listen(self, wake: threading.Event, stop: threading.Event) -> None:
        """Set ``wake`` on every nudge until ``stop``; reconnects after errors."""
        while not stop.is_set():
            pubsub = None
            try:
                pubsub = redisconn.client(self.config).pubsub(ignore_subscribe_messages=True)
                pubsub.subscribe(self.channel)
                while not stop.is_set():
                    if pubsub.get_message(timeout=1.0) is not None:
                        wake.set()
            except Exception as exc:
                log.warning("nudge subscription lost (polling meanwhile): %s: %s", type(exc).__name__, exc)
                stop.wait(self.config.worker.poll_interval * 4)
            finally:
                if pubsub is not None:
                    try:
                        pubsub.close()
                    except Exception:
                        pass
