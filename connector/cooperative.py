"""What changes when a web process runs under gevent (gunicorn ``-k gevent``, README).

gevent's monkey-patching turns threads into greenlets that take turns on one OS thread:
no GIL handed between threads, no kernel context switch per request (measured here,
bench/throughput.py: about 6 per webhook with ``--threads 8``, under 0.3 with gevent). Two things
then need saying explicitly:

- a greenlet runs until it blocks, so requests that arrived together are read one after
  another, never "in flight" at once: the webhook's group commit (inbox_writer.py) yields
  before writing, until no more queue, so that they can join its transaction;
- a C call that blocks (a SQLite WAL checkpoint, which syncs the database file; a wait for
  another process's write lock) stops every request of the process meanwhile: ``off_loop``
  runs it on a real thread.
"""
from __future__ import annotations

import sys
import time
from typing import Callable, TypeVar

T = TypeVar("T")


def active() -> bool:
    """Whether this process's threads are gevent greenlets."""
    monkey = sys.modules.get("gevent.monkey")
    return monkey is not None and monkey.is_module_patched("threading")


def yield_now() -> None:
    """Let every other greenlet that is ready run (their reads, their parsing) before
    going on; without gevent, nothing to do."""
    if active():
        time.sleep(0)  # gevent's sleep(0): back once the ready greenlets had their turn


def off_loop(fn: Callable[..., T], *args) -> T:
    """``fn(*args)`` on one of gevent's native threads when greenlets share this thread
    (the caller's greenlet waits, the others go on); else just ``fn(*args)``."""
    if not active():
        return fn(*args)
    import gevent
    return gevent.get_hub().threadpool.apply(fn, args)
