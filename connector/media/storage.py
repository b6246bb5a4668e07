"""Where fetched media bytes live: a small interface, a local directory or an S3 bucket.

Keys are relative paths chosen by the connector (never by a sender). A local directory
on a shared mount (NFS, EFS, SMB) serves several machines; so does a bucket of S3 or of
an S3-compatible store (MinIO, Ceph, R2), without a shared file system.
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


class StorageUnavailable(OSError):
    """The store could not be reached or refused the request (an S3 outage, throttling,
    denied access): the file may well be there. Links answer 503, not 410."""


class S3Storage:
    """Objects under ``prefix`` in one bucket (boto3). A PUT is atomic: readers see the
    whole object or none. Credentials come from boto3's usual chain (environment
    variables, shared credentials file, instance or task role)."""

    def __init__(self, bucket: str, prefix: str = "", client=None, *, endpoint_url: str = "",
                 region: str = ""):
        if client is None:
            import boto3
            client = boto3.client("s3", endpoint_url=endpoint_url or None, region_name=region or None)
        self.client = client
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""

    def _key(self, key: str) -> str:
        if not key or key.startswith("/") or ".." in key.split("/"):
            raise ValueError(f"media key escapes the store: {key!r}")
        return self.prefix + key

    def _missing(self, exc: Exception) -> bool:
        from botocore.exceptions import ClientError
        return isinstance(exc, ClientError) and exc.response.get("Error", {}).get("Code") in (
            "404", "NoSuchKey", "NotFound")

    def _unavailable(self, exc: Exception) -> StorageUnavailable:
        code = getattr(exc, "response", {}).get("Error", {}).get("Code") or type(exc).__name__
        return StorageUnavailable(f"S3 bucket {self.bucket}: {code}")

    def put(self, key: str, data: bytes) -> None:
        key = self._key(key)  # a key that escapes the store is a ValueError, not an outage
        try:
            self.client.put_object(Bucket=self.bucket, Key=key, Body=data)
        except Exception as exc:
            raise self._unavailable(exc) from exc

    def open(self, key: str) -> BinaryIO:
        full = self._key(key)
        try:
            return self.client.get_object(Bucket=self.bucket, Key=full)["Body"]
        except Exception as exc:
            if self._missing(exc):
                raise FileNotFoundError(key) from None
            raise self._unavailable(exc) from exc

    def size(self, key: str) -> int | None:
        full = self._key(key)
        try:
            return self.client.head_object(Bucket=self.bucket, Key=full)["ContentLength"]
        except Exception as exc:
            if self._missing(exc):
                return None
            raise self._unavailable(exc) from exc

    def delete(self, key: str) -> bool:
        if self.size(key) is None:  # S3 answers a delete of a missing key like any other
            return False
        full = self._key(key)
        try:
            self.client.delete_object(Bucket=self.bucket, Key=full)
        except Exception as exc:
            raise self._unavailable(exc) from exc
        return True

    def local_path(self, key: str) -> Path | None:
        return None


def make_storage(config) -> "Storage":
    """The store ``media.*`` names: its S3 bucket when one is set, else its directory."""
    m = config.media
    if m.s3.bucket:
        return S3Storage(m.s3.bucket, m.s3.prefix, endpoint_url=m.s3.endpoint_url, region=m.s3.region)
    return LocalStorage(config.resolve(m.dir))
