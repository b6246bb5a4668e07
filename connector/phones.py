"""Phone numbers: E.164 normalization and display formats (phonenumbers)."""
from __future__ import annotations

import re
from functools import lru_cache

import phonenumbers

DEFAULT_REGION = "US"
_DIGITS_ONLY = re.compile(r"[\d\s().-]+")  # digits and the separators numbers are written with


@lru_cache(maxsize=8192)  # on the webhook path; lines and customers repeat all day
def to_e164(raw: str | None, region: str = DEFAULT_REGION, typed: bool = False) -> str | None:
    """'(415) 555-0142', '+1 415 555 0142', '14155550142' -> '+14155550142'.

    Bare digits that carry a country code (Aircall's ``raw_digits``) are tried with a
    leading '+' first. A number ``typed`` by a person (a CRM phone field, a recipient) is
    read in ``region`` first, and with a '+' only when it is no valid number there: a São
    Paulo mobile saved as '(11) 91234-5678' is not '+1 191 234 5678'. Not a number written
    with an extension ('415-555-0142 x3', '... #2'), whose extra digits would make it
    another country's ('+41555501423'): that one is read in ``region``, extension dropped.
    Returns None when the input is not a plausible number.
    """
    if not raw or not isinstance(raw, str):
        return None
    s = raw.strip()
    if not s:
        return None
    digits = "".join(ch for ch in s if ch.isdigit())
    plus = "+" + digits if not s.startswith("+") and len(digits) > 10 and _DIGITS_ONLY.fullmatch(s) else None
    if typed:
        tries = [(s, phonenumbers.is_valid_number), (plus, phonenumbers.is_possible_number),
                 (s, phonenumbers.is_possible_number)]
    else:
        tries = [(plus, phonenumbers.is_possible_number), (s, phonenumbers.is_possible_number)]
    for cand, good in tries:
        if cand is None:
            continue
        try:
            num = phonenumbers.parse(cand, region)
        except phonenumbers.NumberParseException:
            continue
        if good(num):
            return phonenumbers.format_number(num, phonenumbers.PhoneNumberFormat.E164)
    return None


def region_of(e164: str) -> str | None:
    """ISO country code of an E.164 number ('US', 'CA', 'AU'), or None."""
    try:
        return phonenumbers.region_code_for_number(phonenumbers.parse(e164, None))
    except phonenumbers.NumberParseException:
        return None


def national(e164: str) -> str:
    try:
        num = phonenumbers.parse(e164, None)
    except phonenumbers.NumberParseException:
        return e164
    return phonenumbers.format_number(num, phonenumbers.PhoneNumberFormat.NATIONAL)


def international(e164: str) -> str:
    try:
        num = phonenumbers.parse(e164, None)
    except phonenumbers.NumberParseException:
        return e164
    return phonenumbers.format_number(num, phonenumbers.PhoneNumberFormat.INTERNATIONAL)


def digits(e164: str) -> str:
    return "".join(ch for ch in e164 if ch.isdigit())


def national_digits(e164: str) -> str:
    """The national significant number, digits only: '+14155550142' -> '4155550142'.

    What CRMs store as "phone number without country code" (no trunk prefix).
    """
    try:
        num = phonenumbers.parse(e164, None)
    except phonenumbers.NumberParseException:
        return digits(e164)
    return phonenumbers.national_significant_number(num)
