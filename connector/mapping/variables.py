"""The documented template variables, sample contexts, and a static check of templates.

The variable set is whatever ``render.build_context`` returns; its shape (taken from a
sample context) lets ``check`` flag ``{{ mesage.text }}`` or ``{{ message.txt }}``
before a single message is rendered.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from functools import lru_cache

from jinja2 import nodes

from ..events import DELIVERED, INBOUND, OUTBOUND, RECEIVED, Media, MessageEvent
from ..render import build_context, default_media_views
from .fields import suggest

ANY = None  # schema of a value whose attributes are not checked (text, numbers, dates)
JINJA_GLOBALS = {"range", "dict", "cycler", "joiner", "namespace", "loop", "true", "false", "none"}

# What README documents; `check` and the tests hold the code to it.
DESCRIPTIONS = {
    "message.id": "the provider's message id",
    "message.direction": "`inbound` or `outbound`",
    "message.status": "`received`, `pending`, `sent`, `delivered`, `failed` or `unknown`",
    "message.status_label": "the status as reps read it: Received, Pending, Sent, Delivered, Not sent",
    "message.provider_status": "the status word the provider sent",
    "message.channel": "`sms` or `mms` (mms when there is media)",
    "message.text": "the text of the message (may be empty)",
    "message.time": "when it was sent or received, in `time_zone` (format it with the `datetime` filter)",
    "message.time_iso": "the same as ISO 8601 text with offset",
    "message.timestamp_ms": "the same as epoch milliseconds (HubSpot `hs_timestamp`)",
    "message.date": "the local date, `YYYY-MM-DD` (Salesforce `ActivityDate`)",
    "line.e164 / .national / .international": "our Aircall line's number",
    "line.name / line.country": "the line's name in Aircall and its country code",
    "external.e164 / .national / .international": "the other party's number",
    "external.country": "the other party's country code (`US`), empty when unknown",
    "record.id / record.type": ("on a create, the record the entry is logged on: HubSpot's contact (`contact`), "
                                "Salesforce's Contact, Lead or Account (a placeholder in `preview`); empty on a "
                                "status update"),
    "media": "every attachment: `.name`, `.type`, `.size` (bytes, may be empty), `.link`, `.supported`, `.available`, `.reason`, `.is_image`",
    "media_count / unsupported_count": "how many attachments, and how many cannot be received (too large or unsupported format)",
    "unavailable_count": "how many receivable attachments could not be fetched, or expired",
    "previews": "up to 4 receivable attachments (same fields as media)",
    "more_count": "receivable attachments beyond the 4 previews (\"+N more\")",
    "has_unsupported / unsupported_alert": "whether some media cannot be received, and the alert text",
    "has_unavailable / unavailable_alert": "whether some media is unavailable (fetch failed, expired), and its text",
    "download_all_link": "one link to every receivable attachment (empty when none)",
    "body_html / body_text": "the connector's complete entry (text, previews, links, alert) as HTML (the text's line breaks as `<br>`) or plain text",
    "provider / event / kind / time_zone": "`aircall`, the provider event name, `inbound`/`outbound`/`status`, the configured zone",
}

_LINE = {"digits": "+1 424-416-2288", "country": "US", "name": "Sales US"}


def sample_events() -> list[tuple[str, MessageEvent]]:
    """Messages `check` renders every template against (names say which one failed)."""
    at = datetime(2026, 11, 20, 15, 4, 4, tzinfo=timezone.utc)
    media = [Media(f"https://media.example/m/{n}", n, t) for n, t in (
        ("front.jpg", "image/jpeg"), ("side.png", "image/png"), ("spin.gif", "image/gif"),
        ("quote.pdf", "application/pdf"), ("back.jpg", "image/jpeg"), ("clip.mp4", "video/mp4"))]
    common = dict(provider="aircall", line="+14244162288", line_name="Sales US", line_country="US")
    return [
        ("inbound MMS", MessageEvent(event="message.received", message_id="sample-1", direction=INBOUND,
                                     status=RECEIVED, channel="mms", external="+14155550142",
                                     text="Photos <b>attached</b> & a quote", media=media,
                                     occurred_at=at, provider_status="received", **common)),
        ("inbound SMS", MessageEvent(event="message.received", message_id="sample-2", direction=INBOUND,
                                     status=RECEIVED, channel="sms", external="+442071838750",
                                     text="", media=[], occurred_at=at, **common)),
        ("outbound MMS status", MessageEvent(event="message.status_updated", message_id="sample-3",
                                             direction=OUTBOUND, status=DELIVERED, channel="mms",
                                             external="+14155550142", text="Here is the brochure",
                                             media=media[3:4], occurred_at=at, **common)),
    ]


def sample_contexts(time_zone: str = "UTC") -> list[tuple[str, dict]]:
    return [(name, build_context(ev, default_media_views(ev), download_all_link="https://connector.example/media/all",
                                 time_zone=time_zone))
            for name, ev in sample_events()]


def _shape(value):
    if isinstance(value, dict):
        return {k: _shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_shape(value[0]) if value else ANY]
    return ANY


@lru_cache(maxsize=1)
def schema() -> dict:
    """Top-level variable -> shape (dict of attributes, [item shape], or ANY)."""
    return _shape(sample_contexts()[0][1])


@dataclass
class Finding:
    lineno: int       # line inside the template
    token: str        # text to point the column at
    message: str


def _has_private(node) -> bool:
    while isinstance(node, (nodes.Getattr, nodes.Getitem)):
        if isinstance(node, nodes.Getattr) and node.attr.startswith("_"):
            return True
        node = node.node
    return False


class _Checker:
    def __init__(self, env):
        self.root = schema()
        self.filters, self.tests = env.filters, env.tests
        self.found: list[Finding] = []

    def shape(self, node, scope):
        if isinstance(node, nodes.Name):
            return scope.get(node.name, self.root.get(node.name, ANY))
        if isinstance(node, (nodes.Getattr, nodes.Getitem)):
            parent = self.shape(node.node, scope)
            key = node.attr if isinstance(node, nodes.Getattr) else getattr(node.arg, "value", None)
            if isinstance(parent, dict) and isinstance(key, str):
                return parent.get(key, ANY)
            if isinstance(parent, list) and isinstance(key, int):
                return parent[0]
        if isinstance(node, nodes.Filter) and node.name in ("first", "last") and node.node is not None:
            parent = self.shape(node.node, scope)
            return parent[0] if isinstance(parent, list) else ANY
        return ANY

    def visit(self, node, scope: dict) -> None:
        if isinstance(node, (nodes.Include, nodes.Extends, nodes.Import, nodes.FromImport)):
            self.found.append(Finding(node.lineno, "", "templates cannot include or import other files"))
            return
        if isinstance(node, (nodes.ScopedEvalContextModifier, nodes.EvalContextModifier)):
            self.found.append(Finding(node.lineno, "autoescape",
                                      "`{% autoescape %}` is not allowed: escaping is decided per field"))
            return
        if isinstance(node, nodes.Name) and node.ctx == "load":
            if node.name not in scope and node.name not in self.root and node.name not in JINJA_GLOBALS:
                self.found.append(Finding(node.lineno, node.name, f"unknown variable `{node.name}`"
                                          + suggest(node.name, [*self.root, *scope])))
            return
        if isinstance(node, nodes.Getattr) and node.attr.startswith("_"):
            if not _has_private(node.node):
                self.found.append(Finding(node.lineno, "." + node.attr, f"`{node.attr}` is not allowed: "
                                          "templates cannot reach Python internals"))
            self.visit(node.node, scope)
            return
        if isinstance(node, (nodes.Getattr, nodes.Getitem)):
            key = node.attr if isinstance(node, nodes.Getattr) else getattr(node.arg, "value", None)
            parent = self.shape(node.node, scope)
            base = _dotted(node.node)
            # Where to point: the attribute as written after its object (`message.media_count`,
            # not a `media_count` variable earlier on the line).
            at = f"{base}.{key}" if isinstance(node, nodes.Getattr) and _plain(base) else key
            if isinstance(parent, dict) and isinstance(key, str) and key not in parent:
                self.found.append(Finding(node.lineno, at, f"unknown variable `{base}.{key}`"
                                          + suggest(key, parent).replace("`", f"`{base}.", 1)))
            elif isinstance(parent, list) and isinstance(key, str):
                # Fails on every message, even in an {% if %} branch the samples never take.
                self.found.append(Finding(node.lineno, at, f"`{base}` is a list: loop over it "
                                          f"(`{{% for m in {base} %}}{{{{ m.{key} }}}}{{% endfor %}}`) "
                                          f"or pick one (`{base}[0].{key}`)"))
        # Jinja looks up a filter in an {% if %} branch only when the branch runs: check all now.
        for kind, known in ((nodes.Filter, self.filters), (nodes.Test, self.tests)):
            if isinstance(node, kind) and node.name not in known:
                what = "filter" if kind is nodes.Filter else "test"
                self.found.append(Finding(node.lineno, node.name, f"unknown {what} `{node.name}`"
                                          + suggest(node.name, known)))
        if isinstance(node, nodes.Filter) and node.name == "phone" and node.args:
            arg = node.args[0]
            if isinstance(arg, nodes.Const) and arg.value not in (*_phone_formats(), "digits"):
                self.found.append(Finding(node.lineno, str(arg.value), f"phone: unknown format `{arg.value}`"
                                          + suggest(str(arg.value), [*_phone_formats(), "digits"])))
        if isinstance(node, nodes.For):
            if node.recursive:
                self.found.append(Finding(node.lineno, "recursive", "recursive loops are not allowed"))
            self.visit(node.iter, scope)
            inner = dict(scope, loop=ANY)
            item = self.shape(node.iter, scope)
            for target in _names(node.target):
                inner[target.name] = item[0] if isinstance(item, list) else ANY
            for child in [*node.body, *node.else_] + ([node.test] if node.test else []):
                self.visit(child, inner)
            return
        if isinstance(node, nodes.With):  # {% with t = ... %}: t is known inside the block
            for value in node.values:
                self.visit(value, scope)
            inner = dict(scope)
            for target in node.targets:
                for name in _names(target):
                    inner[name.name] = self.shape(node.values[node.targets.index(target)], scope)
            for child in node.body:
                self.visit(child, inner)
            return
        if isinstance(node, (nodes.Assign, nodes.AssignBlock)):
            for target in _names(node.target):
                scope[target.name] = ANY
        if isinstance(node, nodes.Macro):
            inner = dict(scope, **{a.name: ANY for a in node.args}, varargs=ANY, kwargs=ANY, caller=ANY)
            for child in node.body:
                self.visit(child, inner)
            scope[node.name] = ANY
            return
        for child in node.iter_child_nodes():
            if isinstance(child, nodes.Name) and child.ctx != "load":
                continue
            self.visit(child, scope)


def _names(target) -> list:
    return [target] if isinstance(target, nodes.Name) else list(target.find_all(nodes.Name))


def _phone_formats():
    from .sandbox import PHONE_FORMATS
    return PHONE_FORMATS


def _plain(dotted: str) -> bool:
    return all(part.isidentifier() for part in dotted.split("."))


def _dotted(node) -> str:
    if isinstance(node, nodes.Name):
        return node.name
    if isinstance(node, nodes.Getattr):
        return f"{_dotted(node.node)}.{node.attr}"
    if isinstance(node, nodes.Getitem):
        return f"{_dotted(node.node)}[{getattr(node.arg, 'value', '...')!r}]"
    return "(value)"


def check_template(ast: nodes.Template, env) -> list[Finding]:
    checker = _Checker(env)
    checker.visit(ast, {})
    return checker.found
