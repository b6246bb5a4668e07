"""MMS rules from Aircall's MMS article: formats, sizes, counts, countries, error texts.

Formats are decided from the bytes (``filetype``), never from a name or a declared
content type. Error texts are the article's, word for word, with the limit filled in.
Policy ``partial`` removes only the problematic files and sends the rest (the article's
desktop/Android behaviour); ``strict`` sends nothing if any file is invalid (iOS).
SMS (no attachments) is not subject to the MMS country and line rules.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import filetype

from .config import CarrierProfile, OutboundConfig
from .fetch import HEAD_BYTES, FetchError, FetchPolicy, fetch
from .phones import region_of, to_e164

TOO_MANY = "You can only upload up to {n} files. Please remove some files and try again"
FILE_TOO_LARGE = "Your file size exceeds the limit of {limit}. Please reduce the file size and try again"
TOTAL_TOO_LARGE = "Your total file size exceeds the limit of {limit}. Please reduce the file size and try again"
FORMAT = "Only {formats} files are allowed for MMS"
UNKNOWN = "Sorry, the problem has occurred. Please try again later"
COUNTRY = ("MMS is available only for numbers in {countries}, so the recipient must be located "
           "in one of these countries")
LINE_COUNTRY = "MMS is available only for numbers in {countries}; the line {line} is not one of them"
LINE_NOT_MMS = "The line {line} is not MMS capable. Choose a phone number with the SMS MMS badge"
LINE_UNKNOWN = "The line {line} is not set up for sending (outbound.lines)"
LINE_MISSING = "No line to send from: name one of outbound.lines, or set outbound.default_line"
BAD_RECIPIENT = "The recipient {to} is not a valid phone number"
TEXT_TOO_LONG = "The text is longer than {n} characters"
NOTHING_TO_SEND = "Nothing to send: add text or at least one valid attachment"

# Format name -> its MIME type; and the types filetype reports that are one of them (an
# animated PNG, as stickers are, is a PNG to every carrier and browser).
MIME = {"pdf": "application/pdf", "jpg": "image/jpeg", "png": "image/png", "gif": "image/gif"}
SAME_AS = {"image/apng": "image/png"}


def detect_type(data: bytes) -> str | None:
    """The MIME type of ``data`` judged by its bytes, or None."""
    kind = filetype.guess(data) if data else None
    return SAME_AS.get(kind.mime, kind.mime) if kind else None
COUNTRY_NAMES = {"US": "the US", "CA": "Canada", "AU": "Australia"}


def format_limit(n: int) -> str:
    """5242880 -> '5 MB', 614400 -> '600 KB' (binary units, as file managers show)."""
    if n >= 1024 * 1024 and n % (1024 * 1024) == 0:
        return f"{n // (1024 * 1024)} MB"
    if n >= 1024 * 1024:
        return f"{n / (1024 * 1024):.1f} MB"
    if n >= 1024:
        return f"{n // 1024} KB"
    return f"{n} bytes"


def format_error(formats: list[str]) -> str:
    names = [n for f in ("pdf", "jpg", "png", "gif") if f in formats
             for n in (("jpg", "jpeg") if f == "jpg" else (f,))]
    listed = names[0] if len(names) == 1 else ", ".join(names[:-1]) + ", or " + names[-1]
    return FORMAT.format(formats=listed)


def _countries(codes: list[str]) -> str:
    names = [COUNTRY_NAMES.get(c, c) for c in codes]
    if len(names) == 1:
        return names[0]
    if len(names) == 2:
        return f"{names[0]} and {names[1]}"
    return ", ".join(names[:-1]) + ", and " + names[-1]


@dataclass
class Attachment:
    """One attachment as given (URL or local path) and, once loaded, its bytes."""
    source: str
    content: bytes | None = None
    load_error: str = ""  # why it could not be loaded (detail for the operator)
    too_large: bool = False  # loading stopped at the size cap
    head: bytes = b""  # when too large: its first bytes, which tell its type
    cap: int = 0  # when too large: the cap it passed
    flaky: bool = False  # the failure may pass: timeout, network, HTTP 5xx or 429


@dataclass
class AttachmentCheck:
    index: int
    source: str
    ok: bool
    format: str | None = None
    size: int | None = None
    error: str | None = None  # the article's text
    detail: str | None = None  # what exactly went wrong, when the text is generic


@dataclass
class Validation:
    policy: str
    ok: bool = True  # something will be sent
    errors: list[str] = field(default_factory=list)  # why nothing will be sent
    attachments: list[AttachmentCheck] = field(default_factory=list)

    @property
    def media(self) -> list[str]:
        return [a.source for a in self.attachments if a.ok]

    @property
    def removed(self) -> list[AttachmentCheck]:
        return [a for a in self.attachments if not a.ok]

    def to_dict(self) -> dict:
        return {"ok": self.ok, "policy": self.policy, "errors": self.errors,
                "attachments": [asdict(a) for a in self.attachments],
                "removed": [a.index for a in self.removed]}


def profile_for(cfg: OutboundConfig, line: str) -> CarrierProfile:
    ln = cfg.line(line)
    return cfg.profiles[ln.profile if ln else "default"]


def load(sources: list[str], profile: CarrierProfile, policy: FetchPolicy,
         allow_files: bool = False) -> list[Attachment]:
    """Fetch (or read) the first ``max_files`` sources, capped at the largest file limit.
    URLs are fetched in parallel: a request waits for the slowest file, not for the sum."""
    from concurrent.futures import ThreadPoolExecutor

    # The largest file the rules allow, and never more than fetch.max_bytes.
    cap = min(max(profile.image_max_bytes, profile.pdf_max_bytes), policy.max_bytes)
    out = [Attachment(source=src) for src in sources]
    wanted = out[:profile.max_files]  # the rest is removed for the count anyway: not fetched
    urls = []
    for att in wanted:
        if allow_files and "://" not in att.source:
            _read_file(att, cap)
        else:
            urls.append(att)
    if urls:
        with ThreadPoolExecutor(max_workers=min(len(urls), 10)) as pool:
            list(pool.map(lambda a: _fetch_into(a, policy, cap), urls))
    return out


def _fetch_into(att: Attachment, policy: FetchPolicy, cap: int) -> None:
    try:
        att.content = fetch(att.source, policy, max_bytes=cap).content
    except FetchError as exc:
        att.too_large = exc.kind == "too_large"
        att.head, att.cap = exc.head, cap
        att.flaky = exc.kind in ("timeout", "network") or (
            exc.kind == "http_error" and (exc.status or 500) >= 500 or exc.status == 429)
        att.load_error = f"{exc.kind}: {exc}"


def _read_file(att: Attachment, cap: int) -> None:
    try:
        with Path(att.source).open("rb") as fh:
            data = fh.read(cap + 1)
    except OSError as exc:
        att.load_error = f"cannot read {att.source}: {exc.strerror or exc}"
        return
    if len(data) > cap:
        att.too_large, att.head, att.cap = True, data[:HEAD_BYTES], cap
        att.load_error = f"too_large: {att.source} is more than {cap} bytes"
    else:
        att.content = data


def size_limit(fmt: str | None, profile: CarrierProfile) -> int:
    """The per-file limit of a format (PDF or image); the largest when it is not known."""
    if fmt is None:
        return max(profile.image_max_bytes, profile.pdf_max_bytes)
    return profile.pdf_max_bytes if fmt == "pdf" else profile.image_max_bytes


def check_attachment(i: int, att: Attachment, profile: CarrierProfile) -> AttachmentCheck:
    """Format and per-file size of one loaded attachment (not count or total). A file past
    the download cap is judged by its first bytes: a 6 MB PDF is told the PDF limit, a
    video the format rule."""
    if att.content is None and not att.too_large:
        return AttachmentCheck(i, att.source, False, error=UNKNOWN, detail=att.load_error or None)
    sample = att.content if att.content is not None else att.head
    detected = detect_type(sample)
    fmt = next((f for f, mime in MIME.items() if detected == mime), None)
    size = None if att.content is None else len(att.content)
    if (att.content is not None or sample) and (fmt is None or fmt not in profile.formats):
        return AttachmentCheck(i, att.source, False, format=fmt, size=size, error=format_error(profile.formats),
                               detail=f"content is {detected or 'unrecognized content'}")
    limit = size_limit(fmt, profile)
    if att.content is None:
        limit = min(limit, att.cap or limit)  # fetch.max_bytes may be lower
        return AttachmentCheck(i, att.source, False, format=fmt,
                               error=FILE_TOO_LARGE.format(limit=format_limit(limit)), detail=att.load_error)
    if size > limit:
        return AttachmentCheck(i, att.source, False, format=fmt, size=size,
                               error=FILE_TOO_LARGE.format(limit=format_limit(limit)))
    return AttachmentCheck(i, att.source, True, format=fmt, size=size)


def message_errors(cfg: OutboundConfig, line: str, to: str, text: str, has_media: bool) -> list[str]:
    """The rules that need no attachment bytes: line, recipient, text, MMS countries."""
    errors = []
    ln = cfg.line(line)
    if ln is None:
        errors.append(LINE_UNKNOWN.format(line=line) if line else LINE_MISSING)
    recipient = recipient_e164(to, line)
    if recipient is None:
        errors.append(BAD_RECIPIENT.format(to=to or "(none)"))
    if len(text) > cfg.max_text_chars:
        errors.append(TEXT_TOO_LONG.format(n=cfg.max_text_chars))
    if has_media:
        countries = _countries(cfg.mms_countries)
        if ln is not None and region_of(line) not in cfg.mms_countries:
            errors.append(LINE_COUNTRY.format(countries=countries, line=line))
        elif ln is not None and not ln.mms:
            errors.append(LINE_NOT_MMS.format(line=line))
        if recipient and region_of(recipient) not in cfg.mms_countries:
            errors.append(COUNTRY.format(countries=countries))
    if not has_media and not text.strip() and not errors:
        errors.append(NOTHING_TO_SEND)
    return errors


def validate(cfg: OutboundConfig, line: str, to: str, text: str, attachments: list[Attachment],
             policy: str | None = None) -> Validation:
    """Apply every rule; the result says what will be sent and what was removed, and why."""
    v = Validation(policy=policy or cfg.policy, errors=message_errors(cfg, line, to, text, bool(attachments)))
    profile = profile_for(cfg, line)
    total = 0
    for i, att in enumerate(attachments):
        if i >= profile.max_files:
            check = AttachmentCheck(i, att.source, False, error=TOO_MANY.format(n=profile.max_files))
        else:
            check = check_attachment(i, att, profile)
            if check.ok and total + (check.size or 0) > profile.total_max_bytes:
                check.ok = False
                check.error = TOTAL_TOO_LARGE.format(limit=format_limit(profile.total_max_bytes))
            elif check.ok:
                total += check.size or 0
        v.attachments.append(check)
    if v.removed and v.policy == "strict":
        for a in v.removed:
            if a.error not in v.errors:
                v.errors.append(a.error)
    if not v.errors and not text.strip() and not v.media:
        v.errors.append(v.removed[0].error)
    v.ok = not v.errors
    return v


def recipient_e164(to: str, line: str) -> str | None:
    return to_e164(to, region_of(line) or "US", typed=True) if to and isinstance(to, str) else None
