"""The normalized message event every provider adapter produces.

Writers and mappings see only this model; the raw provider payload rides along
so nothing the provider said is lost.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, NamedTuple

INBOUND = "inbound"
OUTBOUND = "outbound"

# Delivery status, normalized. Rank decides what may replace what: a status only
# replaces one of lower rank, so a late "sent" never overwrites "delivered".
RECEIVED = "received"
PENDING = "pending"
SENT = "sent"
DELIVERED = "delivered"
FAILED = "failed"  # shown to reps as "Not sent"
UNKNOWN = "unknown"

STATUS_RANK = {UNKNOWN: -1, PENDING: 0, SENT: 1, RECEIVED: 2, DELIVERED: 2, FAILED: 2}
FINAL_STATUSES = frozenset({RECEIVED, DELIVERED, FAILED})
STATUS_LABELS = {
    RECEIVED: "Received",
    PENDING: "Pending",
    SENT: "Sent",
    DELIVERED: "Delivered",
    FAILED: "Not sent",
    UNKNOWN: "Unknown",
}

# Event kinds a mapping file has an entry for.
KIND_INBOUND = "inbound"
KIND_OUTBOUND = "outbound"
KIND_STATUS = "status"


def status_advances(current: str | None, new: str) -> bool:
    """True when ``new`` may replace ``current`` (status never regresses)."""
    if current is None:
        return True
    return STATUS_RANK.get(new, -1) > STATUS_RANK.get(current, -1)


class Media(NamedTuple):  # a tuple: six of them per webhook cost a frozen dataclass's 20 us
    url: str
    file_name: str = ""
    content_type: str = ""


@dataclass
class MessageEvent:
    provider: str
    event: str  # provider event name, e.g. message.received
    message_id: str
    direction: str  # inbound | outbound
    status: str  # normalized status
    channel: str  # sms | mms
    line: str  # our line, E.164 ("" when the provider did not say)
    external: str  # the other party, E.164 (or as sent when it cannot be parsed)
    text: str
    media: list[Media]
    occurred_at: datetime  # UTC
    line_name: str = ""
    line_country: str = ""
    provider_status: str = ""
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def kind(self) -> str:
        if self.event.endswith("status_updated"):
            return KIND_STATUS
        return KIND_INBOUND if self.direction == INBOUND else KIND_OUTBOUND

    @property
    def dedup_key(self) -> str:
        """One stored row per provider message, event and status."""
        return f"{self.provider}:{self.message_id}:{self.event}:{self.status}"

    @property
    def occurred_at_ms(self) -> int:
        return int(self.occurred_at.timestamp() * 1000)


def parse_timestamp(value: Any) -> datetime | None:
    """Epoch seconds, epoch milliseconds (values above 1e11) or ISO 8601, to UTC."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        try:
            seconds = value / 1000 if abs(value) > 1e11 else value  # an int past 1e308 overflows here
            return datetime.fromtimestamp(seconds, tz=timezone.utc)
        except (OverflowError, OSError, ValueError):
            return None
    if isinstance(value, str):
        s = value.strip()
        if not s:
            return None
        if s.lstrip("-").isdigit():
            # ASCII digits only ("²" is a digit to str.isdigit, not to int), and short
            # enough for int() to take (it refuses more than 4,300 digits).
            return parse_timestamp(int(s)) if s.isascii() and len(s) <= 20 else None
        try:
            dt = datetime.fromisoformat(s.replace("Z", "+00:00"))
            if dt.tzinfo is None:
                dt = dt.replace(tzinfo=timezone.utc)
            return dt.astimezone(timezone.utc)
        except (ValueError, OverflowError):  # not ISO 8601, or past year 1 / 9999 in UTC
            return None
    return None
