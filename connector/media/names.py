"""File names taken from senders, made safe to show and to save."""
from __future__ import annotations

import re
import unicodedata

# The extensions a supported type may carry; the first is the one given when it has none.
EXTENSIONS = {"image/png": (".png",), "image/jpeg": (".jpg", ".jpeg", ".jpe"),
              "image/gif": (".gif",), "application/pdf": (".pdf",)}
_UNSAFE = re.compile(r'[\x00-\x1f\x7f-\x9f<>:"/\\|?*]+')
# / and \ and their look-alikes, which a client's plain-ASCII fallback name (NFKD) turns
# into the real ones: "．．／etc／passwd.png" would be offered as "../etc/passwd.png".
_SEPARATORS = re.compile("[/\\\\\u2215\u2216\u29f8\u29f9\ufe68\uff0f\uff3c]")
# File systems allow 255 bytes per name; leave room for " (12)" and the extension.
STEM_BYTES = 200


def safe_filename(name: str, position: int, media_type: str | None) -> str:
    """A plain file name: no path, no control characters, the extension of the real type.

    ``position`` (1-based) names attachments that came without a usable name.
    """
    name = unicodedata.normalize("NFC", name or "")
    # Invisible format characters (a right-to-left override shows "invoice\u202egnp.pdf"
    # as "invoicefdp.png"; zero-width ones) and line separators go.
    name = "".join(c for c in name if unicodedata.category(c) not in ("Cf", "Zl", "Zp"))
    name = _SEPARATORS.split(name)[-1]
    name = _UNSAFE.sub("_", name).strip(" .\uff0e")
    stem, dot, ext = name.rpartition(".")
    if not dot:
        stem, ext = name, ""
    # Cut by UTF-8 bytes, not characters (90 CJK characters are 270 bytes), never inside
    # a character.
    stem = stem.encode("utf-8")[:STEM_BYTES].decode("utf-8", "ignore") or f"attachment-{position}"
    ext = "." + ext.lower() if ext else ""
    wanted = EXTENSIONS.get(media_type or "")
    if wanted and ext not in wanted:
        # A sender's "photo.gif" that is really a PNG is saved as what it is.
        ext = wanted[0]
    return stem + ext[:12]


def unique(names: list[str]) -> list[str]:
    """Same order; a repeated name becomes 'name (2).ext', like a browser's downloads."""
    seen: set[str] = set()
    out = []
    for n in names:
        candidate, i = n, 1
        stem, dot, ext = n.rpartition(".")
        if not dot:
            stem, ext = n, ""
        while candidate.lower() in seen:
            i += 1
            candidate = f"{stem} ({i})" + (f".{ext}" if ext else "")
        seen.add(candidate.lower())
        out.append(candidate)
    return out


def extension(media_type: str | None) -> str:
    return EXTENSIONS.get(media_type or "", ("",))[0]
