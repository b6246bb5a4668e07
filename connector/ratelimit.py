"""Token buckets that keep CRM calls under each portal's / org's rate limit.

``acquire`` blocks until the call may go. The in-process bucket serves the embedded
default; in the scaled-out mode (``queue.url`` set) ``RedisTokenBucket`` keeps one
bucket per HubSpot portal / Salesforce org in Redis, taken from atomically by a Lua
script on Redis's clock, so N workers on any number of machines together stay under
the limit. Writers get theirs from ``bucket(config, crm)``, sized from config.
"""
from __future__ import annotations

import hashlib
import logging
import math
import threading
import time

log = logging.getLogger("connector.ratelimit")


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """Seconds a ``Retry-After`` header asks to wait (delta-seconds or an HTTP date);
    None when absent or unreadable, so a bad header never means "wait forever"."""
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        from email.utils import parsedate_to_datetime
        try:
            seconds = parsedate_to_datetime(value).timestamp() - (time.time() if now is None else now)
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
    return max(0.0, seconds) if math.isfinite(seconds) else None


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


# Reserve ``cost`` tokens (the balance may go negative) and answer how long the caller
# waits before using them: the same arithmetic as TokenBucket._reserve, atomic in Redis.
# Redis's TIME is the one clock every machine shares. Floats travel as strings (Redis
# truncates Lua numbers to integers).
_RESERVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local fill, cap, cost = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'updated')
local tokens, updated = tonumber(state[1]), tonumber(state[2])
if tokens == nil or updated == nil then tokens, updated = cap, now end
tokens = math.min(cap, tokens + math.max(0, now - updated) * fill) - cost
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'updated', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(((cap - tokens) / fill + 60) * 1000))
if tokens >= 0 then return '0' end
return tostring(-tokens / fill)
"""


class RedisTokenBucket:
    """``rate`` tokens per ``per`` seconds, bursts up to ``capacity``, shared by every
    process using the same Redis ``key``. If Redis fails, the process falls back to a
    local bucket of the same size (logged) rather than stopping CRM work, and asks Redis
    again only after ``RETRY_AFTER`` seconds: a Redis that accepts connections but does
    not answer would otherwise add its socket timeout to every CRM call."""

    RETRY_AFTER = 5.0

    def __init__(self, client, key: str, rate: float, per: float = 1.0, capacity: float | None = None,
                 sleep=time.sleep, clock=time.monotonic):
        self.key = key
        self.fill_per_second = rate / per
        self.capacity = capacity if capacity is not None else rate
        self.sleep = sleep
        self._script = client.register_script(_RESERVE)
        self._fallback = TokenBucket(rate, per, self.capacity, sleep=sleep)
        self._clock = clock
        self._local_until = 0.0  # Redis failed: the local bucket until then

    def _reserve(self, cost: float) -> float:
        if self._clock() < self._local_until:
            return self._fallback._reserve(cost)
        try:
            return float(self._script(keys=[self.key], args=[repr(self.fill_per_second),
                                                             repr(self.capacity), repr(cost)]))
        except Exception as exc:  # Redis down: keep going at this process's own pace
            log.warning("shared rate limit %s unavailable (%s: %s); using a local bucket for %.0fs",
                        self.key, type(exc).__name__, exc, self.RETRY_AFTER)
            self._local_until = self._clock() + self.RETRY_AFTER
            return self._fallback._reserve(cost)

    def acquire(self, cost: float = 1) -> float:
        """Block until ``cost`` calls may be made; returns the seconds waited."""
        wait = self._reserve(cost)
        if wait > 0:
            self.sleep(wait)
        return wait


def _sizes(config, crm: str, kind: str) -> tuple[float, float, float] | None:
    """(rate, per seconds, burst capacity) for a CRM's bucket; None when unlimited."""
    if crm == "hubspot":
        cfg = config.hubspot
        if kind == "search":
            return cfg.searches_per_second, 1.0, 1.0
        # HubSpot counts a rolling 10 s window: refilling (limit - burst) per 10 s with a
        # burst of a tenth never lets more than the limit through in any window.
        burst = max(1, cfg.requests_per_10s // 10)
        return max(1, cfg.requests_per_10s - burst), 10.0, burst
    if crm == "salesforce":
        rate = config.salesforce.requests_per_second
        return (rate, 1.0, max(1.0, rate)) if rate else None
    raise ValueError(f"no rate limit is known for {crm!r}")


def _account(config, crm: str) -> str:
    """Who the limit belongs to (HubSpot private app / portal, Salesforce org), hashed:
    every process configured for the same account shares one bucket, and no secret
    appears in a Redis key."""
    section = getattr(config, crm)
    if crm == "hubspot":
        parts = [section.base_url, section.access_token or section.client_id]
    else:
        parts = [section.instance_url or section.domain, section.username or section.consumer_key]
    return hashlib.sha256("\x00".join(str(p) for p in parts).encode()).hexdigest()[:16]


def bucket(config, crm: str, kind: str = "requests", sleep=time.sleep):
    """The rate limiter a CRM writer takes tokens from before each call.

    ``crm`` is ``hubspot`` or ``salesforce``; ``kind`` is ``requests`` (every call) or,
    for HubSpot, ``search`` (CRM search endpoints, limited separately). Sized from the
    CRM's config section; shared through Redis when ``queue.url`` is set, else local to
    this process.
    """
    sizes = _sizes(config, crm, kind)
    if sizes is None:
        return Unlimited()
    rate, per, capacity = sizes
    if not config.queue.url:
        return TokenBucket(rate, per, capacity, sleep=sleep)
    from . import redisconn
    key = redisconn.key(config, "ratelimit", crm, _account(config, crm), kind)
    return RedisTokenBucket(redisconn.client(config), key, rate, per, capacity, sleep=sleep)
