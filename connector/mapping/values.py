"""What a field's text (a constant as written, or a rendered template) becomes in the
CRM, and whether a typed field can take it. Constants and template output follow the
same rules, so `check` refuses `ActivityDate: 2026-02-30` and a template rendering
`20/11/2026` into a date field alike.
"""
from __future__ import annotations

import re
from datetime import date, datetime
from typing import Any

from . import fields as F

_NUMBER = re.compile(r"-?\d+(\.\d+)?")
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_BOOLS = {"true": True, "false": False, "yes": True, "no": False, "on": True, "off": False}
_TEXT_TYPES = (F.TEXT, F.HTML, F.PICKLIST)


def convert(text: str, spec: F.Field | None, crm: str) -> Any:
    """The value sent for ``text``: numbers and true/false typed for Salesforce,
    text otherwise (HubSpot takes every property value as text)."""
    text = str(text)
    if spec is None or spec.type in _TEXT_TYPES:
        # Salesforce's render cuts to salesforce.field_limits (UTF-16 aware); HubSpot's here.
        if (crm == "hubspot" and spec is not None and spec.max_length and spec.type != F.HTML
                and len(text) > spec.max_length):
            # The CRM would refuse the whole entry; the mark only where it leaves room.
            cut = spec.max_length - 3 if spec.max_length > 3 else spec.max_length
            text = text[:cut] + ("..." if cut < spec.max_length else "")
        return text
    stripped = text.strip()
    if spec.type == F.BOOL and stripped.lower() in _BOOLS:
        return _BOOLS[stripped.lower()]  # HubSpot's render writes it as "true"/"false"
    if crm != "salesforce":
        return text
    if not stripped:
        return None  # an empty date/number clears the field rather than failing
    if spec.type == F.NUMBER and _NUMBER.fullmatch(stripped):
        return float(stripped) if "." in stripped else int(stripped)
    return stripped


def problem(value: Any, spec: F.Field | None, crm: str) -> str | None:
    """Why the field cannot take ``value`` (a ``convert`` result), or None."""
    if spec is None or value is None or value == "":
        return None
    text, name = str(value).strip(), spec.name
    shown = text if len(text) <= 40 else text[:37] + "..."
    epoch = crm == "hubspot" and text.isdigit()  # HubSpot dates also take epoch milliseconds
    if spec.type == F.NUMBER and not (isinstance(value, (int, float)) and not isinstance(value, bool)
                                      or _NUMBER.fullmatch(text)):
        return f"`{name}` takes a number (e.g. 42), not `{shown}`"
    if spec.type == F.BOOL and not isinstance(value, bool):
        return f"`{name}` takes true or false, not `{shown}`"
    if spec.type == F.DATE and not (epoch or _is_date(text)):
        return f"`{name}` takes a date as YYYY-MM-DD (e.g. 2026-11-20), not `{shown}`"
    if spec.type == F.DATETIME and not (epoch or _is_datetime(text)):
        return (f"`{name}` takes a date and time as ISO 8601 (e.g. 2026-11-20T15:04:00Z"
                + (" or epoch milliseconds" if crm == "hubspot" else "") + f"), not `{shown}`")
    if spec.type == F.PICKLIST and spec.options and text not in spec.options:
        return (f"`{shown}` is not a value of `{name}` (use {', '.join(spec.options)})"
                + F.suggest(text, spec.options))
    return None


def _is_date(text: str) -> bool:
    try:
        return bool(_DATE.fullmatch(text)) and bool(date.fromisoformat(text))
    except ValueError:
        return False


def _is_datetime(text: str) -> bool:
    try:
        return len(text) > 10 and bool(datetime.fromisoformat(text))
    except ValueError:
        return False
