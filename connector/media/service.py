"""The media service: the pipeline's media hook, link resolution, purge.

One instance per process (Runtime.media). The web blueprint, the CLI and the worker
all go through it, so the rules for "available", "expired" and the link format live
in one place.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from functools import cached_property

from .. import mms
from ..config import Config
from ..events import MessageEvent
from ..fetch import FetchPolicy
from ..render import MediaView
from ..store import (MEDIA_AVAILABLE, MEDIA_EXPIRED, MEDIA_TOO_LARGE, MEDIA_UNAVAILABLE,
                     MEDIA_UNSUPPORTED, Store)
from . import names
from .archive import build_zip
from .collect import MediaCollector
from .links import LinkSigner, load_or_create_secret
from .storage import make_storage

log = logging.getLogger("connector.media")

UNAVAILABLE_TEXT = "Some media is unavailable due to an error"
DAY = 86400.0


@dataclass
class Attachment:
    """One stored attachment as the link, the zip and the CLI see it."""
    message_id: str
    index: int  # 0-based position in the message
    name: str  # safe file name
    media_type: str
    size: int | None
    state: str
    reason: str
    key: str | None
    expires_at: float | None

    def servable(self, now: float) -> bool:
        return (self.state == MEDIA_AVAILABLE and self.key is not None
                and self.expires_at is not None and now < self.expires_at)


class MediaService:
    def __init__(self, config: Config, store: Store):
        self.config = config
        self.store = store
        self.root = config.resolve(config.media.dir)
        self.storage = make_storage(config)
        self.collector = MediaCollector(
            store, self.storage, FetchPolicy.from_config(config.fetch),
            retention_seconds=config.media.retention_days * DAY,
            attempts=config.media.fetch_attempts, retry_wait=config.media.fetch_retry_wait,
            lease_seconds=config.worker.lease_seconds)

    @cached_property
    def signer(self) -> LinkSigner:
        m = self.config.media
        secret = m.signing_secret or load_or_create_secret(self.root)
        return LinkSigner(self.config.server.public_base_url, secret, m.previous_signing_secrets)

    # -- the pipeline's hook ---------------------------------------------------------
    def __call__(self, event: MessageEvent, _delivery=None) -> tuple[list[MediaView], str]:
        """Fetch (once) and describe the message's media: (views, download-all link)."""
        _, views, link = self.collected(event)
        return views, link

    def collected(self, event: MessageEvent) -> tuple[list[Attachment], list[MediaView], str]:
        """Fetch (once) the message's media: its attachments, their views (in the same
        order) and the download-all link."""
        if not event.media:
            return [], [], ""
        self.collector.collect(event.message_id, event.media,
                               mms.profile_for(self.config.outbound, event.line))
        attachments = self.attachments(event.message_id)
        return (attachments, *self.views(event.message_id, attachments=attachments))

    def views(self, message_id: str, now: float | None = None,
              attachments: list[Attachment] | None = None) -> tuple[list[MediaView], str]:
        now = now or time.time()
        views: list[MediaView] = []
        expiries = []
        for a in attachments if attachments is not None else self.attachments(message_id):
            view = MediaView(name=a.name, type=a.media_type, link="", size=a.size)
            if a.servable(now):
                view.link = self.signer.url(a.message_id, a.index, a.expires_at)
                expiries.append(a.expires_at)
            elif a.state in (MEDIA_UNSUPPORTED, MEDIA_TOO_LARGE):
                view.supported, view.reason = False, a.reason
            else:
                view.available, view.reason = False, a.reason or "expired"
            views.append(view)
        link = self.signer.url(message_id, None, max(expiries)) if expiries else ""
        return views, link

    # -- reading -----------------------------------------------------------------------
    def attachments(self, message_id: str) -> list[Attachment]:
        out = []
        retention = self.config.media.retention_days * DAY
        for r in self.store.media_rows(message_id):
            media_type = r["detected_type"] or r["declared_type"] or "application/octet-stream"
            state = r["state"]
            reason = r["reason"] or ""
            expires = r["expires_at"]
            if expires is not None and r["fetched_at"] is not None:
                # A retention shortened since the fetch applies at once; a longer one only
                # to media fetched after the change (links already signed cannot be extended).
                expires = min(expires, r["fetched_at"] + retention)
            if state == MEDIA_AVAILABLE and expires is not None and time.time() >= expires:
                state, reason = MEDIA_EXPIRED, "expired"
            elif state == MEDIA_EXPIRED:
                reason = "expired"
            out.append(Attachment(
                message_id=message_id, index=r["idx"],
                name=names.safe_filename(r["name"], r["idx"] + 1, r["detected_type"]),
                media_type=media_type, size=r["size"], state=state, reason=reason,
                key=r["path"], expires_at=expires))
        names_unique = names.unique([a.name for a in out])
        for a, n in zip(out, names_unique):
            a.name = n
        return out

    def present(self, a: Attachment, now: float | None = None) -> bool:
        """Servable and its file is really there, at the size recorded."""
        return a.servable(now or time.time()) and self.storage.size(a.key) == a.size

    def zip_for(self, message_id: str, now: float | None = None):
        """(ZipStream, file name) of the available attachments; None when there are none."""
        now = now or time.time()
        files, missing = [], []
        for a in self.attachments(message_id):
            if self.present(a, now):
                files.append((a.name, a.key, a.size))
            else:
                missing.append(a)
        if not files:
            return None
        notes = ""
        if missing:
            lines = [f"These attachments of message {message_id} are not in this archive:", ""]
            for a in missing:
                why = a.reason if a.state in (MEDIA_UNSUPPORTED, MEDIA_TOO_LARGE) else (
                    f"{UNAVAILABLE_TEXT} ({a.reason or a.state})")
                lines.append(f"- {a.name}: {why}")
            notes = "\n".join(lines) + "\n"
        zs = build_zip(self.storage, files, notes)
        return zs, names.safe_filename(f"mms-{message_id}.zip", 0, None)

    # -- retention -----------------------------------------------------------------------
    def purge(self, now: float | None = None) -> tuple[int, int]:
        """Delete files whose retention ran out: (files deleted, bytes freed)."""
        now = now or time.time()
        count = freed = 0
        failed: set[int] = set()  # kept for the next purge; the others go on meanwhile
        while True:
            rows = self.store.media_expired(now, retention=self.config.media.retention_days * DAY,
                                            exclude=failed)
            if not rows:
                break
            for r in rows:
                try:
                    if r["path"] and self.storage.delete(r["path"]):
                        count += 1
                        freed += r["size"] or 0
                except OSError as exc:  # denied, locked, the store unwell: this file only
                    failed.add(r["id"])
                    log.warning("media purge: %s not deleted (%s); tried again next time", r["path"], exc)
                    continue
                self.store.media_mark_expired(r["id"])
        if count:
            log.info("media purge: deleted %d expired files (%d bytes)", count, freed)
        remove_partial = getattr(self.storage, "remove_partial", None)
        if remove_partial is not None and self.root.exists():
            remove_partial(older_than=DAY)
        return count, freed


__all__ = ["MediaService", "Attachment", "UNAVAILABLE_TEXT", "MEDIA_UNAVAILABLE"]
