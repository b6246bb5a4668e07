"""What one render may cost, so a template cannot hang or starve a worker.

Jinja's sandbox keeps templates away from Python internals, not from working too hard
(nested `range` loops, `''|center(10**9)`, `~` doubling a string in a loop). So:

- every render gets a budget: loop iterations (and list items measured), and
  characters built by filters, operators, methods and outputs;
- sizes known in advance are refused before anything is built: a width or count over
  MAX_ARG, a result estimated over MAX_TEXT (`replace`, `join`, `indent`, `%`, ...);
- `range()` is capped, and so is every rendered value.
Ordinary templates spend a few steps; the checks are O(1) for text and numbers.
"""
from __future__ import annotations

import functools
import re
from contextlib import contextmanager
from contextvars import ContextVar
from string import Formatter

from jinja2.exceptions import SecurityError
from jinja2.utils import Namespace

MAX_RANGE = 10_000        # numbers in one range()
MAX_STEPS = 100_000       # loop iterations + list items measured, per render
MAX_ARG = 100_000         # any whole-number argument (a width, a count)
MAX_REPEAT = 100_000      # items `*` may build
MAX_TEXT = 1_000_000      # characters in one value or rendered field
MAX_BUILT = 10_000_000    # characters built in all, per render
MAX_SUMMED = 1_000        # lists `sum` may add up

_CONTAINERS = (list, tuple, set, frozenset, dict, Namespace, type({}.keys()), type({}.values()),
               type({}.items()))
_PRINTF = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(\*|\d+)?(?:\.(\*|\d+))?")


class Budget:
    __slots__ = ("steps", "built")

    def __init__(self) -> None:
        self.steps, self.built = MAX_STEPS, MAX_BUILT

    def step(self, n: int = 1) -> None:
        self.steps -= n
        if self.steps < 0:
            raise SecurityError(f"too many loop iterations (over {MAX_STEPS} in one render)")

    def build(self, n: int) -> None:
        too_long(n)
        self.built -= n
        if self.built < 0:
            raise SecurityError(f"the template builds too much text (over {MAX_BUILT} characters in one render)")


_BUDGET: ContextVar[Budget | None] = ContextVar("mapping_render_budget", default=None)


def budget() -> Budget:
    return _BUDGET.get() or Budget()  # outside a render: each operation alone is still capped


@contextmanager
def render_budget():
    token = _BUDGET.set(Budget())
    try:
        yield
    finally:
        _BUDGET.reset(token)


def too_long(n: int) -> None:
    if n > MAX_TEXT:
        raise SecurityError(f"result too long (over {MAX_TEXT} characters)")


def size(value, b: Budget) -> int:
    """Roughly the length of ``str(value)``, without building it (lists nested by
    reference can print billions of characters); stops counting past MAX_TEXT."""
    if isinstance(value, str):
        return len(value)
    if not isinstance(value, _CONTAINERS):
        return 1
    total, stack, seen = 0, [value], 0
    while stack and total <= MAX_TEXT:
        v = stack.pop()
        if isinstance(v, Namespace):
            v = object.__getattribute__(v, "_Namespace__attrs")
        items = [*v.keys(), *v.values()] if isinstance(v, dict) else v
        for item in items:
            seen += 1
            if isinstance(item, str):
                total += len(item) + 4
            elif isinstance(item, _CONTAINERS):
                stack.append(item)
                total += 2
            else:
                total += 4
        if seen > b.steps:
            break
    b.step(seen)
    return total


def check_args(name: str, args, kwargs, b: Budget) -> None:
    """Widths and counts over MAX_ARG, and arguments too long to print, are refused."""
    for a in (*args, *kwargs.values()):
        if isinstance(a, int) and not isinstance(a, bool) and abs(a) > MAX_ARG:
            raise SecurityError(f"{name}: {a} is too large (at most {MAX_ARG})")
        if not isinstance(a, (str, int, float)) and size(a, b) > MAX_TEXT:
            raise SecurityError(f"{name}: argument too long (over {MAX_TEXT} characters)")


def printf(fmt, args, b: Budget) -> None:
    """`'%800000000s' % x` would build 800 MB: widths are checked before formatting."""
    widths = [int(w) for m in _PRINTF.finditer(str(fmt)) for w in m.groups() if w and w != "*"]
    if any(w > MAX_ARG for w in widths):
        raise SecurityError(f"format: width {max(widths)} is too large (at most {MAX_ARG})")
    values = args if isinstance(args, tuple) else (args,)
    check_args("format", values, {}, b)
    too_long(len(str(fmt)) + sum(widths) + sum(size(v, b) for v in values))


def str_format(fmt: str, args, kwargs, b: Budget) -> None:
    """The same for `'{:>800000000}'.format(x)`; nested `{:{}}` specs are refused."""
    widths = []
    for _, _, spec, _ in Formatter().parse(fmt):
        if spec and "{" in spec:
            raise SecurityError("format: nested format fields are not allowed")
        widths += [int(w) for w in re.findall(r"\d+", spec or "")]
    if any(w > MAX_ARG for w in widths):
        raise SecurityError(f"format: width {max(widths)} is too large (at most {MAX_ARG})")
    too_long(len(fmt) + sum(widths) + sum(size(v, b) for v in (*args, *kwargs.values())))


def replace(s, old, new, count=None) -> None:
    s, old, new = str(s), str(old), str(new)
    hits = (s.count(old) if old else len(s) + 1) if count is None or count < 0 else count
    too_long(len(s) + hits * max(0, len(new) - len(old)))


def join(items, sep, b: Budget) -> None:
    n = len(items) if isinstance(items, str) else sum(size(i, b) for i in items)
    too_long(n + len(str(sep)) * len(items))


def add_up(items: list, *args, start=0, **__) -> None:
    """`sum(start=[])` copies the list at every item: quadratic."""
    start = args[1] if len(args) > 1 else start
    if isinstance(start, (list, tuple)) and len(items) > MAX_SUMMED:
        raise SecurityError(f"sum: adding up more than {MAX_SUMMED} lists is not allowed")


def indent(s, width=4, *_, **__) -> None:
    n = len(width) if isinstance(width, str) else int(width)
    s = str(s)
    too_long(len(s) + (s.count("\n") + 1) * n)


def wordwrap(s, width=79, break_long_words=True, wrapstring=None, *_, **__) -> None:
    s = str(s)
    lines = len(s) // max(1, int(width)) + s.count(" ") + s.count("\n") + 1
    too_long(len(s) + lines * len(str(wrapstring or "\n")))


_ESTIMATES = {"replace": replace, "indent": indent, "wordwrap": wordwrap}


def guard_filter(name: str, f):
    """``f`` with its arguments checked and what it builds counted."""
    skip = 1 if getattr(f, "jinja_pass_arg", None) else 0  # context/eval_ctx/environment first
    estimate = _ESTIMATES.get(name)

    @functools.wraps(f)
    def guarded(*args, **kwargs):
        b = budget()
        if len(args) > skip and not isinstance(args[skip], (str, int, float)) and size(args[skip], b) > MAX_TEXT:
            raise SecurityError(f"{name}: value too long (over {MAX_TEXT} characters)")
        check_args(name, args[skip + 1:], kwargs, b)  # not the value: `timestamp_ms|date` is fine
        if name in ("join", "sum") and len(args) > skip:
            if not isinstance(args[skip], (str, list, tuple, dict)):
                args = (*args[:skip], list(args[skip]), *args[skip + 1:])  # a generator: count it first
            if name == "sum":
                add_up(*args[skip:], **kwargs)
            else:
                join(args[skip], args[skip + 1] if len(args) > skip + 1 else kwargs.get("d", ""), b)
        elif name == "format" and len(args) > skip:
            printf(args[skip], kwargs or tuple(args[skip + 1:]), b)
        elif estimate is not None and len(args) > skip:
            estimate(*args[skip:], **kwargs)
        out = f(*args, **kwargs)
        charge(out, b)
        return out

    return guarded


def charge(value, b: Budget) -> None:
    if isinstance(value, (str, list, tuple, dict)):
        b.build(len(value))
