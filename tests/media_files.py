"""Real, tiny media files made with Pillow, and MMS payloads whose URLs serve them."""
from __future__ import annotations

import io

from PIL import Image


def image(fmt: str, size=(4, 3), color=(200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    img = Image.new("RGB", size, color)
    if fmt == "GIF":
        img = img.convert("P")
    img.save(buf, format=fmt)
    return buf.getvalue()


def png() -> bytes:
    return image("PNG")


def jpeg() -> bytes:
    return image("JPEG")


def gif() -> bytes:
    return image("GIF")


def pdf(pad_to: int = 0) -> bytes:
    """A one-page PDF; ``pad_to`` appends a comment block after %%EOF (readers ignore it)."""
    data = image("PDF", size=(20, 20))
    if pad_to > len(data):
        data += b"\n%" + b"x" * (pad_to - len(data) - 2)
    return data


def big_jpeg(total: int) -> bytes:
    """A real JPEG followed by filler up to ``total`` bytes (still opens as a JPEG)."""
    data = jpeg()
    return data + b"\0" * (total - len(data))


def mms_payload(message_id: str, items: list[tuple[str, str, str]], token: str) -> dict:
    """An Aircall message.received with media_details from (url, file_name, file_type)."""
    return {
        "resource": "message", "event": "message.received",
        "timestamp": "2026-11-20T15:04:05.123Z", "token": token,
        "data": {
            "id": message_id, "status": "received", "direction": "inbound",
            "body": "Photos attached", "raw_digits": "(415) 555-0142",
            "created_at": "2026-11-20T15:04:04.000Z",
            "number": {"id": 476258, "name": "Sales US", "digits": "+1 424-416-2288",
                       "country": "US", "time_zone": "America/Los_Angeles"},
            "media_details": [{"presigned_url": u, "file_name": n, "file_type": t}
                              for u, n, t in items],
        },
    }


def apng() -> bytes:
    """An animated PNG (two frames), as stickers are: filetype calls it image/apng."""
    buf = io.BytesIO()
    Image.new("RGB", (4, 3), (200, 30, 30)).save(buf, format="PNG", save_all=True, duration=100, loop=0,
                                                 append_images=[Image.new("RGB", (4, 3), (30, 200, 30))])
    return buf.getvalue()
