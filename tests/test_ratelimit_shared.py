"""The rate limiter shared through Redis: one bucket per portal/org for every process."""
from __future__ import annotations

import time

import redis

from connector.config import load_config
from connector.ratelimit import RedisTokenBucket, TokenBucket, Unlimited, bucket

from conftest import base_config
from procs import free_port


class Sleeps:
    def __init__(self):
        self.waits: list[float] = []

    def __call__(self, seconds: float) -> None:  # record, don't sleep: the bucket's answer is the point
        self.waits.append(seconds)


def test_two_clients_share_one_bucket(redis_url):
    url, prefix = redis_url
    key = f"{prefix}:ratelimit:test"
    # 1 token per 10 s, burst 2: from the third call on, each waits 10 s more than the last.
    a_sleep, b_sleep = Sleeps(), Sleeps()
    a = RedisTokenBucket(redis.Redis.from_url(url), key, rate=1, per=10, capacity=2, sleep=a_sleep)
    b = RedisTokenBucket(redis.Redis.from_url(url), key, rate=1, per=10, capacity=2, sleep=b_sleep)
    waits = [(a if i % 2 == 0 else b).acquire() for i in range(6)]
    expected = [0, 0, 10, 20, 30, 40]
    # Real time passing refills a little (0.1 token per second), so allow a couple of seconds.
    assert all(e - 2 <= w <= e for w, e in zip(waits, expected)), waits
    assert a_sleep.waits == [w for w in waits[0::2] if w > 0]
    assert b_sleep.waits == [w for w in waits[1::2] if w > 0]
    # Another portal's bucket is untouched.
    other = RedisTokenBucket(redis.Redis.from_url(url), key + "-other", rate=1, per=10, capacity=2, sleep=Sleeps())
    assert other.acquire() == 0


def test_factory_shares_a_bucket_per_portal_through_redis(tmp_path, redis_url):
    url, prefix = redis_url

    def cfg(token: str):
        return load_config(data=base_config(tmp_path, queue={"url": url, "prefix": prefix}, hubspot={
            "mode": "dry-run", "access_token": token, "requests_per_10s": 20}))

    # requests_per_10s 20: burst 2, then 18 per 10 s (one every 0.56 s).
    one, two = bucket(cfg("pat-A"), "hubspot", sleep=Sleeps()), bucket(cfg("pat-A"), "hubspot", sleep=Sleeps())
    other_app = bucket(cfg("pat-B"), "hubspot", sleep=Sleeps())
    assert isinstance(one, RedisTokenBucket) and one.key == two.key != other_app.key
    assert "pat-A" not in one.key
    assert [one.acquire(), two.acquire()] == [0, 0]
    assert 0.4 < two.acquire() <= 10 / 18 + 1e-9
    assert other_app.acquire() == 0


def test_factory_without_redis_is_local_and_sized_from_config(tmp_path):
    cfg = load_config(data=base_config(tmp_path, hubspot={"mode": "dry-run", "requests_per_10s": 190},
                                       salesforce={"mode": "dry-run", "requests_per_second": 5}))
    hub = bucket(cfg, "hubspot")
    assert isinstance(hub, TokenBucket) and hub.capacity == 19 and hub.fill_per_second == (190 - 19) / 10
    search = bucket(cfg, "hubspot", "search")
    assert search.capacity == 1 and search.fill_per_second == cfg.hubspot.searches_per_second
    sf = bucket(cfg, "salesforce")
    assert isinstance(sf, TokenBucket) and sf.fill_per_second == 5
    unpaced = load_config(data=base_config(tmp_path))
    assert isinstance(bucket(unpaced, "salesforce"), Unlimited)


def test_redis_down_falls_back_to_a_local_bucket(tmp_path, caplog):
    cfg = load_config(data=base_config(tmp_path, queue={"url": f"redis://127.0.0.1:{free_port()}/0"},
                                       hubspot={"mode": "dry-run", "requests_per_10s": 10}))
    sleeps = Sleeps()
    b = bucket(cfg, "hubspot", sleep=sleeps)
    assert b.acquire() == 0  # burst of 1, then 9 per 10 s
    assert 1.0 <= b.acquire() <= 10 / 9
    assert "using a local bucket" in caplog.text


def test_a_redis_that_does_not_answer_is_asked_again_only_after_a_pause(tmp_path):
    import socket
    import time as clock
    with socket.socket() as silent:  # accepts connections, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        cfg = load_config(data=base_config(tmp_path, queue={
            "url": f"redis://127.0.0.1:{silent.getsockname()[1]}/0", "socket_timeout": 0.3},
            hubspot={"mode": "dry-run", "requests_per_10s": 1000}))
        b = bucket(cfg, "hubspot", sleep=lambda s: None)
        started = clock.monotonic()
        b.acquire()  # waits out the socket timeout once, then falls back
        first = clock.monotonic() - started
        started = clock.monotonic()
        for _ in range(5):
            b.acquire()
        assert first >= 0.3 and clock.monotonic() - started < 0.1  # no socket timeout per call


class Clock:
    """A clock the buckets read and sleep on: each sleep moves it on."""

    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def most_in_one_second(times: list[float]) -> int:
    return max(sum(1 for u in times if t <= u < t + 1 - 1e-3) for t in times)


def test_searches_keep_their_pace_when_the_ten_second_bucket_is_backlogged(tmp_path):
    from connector.crm.hubspot_api import HubSpotApi
    cfg = load_config(data=base_config(tmp_path, hubspot={
        "mode": "live", "access_token": "pat", "requests_per_10s": 100, "searches_per_second": 2}))
    clock = Clock()
    ten = TokenBucket(90, per=10, capacity=10, clock=clock, sleep=clock.sleep)
    search = TokenBucket(2, per=1, capacity=1, clock=clock, sleep=clock.sleep)
    api = HubSpotApi(cfg.hubspot, bucket=ten, search_bucket=search)
    api.sleep = clock.sleep
    for _ in range(28):  # a burst of writes: the 10 s bucket is 2 s behind
        ten._reserve(1)
    sent: list[float] = []
    start = clock.now
    for _ in range(8):  # searches queued behind it, each sent when its waits are over
        clock.now = start  # as if all asked at once (each thread sleeps on its own)
        api.call(lambda **kw: sent.append(clock.now), search=True)
    assert most_in_one_second(sent) <= 2, sent  # searches_per_second, after the backlog too
    assert sent[0] >= start + 2  # and none before the 10 s bucket's backlog is through


def test_searches_from_several_processes_keep_their_pace_through_redis(redis_url):
    from connector.ratelimit import acquire_together
    url, prefix = redis_url
    waits = Sleeps()
    client = redis.Redis.from_url(url)
    ten = RedisTokenBucket(client, f"{prefix}:ratelimit:joint:10s", rate=90, per=10, capacity=10, sleep=waits)
    search = RedisTokenBucket(client, f"{prefix}:ratelimit:joint:search", rate=2, per=1, capacity=1, sleep=waits)
    for _ in range(28):
        ten._reserve(1)
    due = []
    for _ in range(8):  # as if from several processes at once: when each may send
        asked = time.monotonic()
        due.append(asked + acquire_together(search, ten))
    due = [d - due[0] for d in due]
    assert most_in_one_second(due) <= 2, due  # two a second, not the 10 s bucket's nine
    assert waits.waits[0] >= 2 - 0.1  # and behind the writes' backlog


def test_a_search_on_a_bucket_without_a_shared_store_takes_one_token_then_the_other(tmp_path):
    from connector.crm.hubspot_api import HubSpotApi
    taken = []

    class Bucket:
        def __init__(self, name):
            self.name = name

        def acquire(self, cost=1):
            taken.append(self.name)
            return 0.0

    cfg = load_config(data=base_config(tmp_path, hubspot={"mode": "live", "access_token": "pat"}))
    api = HubSpotApi(cfg.hubspot, bucket=Bucket("10s"), search_bucket=Bucket("search"))
    api.call(lambda **kw: None, search=True)
    assert taken == ["search", "10s"]


def test_one_bucket_given_for_both_is_taken_from_once():
    from connector.ratelimit import acquire_together
    clock = Clock()
    one = TokenBucket(1, per=1, capacity=1, clock=clock, sleep=clock.sleep)
    assert acquire_together(one, one) == 0 and acquire_together(one, one) == 1.0  # no deadlock, one token each
