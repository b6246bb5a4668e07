"""The template sandbox and the filters admins may use.

ImmutableSandboxedEnvironment: no attribute that starts with ``_``, no code, no file
access, no mutation of the variables. HTML fields get an environment whose ``safe``
filter escapes instead of trusting: only Markup the connector built (``body_html``)
goes out unescaped, so text from a phone never reaches HubSpot as live HTML. What a
render may cost (loops, text built) is bounded by limits.py.
"""
from __future__ import annotations

from datetime import date, datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import phonenumbers
from jinja2 import StrictUndefined, Template, pass_context
from jinja2.compiler import CodeGenerator
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment
from markupsafe import escape

from ..events import parse_timestamp
from . import limits
from .limits import MAX_RANGE, MAX_REPEAT, MAX_TEXT

PHONE_FORMATS = {
    "e164": phonenumbers.PhoneNumberFormat.E164,
    "national": phonenumbers.PhoneNumberFormat.NATIONAL,
    "international": phonenumbers.PhoneNumberFormat.INTERNATIONAL,
    "rfc3966": phonenumbers.PhoneNumberFormat.RFC3966,
}


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


class _CodeGenerator(CodeGenerator):
    """Counts loop iterations and `~` results, which the sandbox cannot intercept:
    ``for x in <iter>`` compiles to ``for x in environment.guard_loop(<iter>)``."""
    _loop_iters: frozenset = frozenset()

    def visit_For(self, node, frame):
        if node.recursive:  # loop(...) would iterate outside the guard
            self.fail("recursive loops are not allowed", node.lineno)
        self._loop_iters = self._loop_iters | {id(node.iter)}
        super().visit_For(node, frame)

    def visit(self, node, *args, **kwargs):
        if id(node) not in self._loop_iters:
            return super().visit(node, *args, **kwargs)
        self.write("environment.guard_loop(")
        super().visit(node, *args, **kwargs)
        self.write(")")

    def visit_Concat(self, node, frame):
        join = ("(markup_join if context.eval_ctx.volatile else str_join)" if frame.eval_ctx.volatile
                else "markup_join" if frame.eval_ctx.autoescape else "str_join")
        self.write(f"environment.guard_concat({join}, (")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")


class _Template(Template):
    def render(self, *args, **kwargs) -> str:
        with limits.render_budget():  # one budget per rendered field
            return super().render(*args, **kwargs)


def _finalize(value):
    """What ``{{ x }}`` prints: None as empty (``record.id`` with no match), not "None"."""
    if value is None:
        return ""
    if not isinstance(value, str) and limits.size(value, limits.budget()) > MAX_TEXT:
        raise SecurityError(f"result too long (over {MAX_TEXT} characters)")
    return value


def _range(*args) -> range:
    rng = range(*args)
    if len(rng) > MAX_RANGE:
        raise SecurityError(f"range() of {len(rng)} numbers is too long (at most {MAX_RANGE})")
    return rng


_UNBOUNDED_STR_METHODS = frozenset({"expandtabs", "translate", "maketrans"})


class _Sandbox(ImmutableSandboxedEnvironment):
    intercepted_binops = frozenset({"*", "**", "+", "%"})
    code_generator_class = _CodeGenerator
    template_class = _Template

    def is_safe_attribute(self, obj, attr, value) -> bool:
        if isinstance(obj, str) and attr in _UNBOUNDED_STR_METHODS:
            return False
        return super().is_safe_attribute(obj, attr, value)

    def call_binop(self, context, operator, left, right):
        b = limits.budget()
        if operator == "**" and isinstance(right, (int, float)) and abs(right) > 100:
            raise SecurityError("exponent too large")
        if operator == "*":
            for seq, n in ((left, right), (right, left)):
                if isinstance(seq, (str, list, tuple)) and isinstance(n, int):
                    if len(seq) * n > MAX_REPEAT:
                        raise SecurityError(f"result too long (over {MAX_REPEAT} items)")
                    limits.too_long(limits.size(seq, b) * n)
        elif operator == "+" and isinstance(left, (str, list, tuple)):
            limits.too_long(limits.size(left, b) + limits.size(right, b))
        elif operator == "%" and isinstance(left, str):
            limits.printf(left, right, b)
        rv = super().call_binop(context, operator, left, right)
        limits.charge(rv, b)
        return rv

    def call(__self, __context, __obj, *args, **kwargs):  # noqa: N805 (Jinja's signature)
        b = limits.budget()
        name = getattr(__obj, "__name__", "call")
        limits.check_args(name, args, kwargs, b)
        owner = getattr(getattr(__obj, "__wrapped__", __obj), "__self__", None)
        if isinstance(owner, str):  # str methods that can build far more than they get
            if name in ("format", "format_map"):
                limits.str_format(owner, args, kwargs, b)
            elif name == "replace":
                limits.replace(owner, *args, **kwargs)
            elif name == "join" and args:
                args = (list(args[0]), *args[1:])
                limits.join(args[0], owner, b)
        rv = super().call(__context, __obj, *args, **kwargs)
        limits.charge(rv, b)
        return rv

    def guard_loop(self, iterable):
        b = limits.budget()
        for item in iterable:
            b.step()
            yield item

    def guard_concat(self, join, parts):
        parts = tuple("" if p is None else p for p in parts)  # like `{{ none }}`
        b = limits.budget()
        limits.too_long(sum(limits.size(p, b) for p in parts))
        out = join(parts)
        b.build(len(out))
        return out

    def concat(self, pieces) -> str:
        """Joins every rendered value and {% set %}/macro/filter block, up to MAX_TEXT."""
        out, n = [], 0
        for piece in pieces:
            n += len(piece)
            if n > MAX_TEXT:
                raise SecurityError(f"rendered value too long (over {MAX_TEXT} characters)")
            out.append(piece)
        limits.budget().build(n)
        return "".join(out)


def environment(html: bool) -> ImmutableSandboxedEnvironment:
    env = _Sandbox(autoescape=html, undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True,
                   keep_trailing_newline=False, finalize=_finalize)
    env.policies["truncate.leeway"] = 0  # truncate(255) means at most 255 characters
    env.filters.update(phone=phone, datetime=format_datetime, date=format_date)
    if html:
        # `|safe` cannot unlock escaping: plain text is escaped, connector Markup passes.
        env.filters["safe"] = escape
    env.filters = {name: limits.guard_filter(name, f) for name, f in env.filters.items()}
    env.globals["range"] = _range
    env.globals.pop("lipsum", None)  # builds paragraphs of text on demand: no use in a CRM field
    return env


FILTERS = {
    "phone(format)": "phone number as `e164`, `national`, `international` (default), `rfc3966` or `digits`",
    "datetime(format, tz)": "a time in the configured `time_zone` (or `tz`), strftime format, default `%Y-%m-%d %H:%M %Z`",
    "date(format, tz)": "the same with default format `%Y-%m-%d`",
    "truncate(n)": "at most n characters, ending in `...` when cut",
}
