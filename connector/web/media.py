"""GET /media/<signed-token>: one stored attachment, or a zip of a message's attachments.

The token is checked before anything is read. Files are served with their real type;
images inline, everything else as a download; the browser is told not to sniff types
or run anything (nosniff, a sandboxing CSP). Expired or missing media answers 410 with
the product's text, as a small HTML page or JSON for API clients.
"""
from __future__ import annotations

import io
import logging
import time

from flask import Blueprint, Response, current_app, jsonify, render_template_string, request, send_file

from ..media import UNAVAILABLE_TEXT
from ..media.links import InvalidLink
from ..media.storage import StorageUnavailable

bp = Blueprint("media", __name__)
STORE_DOWN_TEXT = "The media store cannot be reached right now; try again in a minute"


@bp.errorhandler(StorageUnavailable)
def _store_down(exc: StorageUnavailable):
    # The file may well be there: not the 410 of a missing or expired one.
    log.warning("media store unavailable: %s", exc)
    resp = _problem(503, STORE_DOWN_TEXT)
    resp.headers["Retry-After"] = "30"
    return resp
log = logging.getLogger("connector.media")

INVALID_TEXT = "This media link is not valid."
_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{{ title }}</title></head>
<body><p>{{ text }}</p></body></html>
"""
_SAFE_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    # Nothing in a served file may run or load anything; inline styles only so a
    # browser's own image viewer still lays the picture out.
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; sandbox",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "private, max-age=3600",
}


def _wants_json() -> bool:
    best = request.accept_mimetypes.best_match(["text/html", "application/json"])
    return best == "application/json" and request.accept_mimetypes[best] > request.accept_mimetypes["text/html"]


def _problem(status: int, text: str) -> Response:
    if _wants_json():
        resp = jsonify(error=text, status=status)
    else:
        resp = Response(render_template_string(_PAGE, title=text, text=text), mimetype="text/html")
    resp.status_code = status
    resp.headers.update(_SAFE_HEADERS)
    resp.headers["Cache-Control"] = "no-store"
    return resp


@bp.get("/media/<token>")
def media(token: str):
    svc = current_app.extensions["connector"].media
    try:
        message_id, index, expires = svc.signer.read(token)
    except InvalidLink:
        log.info("media link rejected: bad signature")
        return _problem(404, INVALID_TEXT)
    now = time.time()
    if now >= expires:
        return _problem(410, UNAVAILABLE_TEXT)
    if index is None:
        return _zip(svc, message_id, now)
    found = [a for a in svc.attachments(message_id) if a.index == index]
    if not found or not svc.present(found[0], now):
        return _problem(410, UNAVAILABLE_TEXT)
    a = found[0]
    inline = a.media_type.startswith("image/")
    try:
        source = svc.storage.local_path(a.key)
        if source is None:  # object storage: the file in memory (at most 5 MB), so ranges work
            with svc.storage.open(a.key) as f:
                source = io.BytesIO(f.read())
        resp = send_file(source, mimetype=a.media_type, as_attachment=not inline,
                         download_name=a.name, conditional=True, max_age=3600)
    except FileNotFoundError:  # purged between the check and the open
        return _problem(410, UNAVAILABLE_TEXT)
    if resp.content_length is None:
        resp.content_length = a.size
    resp.headers.update(_SAFE_HEADERS)
    return resp


def _zip(svc, message_id: str, now: float) -> Response:
    built = svc.zip_for(message_id, now)
    if built is None:
        return _problem(410, UNAVAILABLE_TEXT)
    zs, name = built
    resp = Response(iter(zs), mimetype="application/zip", direct_passthrough=True)
    resp.headers["Content-Length"] = str(len(zs))
    resp.headers.set("Content-Disposition", "attachment", filename=name)
    resp.headers.update(_SAFE_HEADERS)
    resp.headers["Cache-Control"] = "private, no-store"
    return resp
