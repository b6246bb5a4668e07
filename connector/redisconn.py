"""The Redis shared by every process in the scaled-out mode (``queue.url``).

It carries only what may be lost: wake-up nudges, rate-limit buckets and the contact
lookup cache. The store stays the source of truth, so Redis going away slows workers
down (they fall back to polling) but loses nothing.
"""
from __future__ import annotations

import threading

from .config import Config

_clients: dict[str, object] = {}
_lock = threading.Lock()


def enabled(config: Config) -> bool:
    return bool(config.queue.url)


def client(config: Config):
    """One connection pool per URL per process (redis-py clients are thread-safe)."""
    import redis

    url = config.queue.url
    with _lock:
        if url not in _clients:
            _clients[url] = redis.Redis.from_url(url, socket_timeout=config.queue.socket_timeout,
                                                 socket_connect_timeout=config.queue.socket_timeout,
                                                 health_check_interval=30)
        return _clients[url]


def key(config: Config, *parts: str) -> str:
    return ":".join((config.queue.prefix, *parts))
