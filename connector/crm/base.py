"""What every CRM writer implements, and the errors that steer retries.

A writer turns one MessageEvent into one CRM entry (create, or update the entry it
created before). It raises TransientError / RateLimited for the pipeline to retry
later, PermanentError to dead-letter, and returns an Outcome otherwise.
"""
from __future__ import annotations

import hashlib
import json
import re
from datetime import datetime
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

from ..config import Config
from ..events import KIND_INBOUND, KIND_OUTBOUND, KIND_STATUS, INBOUND, MessageEvent, status_advances
from ..mapping import Mapping
from ..render import MediaView, build_context


class WriteError(Exception):
    pass


class Meter:
    """What one CRM's client tells /metrics: each request sent and how it ended, the time
    its rate-limit bucket held it back, and where contact lookups were answered. Silent
    until the runtime attaches its ``connector.metrics.Metrics`` (tests, previews, benches
    run without)."""

    def __init__(self, target: str):
        self.target = target
        self.metrics = None

    def request(self, result: str) -> None:
        """``ok``, ``rate_limited`` (the CRM refused for its limit) or ``error``."""
        if self.metrics is not None:
            self.metrics.crm_request(self.target, result)

    def waited(self, seconds: float) -> None:
        if self.metrics is not None and seconds > 0:
            self.metrics.rate_limit_wait(self.target, seconds)

    def lookups(self, source: str, count: int) -> None:
        """``count`` phone numbers answered from the ``cache`` or looked up in the ``crm``."""
        if self.metrics is not None and count:
            self.metrics.contact_lookups(self.target, source, count)

    def usage(self, used: int, allocation: int) -> None:
        if self.metrics is not None:
            self.metrics.api_usage(self.target, used, allocation)


class TransientError(WriteError):
    """Try again later (5xx, timeout, connection reset); ``retry_after`` in seconds if known."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class RateLimited(TransientError):
    """The CRM asked us to stop until ``retry_after`` seconds from now; not a failed attempt.

    ``whole_crm`` (the CRM's own limit): every open delivery to that CRM is parked until
    then, in every process. False parks only this item (its own wait: status updates held
    while Salesforce usage is near the allocation, and the like).
    """

    reason = "rate_limited"  # how the wait shows in logs and /metrics

    def __init__(self, message: str, retry_after: float | None = None, whole_crm: bool = True):
        super().__init__(message, retry_after)
        self.whole_crm = whole_crm


class PermanentError(WriteError):
    """The CRM refused the entry; retrying cannot help. Goes to the dead letters."""


@dataclass
class Outcome:
    state: str  # delivered | dry-run | skipped
    rendered: Any = None
    result: dict = field(default_factory=dict)


@dataclass
class DeliveryContext:
    store: Any  # connector.store.Store
    config: Config
    media: list[MediaView]
    download_all_link: str = ""


class Writer(Protocol):
    """One CRM. Writers may also offer ``deliver_many(items)``, taking a list of
    ``(event, ctx)`` and returning one ``Outcome`` or exception per item, in order, so a
    burst is written with the CRM's batch endpoints and a partial failure retries or
    dead-letters only the failed items."""

    name: str

    def deliver(self, event: MessageEvent, ctx: DeliveryContext) -> Outcome: ...


def entry_kind(event: MessageEvent, operation: str) -> str:
    """Mapping entry for this write: a create uses the message's direction, an update 'status'."""
    if operation == "update":
        return KIND_STATUS
    return KIND_INBOUND if event.direction == INBOUND else KIND_OUTBOUND


def template_context(event: MessageEvent, ctx: DeliveryContext, record: dict | None = None) -> dict:
    return build_context(event, ctx.media, download_all_link=ctx.download_all_link,
                         record=record, time_zone=ctx.config.time_zone)


Renderer = Callable[[MessageEvent, DeliveryContext, str, Mapping], dict]


class DryRunWriter:
    """Renders exactly what the live writer would send and records it instead.

    Its entries are kept apart from the live writer's (``<crm>:dry-run`` in crm_records):
    after a switch to live, a message seen in dry-run has no CRM entry yet, and the live
    writer must create one rather than update a placeholder."""

    def __init__(self, name: str, object_type: str, renderer: Renderer, mapping: Callable[[], Mapping]):
        self.name = name
        self.key = f"{name}:dry-run"
        self.object_type = object_type
        self.renderer = renderer
        self.mapping = mapping

    def deliver(self, event: MessageEvent, ctx: DeliveryContext) -> Outcome:
        rec = ctx.store.get_record(self.key, event.message_id)
        if rec and not status_advances(rec["status"], event.status):
            return Outcome("dry-run", rendered=None,
                           result={"unchanged": f"entry already shows status {rec['status']}"})
        operation = "update" if rec else "create"
        entry = self.renderer(event, ctx, operation, self.mapping())
        ctx.store.save_record(self.key, event.message_id, object_type=self.object_type,
                              object_id=(rec or {}).get("object_id") or f"dry-run-{event.message_id}",
                              status=event.status)
        return Outcome("dry-run", rendered=entry, result={"operation": operation})


@dataclass
class CrmFile:
    """An attachment's copy in a CRM (``attachments: crm-files``): the CRM's file id, the
    URL the entry links to and, on Salesforce, the ContentDocument to link to the entry."""
    file_id: str
    url: str
    document_id: str | None = None


def content_digest(value: str | dict | None) -> str:
    """What an intent keeps of what a create sent (a body, or a record's field values), to
    recognise that record in the CRM later; blind to whitespace (CRMs store line breaks as
    \\r\\n) and to how a CRM spells a value it reads back (``_field_value``), and short
    (a body can be 64 KB)."""
    if isinstance(value, dict):
        value = json.dumps({k: _field_value(v) for k, v in value.items()}, sort_keys=True)
    return hashlib.sha256(" ".join((value or "").split()).encode()).hexdigest()[:32]


_DATETIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}")


def _field_value(v) -> str:
    """One field value as sent and as read back alike: Salesforce answers a Number sent as
    0 with 0.0 and a DateTime sent as ...T13:23:09+00:00 with ...T13:23:09.000+0000."""
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return str(int(v)) if float(v).is_integer() else repr(float(v))
    text = " ".join(str(v).split())
    if _DATETIME.match(text):
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            return text
        if moment.tzinfo is not None:  # one instant, however its offset is written
            return f"{round(moment.timestamp() * 1000)}ms"
    return text
