"""Fetch once, keep: download a message's attachments into the media store.

Runs in the worker when a message is processed, never on the webhook path. Each
attachment is keyed by (message id, position) and reserved with a lease row before it
is fetched, so the two CRMs' deliveries of one message, even on two workers, fetch it
once. The type is decided from the bytes (``filetype``), not from the sender's claim.
"""
from __future__ import annotations

import hashlib
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_exponential

from .. import mms
from ..config import CarrierProfile
from ..crm.base import RateLimited
from ..events import Media
from ..fetch import FetchError, FetchPolicy, fetch
from ..render import SUPPORTED_TYPES
from ..store import (MEDIA_AVAILABLE, MEDIA_FETCHING, MEDIA_TOO_LARGE, MEDIA_UNAVAILABLE,
                     MEDIA_UNSUPPORTED, Store, new_owner_id)
from .names import extension
from .storage import Storage

log = logging.getLogger("connector.media")

# Worth another try: the provider or the network may recover. A refused URL or an
# oversize file will not.
_RETRYABLE = ("http_error", "timeout", "network")
# Attachments of one message fetched at once (each holds at most one file in memory).
PARALLEL_FETCHES = 4


class MediaBusy(RateLimited):
    """Another worker is fetching this message's media; come back shortly (no attempt spent,
    no CRM asked anything: it shows as ``media_busy``, not as a rate limit)."""

    reason = "media_busy"


@dataclass(frozen=True)
class Verdict:
    state: str
    detected_type: str | None
    reason: str


def classify(data: bytes, declared_type: str, profile: CarrierProfile) -> Verdict:
    """Supported, unsupported or too large, judged by the bytes (the MMS rules in mms.py)."""
    detected = mms.detect_type(data)
    check = mms.check_attachment(0, mms.Attachment(source="", content=data), profile)
    if check.ok:
        return Verdict(MEDIA_AVAILABLE, detected, "")
    if check.format is None or check.format not in profile.formats:
        shown = detected or declared_type or "unknown type"
        return Verdict(MEDIA_UNSUPPORTED, detected, f"unsupported format ({shown})")
    limit = mms.size_limit(check.format, profile)
    return Verdict(MEDIA_TOO_LARGE, detected,
                   f"too large ({mms.format_limit(len(data))}; the limit is {mms.format_limit(limit)})")


def storage_key(message_id: str, idx: int, detected_type: str | None) -> str:
    h = hashlib.sha256(message_id.encode("utf-8")).hexdigest()
    return f"{h[:2]}/{h}/{idx + 1}{extension(detected_type)}"


class MediaCollector:
    def __init__(self, store: Store, storage: Storage, policy: FetchPolicy, *,
                 retention_seconds: float, attempts: int = 3, retry_wait: float = 1.0,
                 lease_seconds: float = 120):
        self.store = store
        self.storage = storage
        self.policy = policy
        self.retention_seconds = retention_seconds
        self.attempts = attempts
        self.retry_wait = retry_wait
        self.lease_seconds = lease_seconds

    def collect(self, message_id: str, media: list[Media], profile: CarrierProfile) -> list[dict]:
        """Fetch what is not fetched yet; the message's media rows, in order.

        Raises MediaBusy when another worker holds some of them, so this delivery is
        parked briefly instead of rendering an entry without those links.
        """
        done = {r["idx"]: r for r in self.store.media_rows(message_id) if r["state"] != MEDIA_FETCHING}
        owner = new_owner_id()
        mine, busy = [], False
        for idx, item in enumerate(media):
            if idx in done:
                continue
            if self.store.media_claim(message_id, idx, name=item.file_name[:300],
                                      declared_type=item.content_type[:120], owner=owner,
                                      lease_seconds=self.lease_seconds):
                mine.append((idx, item))
            else:
                busy = True
        # A few at a time: a slow or failing provider URL does not hold up the others.
        with ThreadPoolExecutor(max_workers=max(1, min(PARALLEL_FETCHES, len(mine)))) as pool:
            futures = [(idx, pool.submit(self._fetch_and_keep, message_id, idx, item, profile))
                       for idx, item in mine]
        failure = None
        for idx, fut in futures:
            try:
                values = fut.result()
                if not self.store.media_finish(message_id, idx, owner, **values):
                    self._drop_unkept(message_id, idx, values.get("path"))
            except Exception as exc:  # disk full, store down: let a retry take it over
                self.store.media_release(message_id, idx, owner)
                failure = failure or exc
        if failure is not None:
            raise failure
        if busy:
            # This delivery only: the CRM's other deliveries have nothing to wait for.
            raise MediaBusy(f"media of message {message_id} is being fetched by another worker",
                            retry_after=2, whole_crm=False)
        return self.store.media_rows(message_id)

    def _drop_unkept(self, message_id: str, idx: int, key: str | None) -> None:
        """This fetch outlived its lease and another worker settled the attachment: a file
        it stored that the row does not point at would never be purged (retention)."""
        if not key:
            return
        row = next((r for r in self.store.media_rows(message_id) if r["idx"] == idx), None)
        if row is not None and row["state"] != MEDIA_FETCHING and row["path"] != key:
            self.storage.delete(key)
            log.info("message %s attachment %d: its copy from a lost lease deleted", message_id, idx + 1)

    def _fetch_and_keep(self, message_id: str, idx: int, item: Media, profile: CarrierProfile) -> dict:
        now = time.time()
        values = dict(fetched_at=now, expires_at=now + self.retention_seconds)
        if idx >= profile.max_files:
            return values | dict(state=MEDIA_UNSUPPORTED,
                                 reason=f"over the limit of {profile.max_files} attachments")
        cap = min(self.policy.max_bytes, max(profile.image_max_bytes, profile.pdf_max_bytes))
        try:
            got = self._fetch(item.url, cap)
        except FetchError as exc:
            declared = (item.content_type or "").split(";")[0].strip().lower()
            if exc.kind == "too_large":
                state, reason = MEDIA_TOO_LARGE, f"too large (over {mms.format_limit(cap)})"
            elif declared and declared not in SUPPORTED_TYPES | {"image/jpg"}:
                # Could not be received either way: the rep is told the reason that holds
                # whatever the bytes were (the article's unsupported-format alert).
                state, reason = MEDIA_UNSUPPORTED, f"unsupported format ({declared})"
            else:
                state, reason = MEDIA_UNAVAILABLE, f"unavailable: {exc}"
            log.warning("message %s attachment %d: %s", message_id, idx + 1, reason)
            return values | dict(state=state, reason=reason[:1000])
        verdict = classify(got.content, item.content_type, profile)
        values |= dict(state=verdict.state, detected_type=verdict.detected_type, size=got.size,
                       sha256=hashlib.sha256(got.content).hexdigest(), reason=verdict.reason or None)
        if verdict.state == MEDIA_AVAILABLE:
            key = storage_key(message_id, idx, verdict.detected_type)
            self.storage.put(key, got.content)
            values["path"] = key
        log.info("message %s attachment %d: %s (%s, %d bytes)", message_id, idx + 1,
                 verdict.state, verdict.detected_type or "unknown type", got.size)
        return values

    def _fetch(self, url: str, cap: int):
        retrying = Retrying(
            stop=stop_after_attempt(self.attempts),
            wait=wait_exponential(multiplier=self.retry_wait, max=max(self.retry_wait * 4, 0.001)),
            retry=retry_if_exception(lambda e: isinstance(e, FetchError) and e.kind in _RETRYABLE),
            reraise=True)
        return retrying(fetch, url, self.policy, max_bytes=cap)
