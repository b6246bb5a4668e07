"""Free text from outside (a sender's phone, an API caller) as every store and CRM can take it."""
from __future__ import annotations

import re

_UNWRITABLE = re.compile(r"[\x00\ud800-\udfff]")
_CONTROL = re.compile(r"[\x00-\x1f\x7f\ud800-\udfff]")


def writable(value: str) -> str:
    """JSON may carry a lone surrogate (a client cutting an emoji in half) or a NUL, which
    no UTF-8 encoder, UTF-16 count or PostgreSQL text column accepts. Pairs become their
    character, a lone half U+FFFD, a NUL nothing."""
    if not _UNWRITABLE.search(value):
        return value
    value = value.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
    return value.replace("\x00", "")


def has_control(value: str) -> bool:
    """Control characters or lone surrogates: never part of an id or a key."""
    return bool(_CONTROL.search(value))
