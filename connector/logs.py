"""Log lines (plain or JSON) with every secret the config holds redacted.

Redaction happens on the formatted line, so messages, arguments, tracebacks and
third-party loggers (urllib3, hubspot-api-client, simple-salesforce) are all covered:
configured secrets (any config key naming a token, secret, password or key), bearer
and Authorization values, JSON "token" fields, URL query strings (presigned S3 links,
signed parameters) and signed /media/ links.
"""
from __future__ import annotations

import json
import logging
import re
from typing import Any, Iterable

REDACTED = "[redacted]"
_SECRET_KEY = re.compile(r"token|secret|password|passwd|api_?key|private_?key|signing|credential|"
                         r"consumer_key", re.I)
# (substrings one of which a match must contain, in lower case; pattern; replacement).
# The cheap substring test skips a pattern on the many lines it cannot match: it runs on
# every log line, the webhook's among them.
_PATTERNS = [
    # Authorization: Bearer xxx / "Authorization": "Basic xxx"
    (("authorization",),
     re.compile(r"(?i)(authorization['\"]?\s*[:=]\s*['\"]?)(?:(?:bearer|basic|token)\s+)?[^\s'\",}]+"),
     r"\1" + REDACTED),
    (("bearer",), re.compile(r"(?i)\b(bearer)\s+[^\s'\",}]+"), r"\1 " + REDACTED),  # session ids hold "!"
    # "token": "..." in a logged payload, token=... in a form or query
    (("token", "secret", "password"),
     re.compile(r"(?i)(['\"](?:[a-z_]*token|[a-z_]*secret|password)['\"]\s*:\s*['\"])[^'\"]*"),
     r"\1" + REDACTED),
    (("=",), re.compile(r"(?i)\b((?:[a-z_]*token|[a-z_]*secret|password|signature|sig)=)[^\s&'\"]+"),
     r"\1" + REDACTED),
    # Query strings carry signatures (S3 presigned URLs, signed links): keep the path only.
    (("://",), re.compile(r"((?:https?|ftp)://[^\s?#'\"<>]+)\?[^\s'\"<>]*"), r"\1?" + REDACTED),
    # Our signed attachment links: /media/<signed-token>[/...]
    # (A token never starts with a dot: the media store's ".signing-secret" file keeps its name.)
    (("/media/",), re.compile(r"(/media/)[A-Za-z0-9_~=:+-][A-Za-z0-9._~=:+-]{7,}"), r"\1" + REDACTED),
]


def config_secrets(config: Any) -> list[str]:
    """Every string value under a config key that names a secret (lists included)."""
    found: list[str] = []

    def walk(node: Any, secret: bool) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, secret or bool(_SECRET_KEY.search(str(k))))
        elif isinstance(node, (list, tuple)):
            for v in node:
                walk(v, secret)
        elif secret and isinstance(node, str) and len(node) >= 4:
            found.append(node)

    data = config.model_dump(by_alias=False) if hasattr(config, "model_dump") else config
    walk(data, False)
    return found


class Redactor:
    def __init__(self, secrets: Iterable[str] = ()):
        variants: set[str] = set()
        for s in secrets:
            if s:
                variants.add(s)
                variants.add(json.dumps(s)[1:-1])  # as it appears inside a JSON string
        # Longest first, so a secret containing another is replaced whole.
        self.secrets = sorted(variants, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for s in self.secrets:
            if s in text:
                text = text.replace(s, REDACTED)
        low = text.lower()
        for needles, pattern, repl in _PATTERNS:
            for needle in needles:
                if needle in low:
                    text = pattern.sub(repl, text)
                    break
        return text


class RedactingFormatter(logging.Formatter):
    """Wraps a formatter and redacts its whole output."""

    def __init__(self, inner: logging.Formatter, redactor: Redactor):
        super().__init__()
        self.inner = inner
        self.redactor = redactor

    def format(self, record: logging.LogRecord) -> str:
        # Redact the message and traceback on their own first: JSON escaping could hide a
        # pattern, and in a plain line a pattern could start in the prefix (a logger named
        # "...authorization") and swallow what follows. Then the whole line, for anything
        # the inner formatter added. The record lends them for the call (no copy: this runs
        # for every webhook) and gets its own back.
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        msg, args, exc_text, exc_info = record.msg, record.args, record.exc_text, record.exc_info
        try:
            record.msg, record.args = self.redactor(record.getMessage()), None
            if exc_text:  # and no exc_info, or the JSON formatter formats it afresh
                record.exc_text, record.exc_info = self.redactor(exc_text), None
            return self.redactor(self.inner.format(record))
        finally:
            record.msg, record.args, record.exc_text, record.exc_info = msg, args, exc_text, exc_info


PLAIN_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


def make_formatter(json_lines: bool, redactor: Redactor) -> logging.Formatter:
    if json_lines:
        from pythonjsonlogger.json import JsonFormatter
        inner: logging.Formatter = JsonFormatter(
            "%(asctime)s %(levelname)s %(name)s %(message)s",
            rename_fields={"levelname": "level", "name": "logger", "asctime": "time"})
    else:
        inner = logging.Formatter(PLAIN_FORMAT)
    return RedactingFormatter(inner, redactor)


_HANDLER_FLAG = "_mms_connector_handler"


def setup_logging(config) -> logging.Handler:
    """One stderr handler on the root logger, redacting, plain or JSON per config."""
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, _HANDLER_FLAG, False):
            root.removeHandler(h)
    handler = logging.StreamHandler()
    setattr(handler, _HANDLER_FLAG, True)
    handler.setFormatter(make_formatter(config.logging.json_lines, Redactor(config_secrets(config))))
    root.addHandler(handler)
    root.setLevel(config.logging.level)
    # Where a line was logged from: no line of ours shows it, and finding it (a stack walk,
    # the logging HOWTO's "Optimization") is a fifth of a line's cost; the webhook logs one
    # per event. Other loggers' formats still work: the fields read "(unknown file)", 0.
    # (Thread and process ids stay: gunicorn's own log lines show the process.)
    logging._srcfile = None
    return handler
