"""Where fetched media bytes live: a small interface, a local-directory implementation.

Keys are relative paths chosen by the connector (never by a sender). A local directory
on a shared mount (NFS, EFS, SMB) serves several machines; object storage can be added
later as another class with the same four methods.
"""
from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import BinaryIO, Protocol


class Storage(Protocol):
    def put(self, key: str, data: bytes) -> None:
        """Store ``data`` under ``key`` atomically (readers see all of it or nothing)."""

    def open(self, key: str) -> BinaryIO:
        """A binary file object to read; FileNotFoundError when the key is gone."""

    def size(self, key: str) -> int | None:
        """Size in bytes, None when the key is gone."""

    def delete(self, key: str) -> bool:
        """Remove ``key``; False when it was already gone."""

    def local_path(self, key: str) -> Path | None:
        """A local file path for ``key`` when there is one (lets the server use sendfile)."""


class LocalStorage:
    """Files under one directory; writes go to a temp file, then an atomic rename."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def _path(self, key: str) -> Path:
        p = (self.root / key).resolve()
        if self.root.resolve() not in p.parents:
            raise ValueError(f"media key escapes the store: {key!r}")
        return p

    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".incoming-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def open(self, key: str) -> BinaryIO:
        return open(self._path(key), "rb")

    def size(self, key: str) -> int | None:
        try:
            return self._path(key).stat().st_size
        except FileNotFoundError:
            return None

    def local_path(self, key: str) -> Path | None:
        return self._path(key)

    def remove_partial(self, older_than: float) -> int:
        """Delete temp files a killed writer left behind (older than ``older_than`` seconds)."""
        cutoff = time.time() - older_than
        removed = 0
        for p in self.root.rglob(".incoming-*"):
            try:
                if p.stat().st_mtime < cutoff:
                    p.unlink()
                    removed += 1
            except FileNotFoundError:
                pass
        return removed

    def delete(self, key: str) -> bool:
        try:
            self._path(key).unlink()
            return True
        except FileNotFoundError:
            return False
