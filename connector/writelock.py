"""One SQLite writer at a time, across the threads and processes of one machine.

SQLite lets one transaction write at a time; a second writer waits in SQLite's busy
handler, which sleeps in steps of up to 100 ms and wrecks webhook latency when two
gunicorn processes (or `serve` and a `worker`) share one database file. Writers queue
here instead: a thread mutex inside the process, then a blocking ``flock`` on
``<database>.lock`` between processes, which the kernel hands over the moment it is
released (the ``filelock`` package polls every 50 ms, the very wait this avoids).
"""
from __future__ import annotations

import os
import threading

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
                fcntl.flock(fd, fcntl.LOCK_EX)
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
