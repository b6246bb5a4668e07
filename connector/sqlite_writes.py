"""How SQLite writes stay out of the webhook's way.

One writer at a time, across the threads and processes of one machine: SQLite lets one
transaction write at a time, and a second writer waits in SQLite's busy handler, which
sleeps in steps of up to 100 ms and wrecks webhook latency when two gunicorn processes
(or `serve` and a `worker`) share one database file. Writers queue in ``WriteLock``
instead: a thread mutex inside the process, then a blocking ``flock`` on
``<database>.lock`` between processes, which the kernel hands over the moment it is
released (the ``filelock`` package polls every 50 ms, the very wait this avoids). The
wait has no deadline: a holder that is stopped (not killed: the kernel drops a dead
process's lock) holds up the other writers until it runs again.

WAL checkpoints on a thread of their own: by default SQLite checkpoints inside the
commit that grows the WAL past 1,000 pages, so that commit copies some 4 MB into the
database file and syncs it while holding the write lock, and every webhook queued
behind it waits (acknowledgement p99 at 200 requests/s on a 2-core machine: 26-37 ms
that way, 19-27 ms this way). Each writing process runs a PASSIVE checkpoint once a
second from a ``Checkpointer`` thread: it copies what no reader still needs and never
blocks a writer. Once a second rather than five times: a page that several commits
rewrote (the newest leaf of each index) is copied once, which left more CPU to the
webhooks (about 3% more of them per second under a burst, bench/throughput.py), and the
acknowledgement p99 at 200 requests/s stayed at 2.5-3.1 ms with gevent or threads.
Commits checkpoint only as a backstop, should the WAL ever reach ``BACKSTOP_PAGES``
(40 MB) without the thread.
"""
from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time

from . import cooperative

log = logging.getLogger("connector.store")

BACKSTOP_PAGES = 10_000  # PRAGMA wal_autocheckpoint on our connections (SQLite's default: 1,000)

try:
    import fcntl
except ImportError:  # Windows: processes fall back to SQLite's busy handler
    fcntl = None


class WriteLock:
    def __init__(self, path: str | None):
        self.path = path
        self._mutex = threading.Lock()
        self._fd: int | None = None
        self._pid = 0

    def _file(self) -> int | None:
        if self.path is None or fcntl is None:
            return None
        # A descriptor inherited across fork (gunicorn --preload) shares its lock with the
        # parent, so each process opens its own.
        if self._fd is None or self._pid != os.getpid():
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            self._pid = os.getpid()
        return self._fd

    def __enter__(self):
        self._mutex.acquire()
        try:
            fd = self._file()
            if fd is not None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    # Held by another process. Under gevent the wait goes to a native thread,
                    # or every request of this process would stop with it (the mutex above
                    # already lets one greenlet of the process through).
                    cooperative.off_loop(fcntl.flock, fd, fcntl.LOCK_EX)
        except BaseException:
            self._mutex.release()
            raise
        return self

    def __exit__(self, *exc) -> None:
        try:
            if self._fd is not None and self._pid == os.getpid():
                fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            self._mutex.release()


class Checkpointer:
    """Runs ``PRAGMA wal_checkpoint(PASSIVE)`` on ``path`` every ``interval`` seconds, from
    one daemon thread per process, started by the first write. (The last connection to
    close checkpoints whatever is left, as SQLite always does.)"""

    def __init__(self, path: str | None, interval: float = 1.0):
        self.path = path
        self.interval = interval
        self._pid = 0
        self._start_lock = threading.Lock()

    def ensure_running(self) -> None:
        if self.path is None or self._pid == os.getpid():
            return
        with self._start_lock:
            if self._pid != os.getpid():  # a fork leaves the parent's thread behind
                threading.Thread(target=self._run, name="sqlite-checkpoints", daemon=True).start()
                self._pid = os.getpid()

    def _run(self) -> None:
        conn = None
        while True:
            time.sleep(self.interval)
            try:
                if conn is None:
                    conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
                    conn.execute("PRAGMA synchronous=NORMAL")  # as the store's connections
                # Under gevent on a real thread: the copy and its sync would stop every
                # request of the process meanwhile.
                cooperative.off_loop(lambda: conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall())
            except Exception as exc:  # busy with another process's checkpoint, or worse: next time
                log.debug("WAL checkpoint skipped: %s", exc)
