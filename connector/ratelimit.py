"""Token buckets that keep CRM calls under each portal's / org's rate limit.

``acquire`` blocks until the call may go. The in-process bucket serves the embedded
default; a bucket shared across processes and machines (Redis) can stand in behind
the same interface for the scaled-out mode.
"""
from __future__ import annotations

import threading
import time


class TokenBucket:
    """``rate`` tokens per ``per`` seconds, bursts up to ``capacity``."""

    def __init__(self, rate: float, per: float = 1.0, capacity: float | None = None,
                 clock=time.monotonic, sleep=time.sleep):
        self.fill_per_second = rate / per
        self.capacity = capacity if capacity is not None else rate
        self.tokens = self.capacity
        self.clock = clock
        self.sleep = sleep
        self.updated = clock()
        self.lock = threading.Lock()

    def _reserve(self, cost: float) -> float:
        """Take ``cost`` tokens (possibly going negative); seconds to wait before using them."""
        with self.lock:
            now = self.clock()
            self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.fill_per_second)
            self.updated = now
            self.tokens -= cost
            return 0.0 if self.tokens >= 0 else -self.tokens / self.fill_per_second

    def acquire(self, cost: float = 1) -> float:
        """Block until ``cost`` calls may be made; returns the seconds waited."""
        wait = self._reserve(cost)
        if wait > 0:
            self.sleep(wait)
        return wait


class Unlimited:
    def acquire(self, cost: float = 1) -> float:
        return 0.0
