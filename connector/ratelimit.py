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
    """``rate`` tokens per ``per`` seconds, bursts up to ``capacity``.

    Kept as the moment the bucket would be full again (``full_at``, GCRA's theoretical
    arrival time): a reservation of ``cost`` at ``t`` may be used from
    ``full_at + (cost - capacity) / fill`` on, and moves ``full_at`` to
    ``max(full_at, send time) + cost / fill``. Charging a token at the time it is really
    used is what lets two buckets agree on one send time (``acquire_together``)."""

    def __init__(self, rate: float, per: float = 1.0, capacity: float | None = None,
                 clock=time.monotonic, sleep=time.sleep):
        self.fill_per_second = rate / per
        self.capacity = capacity if capacity is not None else rate
        self.clock = clock
        self.sleep = sleep
        self.full_at = clock()
        self.lock = threading.Lock()

    def _earliest(self, cost: float, now: float) -> float:
        return max(now, self.full_at + (cost - self.capacity) / self.fill_per_second)

    def _charge(self, cost: float, at: float) -> None:
        self.full_at = max(self.full_at, at) + cost / self.fill_per_second

    def _reserve(self, cost: float) -> float:
        """Take ``cost`` tokens; seconds to wait before using them."""
        with self.lock:
            now = self.clock()
            at = self._earliest(cost, now)
            self._charge(cost, at)
            return at - now

    def acquire(self, cost: float = 1) -> float:
        """Block until ``cost`` calls may be made; returns the seconds waited."""
        wait = self._reserve(cost)
        if wait > 0:
            self.sleep(wait)
        return wait


class Unlimited:
    def acquire(self, cost: float = 1) -> float:
        return 0.0


# Reserve ``cost`` from every bucket in KEYS at one send time, the earliest all of them
# allow, and answer how long the caller waits for it: TokenBucket's arithmetic, atomic in
# Redis. ARGV: cost, then fill per second and capacity of each key. Redis's TIME is the
# one clock every machine shares; floats travel as strings (Redis truncates Lua numbers).
_RESERVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local cost = tonumber(ARGV[1])
local full, at = {}, now
for i, key in ipairs(KEYS) do
  local fill, cap = tonumber(ARGV[2 * i]), tonumber(ARGV[2 * i + 1])
  full[i] = tonumber(redis.call('HGET', key, 'full_at')) or now
  at = math.max(at, full[i] + (cost - cap) / fill)
end
for i, key in ipairs(KEYS) do
  local fill = tonumber(ARGV[2 * i])
  local f = math.max(full[i], at) + cost / fill
  redis.call('HSET', key, 'full_at', tostring(f))
  redis.call('PEXPIRE', key, math.ceil((f - now + 60) * 1000))
end
return tostring(at - now)
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
        self.client = client
        self.fill_per_second = rate / per
        self.capacity = capacity if capacity is not None else rate
        self.sleep = sleep
        self._script = client.register_script(_RESERVE)
        self._fallback = TokenBucket(rate, per, self.capacity, sleep=sleep)
        self._clock = clock
        self._local_until = 0.0  # Redis failed: the local bucket until then

    @property
    def shared(self) -> bool:
        return self._clock() >= self._local_until

    def _reserve(self, cost: float, others: tuple["RedisTokenBucket", ...] = ()) -> float:
        if not self.shared:
            return self._fallback._reserve(cost)
        buckets = (self, *others)
        try:
            return float(self._script(keys=[b.key for b in buckets],
                                      args=[repr(cost), *(repr(v) for b in buckets
                                                          for v in (b.fill_per_second, b.capacity))]))
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


def acquire_together(first, second, cost: float = 1) -> float:
    """Block until one call may be made under both buckets (a HubSpot search: the search
    limit and the 10-second one), charging each at the same send time; the seconds waited.

    Taking one, then the other, would charge the first at a time the call does not go:
    a search that then waits out a backlog of the 10-second bucket leaves at that bucket's
    pace, back to back with the other searches that waited, over the search limit."""
    if first is second:
        return first.acquire(cost) or 0.0
    if isinstance(first, TokenBucket) and isinstance(second, TokenBucket):
        locks = sorted((first.lock, second.lock), key=id)
        with locks[0], locks[1]:
            now = first.clock()
            at = max(first._earliest(cost, now), second._earliest(cost, now))
            first._charge(cost, at)
            second._charge(cost, at)
        wait = at - now
        sleep = first.sleep
    elif (isinstance(first, RedisTokenBucket) and isinstance(second, RedisTokenBucket)
          and first.client is second.client and first.shared and second.shared):
        wait = first._reserve(cost, (second,))
        sleep = first.sleep
    else:  # a bucket that is unlimited, or on its local fallback: one, then the other
        return (first.acquire(cost) or 0.0) + (second.acquire(cost) or 0.0)
    if wait > 0:
        sleep(wait)
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
