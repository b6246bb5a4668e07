""""Download all": one zip of a message's available attachments, streamed.

Entries are stored, not compressed (images and PDFs are compressed already), which
makes the archive's exact size known before the first byte: the response carries a
Content-Length, so the browser shows progress and time remaining, while memory stays
bounded (files are read in chunks as the client consumes the stream). zipstream-ng
does the sizing and the streaming.
"""
from __future__ import annotations

from typing import Iterator

from zipstream import ZIP_STORED, ZipStream

from .storage import Storage

CHUNK = 64 * 1024
NOTES_NAME = "unavailable.txt"


def file_chunks(storage: Storage, key: str) -> Iterator[bytes]:
    """The file's bytes in chunks; opened on first read, closed when done or abandoned."""
    with storage.open(key) as f:
        while chunk := f.read(CHUNK):
            yield chunk


def build_zip(storage: Storage, files: list[tuple[str, str, int]], notes: str = "") -> ZipStream:
    """``files``: (name in the zip, storage key, size). ``notes`` becomes unavailable.txt."""
    zs = ZipStream(compress_type=ZIP_STORED, sized=True)
    for arcname, key, size in files:
        zs.add(file_chunks(storage, key), arcname, size=size)
    if notes:
        zs.add(notes.encode("utf-8"), NOTES_NAME)
    return zs
