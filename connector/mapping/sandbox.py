"""The template sandbox and the filters admins may use.

ImmutableSandboxedEnvironment: no attribute that starts with ``_``, no code, no file
access, no mutation of the variables. HTML fields get an environment whose ``safe``
filter escapes instead of trusting: only Markup the connector built (``body_html``)
goes out unescaped, so text from a phone never reaches HubSpot as live HTML.
"""
from __future__ import annotations

from datetime import date, datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import phonenumbers
from jinja2 import StrictUndefined, pass_context
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment
from markupsafe import escape

from ..events import parse_timestamp

PHONE_FORMATS = {
    "e164": phonenumbers.PhoneNumberFormat.E164,
    "national": phonenumbers.PhoneNumberFormat.NATIONAL,
    "international": phonenumbers.PhoneNumberFormat.INTERNATIONAL,
    "rfc3966": phonenumbers.PhoneNumberFormat.RFC3966,
}
MAX_REPEAT = 100_000  # longest string/list `*` may build; a typo must not eat the worker's memory


def phone(value, fmt: str = "international") -> str:
    """``{{ external.e164|phone('national') }}``: e164, national, international, rfc3966, digits."""
    text = "" if value is None else str(value)
    if fmt == "digits":
        return "".join(ch for ch in text if ch.isdigit())
    if fmt not in PHONE_FORMATS:
        raise ValueError(f"phone: unknown format {fmt!r} (use {', '.join([*PHONE_FORMATS, 'digits'])})")
    try:
        num = phonenumbers.parse(text, None)
    except phonenumbers.NumberParseException:
        return text  # not a number we can format: show it as the provider sent it
    return phonenumbers.format_number(num, PHONE_FORMATS[fmt])


def _zone(ctx, tz: str | None) -> ZoneInfo:
    name = tz or ctx.get("time_zone") or "UTC"
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {name!r} (use an IANA name such as Europe/Paris)")


def _as_datetime(value) -> datetime:
    if isinstance(value, datetime):
        return value
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day)
    parsed = parse_timestamp(value)
    if parsed is None:
        raise ValueError(f"not a date or time: {value!r}")
    return parsed


@pass_context
def format_datetime(ctx, value, fmt: str = "%Y-%m-%d %H:%M %Z", tz: str | None = None) -> str:
    """``{{ message.time|datetime('%d %b %Y %H:%M') }}`` in the configured time zone
    (or ``tz``). Takes a datetime, ISO 8601 text or epoch seconds/milliseconds."""
    dt = _as_datetime(value)
    if dt.tzinfo is not None:
        dt = dt.astimezone(_zone(ctx, tz))
    return dt.strftime(fmt)


@pass_context
def format_date(ctx, value, fmt: str = "%Y-%m-%d", tz: str | None = None) -> str:
    return format_datetime(ctx, value, fmt, tz)


class _Sandbox(ImmutableSandboxedEnvironment):
    intercepted_binops = frozenset({"*", "**"})

    def call_binop(self, context, operator, left, right):
        if operator == "**" and isinstance(right, (int, float)) and abs(right) > 100:
            raise SecurityError("exponent too large")
        if operator == "*":
            for seq, n in ((left, right), (right, left)):
                if isinstance(seq, (str, list, tuple)) and isinstance(n, int) and len(seq) * n > MAX_REPEAT:
                    raise SecurityError(f"result too long (over {MAX_REPEAT} items)")
        return super().call_binop(context, operator, left, right)


def environment(html: bool) -> ImmutableSandboxedEnvironment:
    env = _Sandbox(autoescape=html, undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True,
                   keep_trailing_newline=False)
    env.policies["truncate.leeway"] = 0  # truncate(255) means at most 255 characters
    env.filters.update(phone=phone, datetime=format_datetime, date=format_date)
    if html:
        # `|safe` cannot unlock escaping: plain text is escaped, connector Markup passes.
        env.filters["safe"] = escape
    return env


FILTERS = {
    "phone(format)": "phone number as `e164`, `national`, `international` (default), `rfc3966` or `digits`",
    "datetime(format, tz)": "a time in the configured `time_zone` (or `tz`), strftime format, default `%Y-%m-%d %H:%M %Z`",
    "date(format, tz)": "the same with default format `%Y-%m-%d`",
    "truncate(n)": "at most n characters, ending in `...` when cut",
}
