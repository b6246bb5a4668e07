"""Where in the mapping file a problem is: line and column for an admin's editor."""
from __future__ import annotations

import re

from yaml.nodes import ScalarNode


def locate(lines: list[str], node: ScalarNode, lineno: int, token: str) -> tuple[int, int]:
    """File line/column of ``token`` on template line ``lineno`` inside a YAML value,
    looked for inside {{ }} / {% %} only (`text: {{ text }}` points at the variable)."""
    first, last = node.start_mark.line, node.end_mark.line
    if node.style == "|":
        candidates = [first + lineno]
    else:
        candidates = list(range(first, last + 1))
    if token:
        pattern = _pattern(token)
        value = lines[first: last + 1]
        for i, start, end in _code_spans(value, node.start_mark.column):
            m = first + i in candidates and pattern.search(value[i], start, end)
            if m:
                return first + i + 1, m.start("at") + 1
    for i in candidates:
        if not 0 <= i < len(lines):
            continue
        text = lines[i]
        if token:
            m = pattern.search(text, node.start_mark.column if i == first else 0)
            if m:
                return i + 1, m.start("at") + 1
        elif node.style == "|":
            return i + 1, len(text) - len(text.lstrip()) + 1
    return first + 1, node.start_mark.column + 1


def _pattern(token: str) -> re.Pattern:
    """How ``token`` is written, its group ``at`` where to point: ``.attr`` is an attribute
    (after a dot), ``a.b.c`` a dotted path (pointing at ``c``), anything else a name that
    is not itself an attribute (``text`` is not the ``text`` of ``message.text``)."""
    if token.startswith("."):
        return re.compile(r"\.\s*(?P<at>" + re.escape(token[1:]) + r")(?!\w)")
    *head, last = token.split(".")
    if head:
        dots = r"\s*\.\s*"
        return re.compile(r"(?<![\w.])" + dots.join(map(re.escape, head)) + dots
                          + r"(?P<at>" + re.escape(last) + r")(?!\w)")
    return re.compile(r"(?<![\w.])(?P<at>" + re.escape(token) + r")(?!\w)")


_TAG_OPEN = re.compile(r"\{\{|\{%|\{#")
_TAG_CLOSE = {"{{": "}}", "{%": "%}", "{#": "#}"}


def _code_spans(lines: list[str], first_column: int) -> list[tuple[int, int, int]]:
    """(line index, start, end) of the text inside {{ }} and {% %} (not {# #}) of a value."""
    spans, close = [], None
    for i, text in enumerate(lines):
        pos = first_column if i == 0 else 0
        start = pos
        while True:
            if close is None:
                m = _TAG_OPEN.search(text, pos)
                if not m:
                    break
                close, start, pos = _TAG_CLOSE[m.group()], m.end(), m.end()
                continue
            j = text.find(close, pos)
            if close != "#}":
                spans.append((i, start, len(text) if j < 0 else j))
            if j < 0:
                break  # the tag goes on on the next line
            close, pos = None, j + 2
    return spans


def position(before: str) -> tuple[int, int]:
    """Line and column just after the text ``before``."""
    return before.count("\n") + 1, len(before) - before.rfind("\n")
