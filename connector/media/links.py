"""Signed media links: ``<public_base_url>/media/<token>``.

The token is an itsdangerous signature over (message id, attachment index or "all",
expiry). Changing any part breaks the signature, so a link cannot be forged, pointed
at another file, or extended past the retention the file was stored with.
"""
from __future__ import annotations

import logging
import os
import secrets
import tempfile
import time
from pathlib import Path

from itsdangerous import BadSignature, URLSafeSerializer

log = logging.getLogger("connector.media")

SECRET_FILE = ".signing-secret"
_SALT = "connector.media.link"


class InvalidLink(Exception):
    """The token was not signed by us (tampered, truncated, wrong secret)."""


def load_or_create_secret(directory: Path) -> str:
    """The secret kept in ``directory``; created once, race-free across processes."""
    path = directory / SECRET_FILE
    for _ in range(50):
        try:
            value = path.read_text(encoding="ascii").strip()
        except FileNotFoundError:
            value = ""
        if value:
            return value
        directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".secret-")
        try:
            with os.fdopen(fd, "w", encoding="ascii") as f:
                f.write(secrets.token_urlsafe(48))
            os.chmod(tmp, 0o600)
            # link() never replaces: when two processes race, both read the winner's secret.
            os.link(tmp, path)
            log.warning("media.signing_secret is empty: generated one in %s (keep it; set "
                        "MEDIA_SIGNING_SECRET to manage it yourself)", path)
        except FileExistsError:
            pass
        finally:
            Path(tmp).unlink(missing_ok=True)
    raise RuntimeError(f"cannot read or create the media signing secret {path}")


class LinkSigner:
    def __init__(self, base_url: str, secret: str, previous: list[str] | None = None):
        self.base_url = base_url.rstrip("/")
        if not secret:
            raise ValueError("links need a signing secret")
        # itsdangerous signs with the last key and accepts any of them: never an empty one.
        self._serializer = URLSafeSerializer([*(k for k in previous or [] if k), secret], salt=_SALT)

    def token(self, message_id: str, index: int | None, expires_at: float) -> str:
        """A token for one attachment (``index``) or the whole message (None)."""
        return self._serializer.dumps({"m": message_id, "i": "all" if index is None else index,
                                       "x": int(expires_at)})

    def url(self, message_id: str, index: int | None, expires_at: float) -> str:
        return f"{self.base_url}/media/{self.token(message_id, index, expires_at)}"

    def read(self, token: str) -> tuple[str, int | None, float]:
        """(message id, index or None for all, expiry); InvalidLink when not ours."""
        try:
            data = self._serializer.loads(token)
            message_id, index, expires = data["m"], data["i"], data["x"]
        except (BadSignature, KeyError, TypeError, ValueError) as exc:
            raise InvalidLink(str(exc)) from exc
        if not isinstance(message_id, str) or not isinstance(expires, int) or not (
                index == "all" or (isinstance(index, int) and not isinstance(index, bool))):
            raise InvalidLink("malformed token")
        return message_id, (None if index == "all" else index), float(expires)

    @staticmethod
    def expired(expires_at: float, now: float | None = None) -> bool:
        return (now or time.time()) >= expires_at
