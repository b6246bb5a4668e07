"""Mappings that follow edits to their file while the service runs.

Each use stats the file (cheap); when it changed, and has not changed for
``SETTLE_SECONDS`` (an editor that saves in pieces can leave a first part that is a valid
mapping on its own), the new file is loaded into a new Mapping and swapped in only when
fully valid. An invalid edit is logged with the same
errors `check` prints (any other failure with its traceback), and the last good mapping
stays in force until the file changes again. A render always uses
one complete Mapping object, never a half-loaded one.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

from . import Mapping, MappingError

log = logging.getLogger("connector.mapping")
SETTLE_SECONDS = 1.0


def _stamp(path: Path):
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


class LiveMapping:
    """A callable returning the current good Mapping (what writers take as ``mapping``)."""

    def __init__(self, path: str | Path, crm: str, time_zone: str = "UTC"):
        self.path, self.crm, self.time_zone = Path(path), crm, time_zone
        self._lock = threading.Lock()
        self._stamp = _stamp(self.path)
        self._current = Mapping.load(self.path, crm, time_zone)  # a bad file at start-up is fatal
        self.last_error: MappingError | None = None

    def __call__(self) -> Mapping:
        if _stamp(self.path) != self._stamp:
            self.reload()
        return self._current

    def __getattr__(self, name: str):
        # Writers that keep "a mapping" read .object/.options/.render from the current one;
        # render functions take one snapshot per request (see ``current``).
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self(), name)

    def reload(self) -> bool:
        """Load the file now if it changed; True when a new mapping took effect."""
        with self._lock:
            stamp = _stamp(self.path)
            if stamp == self._stamp:
                return False
            if stamp is not None and 0 <= time.time() - stamp[0] / 1e9 < SETTLE_SECONDS:
                return False  # maybe still being written: a use once it has settled loads it
            try:
                fresh = Mapping.load(self.path, self.crm, self.time_zone)
            except Exception as exc:  # noqa: BLE001 - whatever a bad edit does, the worker goes on
                self._stamp = stamp  # report a bad edit once, not on every message
                if not isinstance(exc, MappingError):  # a case load() does not know yet: keep the trace
                    log.exception("mapping %s: edit refused (unexpected error)", self._current.path)
                    exc = MappingError([f"{self._current.path}: {type(exc).__name__}: {exc}"])
                self.last_error = exc
                log.error("mapping %s: edit refused, still using the last good mapping:\n%s",
                          self._current.path, "\n".join(f"  {e}" for e in exc.errors))
                return False
            if _stamp(self.path) != stamp:
                return False  # written to while we read it: load the finished file next time
            self._stamp, self._current, self.last_error = stamp, fresh, None
            log.info("mapping %s: reloaded", fresh.path)
            for w in fresh.warnings:
                log.warning("mapping %s", w)
            return True
