"""Constant-time comparison of a secret a caller sent with the ones configured."""
from __future__ import annotations

import hmac
from typing import Iterable


def same_secret(given: str, expected: str) -> bool:
    # Bytes, not str: compare_digest raises TypeError on non-ASCII str, and a header or
    # query parameter may carry any character, even a lone surrogate from JSON.
    return hmac.compare_digest(given.encode("utf-8", "surrogatepass"), expected.encode("utf-8", "surrogatepass"))


def any_secret_matches(given: str, secrets: Iterable[str]) -> bool:
    """True when ``given`` (non-empty) equals one of ``secrets``. Every secret is
    compared, so the timing does not tell which one matched."""
    ok = False
    for s in secrets:
        ok |= same_secret(given, s)
    return ok and bool(given)
