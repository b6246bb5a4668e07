"""Attachments copied into HubSpot's file manager (``hubspot.attachments: crm-files``).

Each file is uploaded once (POST /files/v3/files) into ``hubspot.files_folder`` with
access PUBLIC_NOT_INDEXABLE: its URL opens for whoever has it, as the connector's signed
links do, and is kept out of search engines. (PRIVATE files open only through signed URLs
that expire, which a timeline entry cannot carry.) Duplicate validation RETURN_EXISTING in
that folder makes an upload repeated after a lost answer return the first file instead of
a second copy. HubSpot documents no attachment property for Communications (Notes have
``hs_attachment_ids``; a second entry per message would break one-entry-per-message), so
the entry links to the file's URL.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

from .base import CrmFile, PermanentError, TransientError
from .hubspot_api import HubSpotApi

UPLOAD_OPTIONS = json.dumps({"access": "PUBLIC_NOT_INDEXABLE", "overwrite": False,
                             "duplicateValidationStrategy": "RETURN_EXISTING",
                             "duplicateValidationScope": "EXACT_FOLDER"})


class HubSpotFiles:
    links_to_record = False  # the entry links to the files' URLs; nothing more to do

    def __init__(self, api: HubSpotApi, folder: str):
        self.api = api
        self.folder = folder

    def upload(self, name: str, data: bytes) -> CrmFile:
        # The SDK reads the file from a path and names the part after it: HubSpot takes the
        # file's name and extension from that part (no fileName, which may or may not
        # expect the extension).
        with tempfile.TemporaryDirectory(prefix="mms-hubspot-") as tmp:
            path = Path(tmp) / name
            path.write_bytes(data)
            # The raw answer: the SDK only models a 201, and a file returned by
            # RETURN_EXISTING may come back with another success status.
            answer = self.api.call(self.api.files.upload, file=str(path), folder_path=self.folder,
                                   options=UPLOAD_OPTIONS, _preload_content=False)
        try:
            f = json.loads(answer.data)
        except ValueError:
            f = None
        if not isinstance(f, dict) or not f.get("id"):
            raise TransientError(f"HubSpot answered the upload of {name} without a file: {answer.data[:200]!r}")
        url = f.get("url") or f.get("defaultHostingUrl")
        if not url:
            raise PermanentError(f"HubSpot stored {name} as file {f['id']} but gave no URL for it")
        return CrmFile(file_id=str(f["id"]), url=url)
