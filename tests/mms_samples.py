"""Byte samples for MMS validation tests: real magic numbers, padded to a size."""
from __future__ import annotations

MAGIC = {
    "png": b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR",
    "jpg": b"\xff\xd8\xff\xe0\x00\x10JFIF\x00",
    "gif": b"GIF89a\x01\x00\x01\x00",
    "pdf": b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n",
    "webp": b"RIFF\x00\x00\x00\x00WEBPVP8 ",
    "mp4": b"\x00\x00\x00\x18ftypmp42",
    "txt": b"just some text, not an image",
}


def sample(kind: str, size: int = 1000) -> bytes:
    head = MAGIC[kind]
    return head + b"\x00" * max(0, size - len(head))
