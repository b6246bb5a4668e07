"""Attachments copied into Salesforce Files (``salesforce.attachments: crm-files``).

Salesforce's documented route: create a ContentVersion (the bytes, base64 in JSON), read
its ContentDocumentId (one query for all of a message's versions), then link the document
to the entry with a ContentDocumentLink (``LinkedEntityId`` = the Task or mapped record;
ShareType V, viewers; Visibility per ``salesforce.files_visibility``). The upload happens
before the entry is written, so the entry can link to the file; the link to the record
is made once the record's id is known (``attach``, after each successful write, repeated
until it holds). Until then the file sits in the integration user's library, seen by no
one else. A link that already exists (DUPLICATE_VALUE) counts as made.
"""
from __future__ import annotations

import base64
import re
from pathlib import PurePosixPath

from .base import CrmFile, PermanentError, TransientError
from .salesforce_client import SalesforceClient, error_codes, record_error

SF_ID = re.compile(r"^[A-Za-z0-9]{15}(?:[A-Za-z0-9]{3})?$")
ALREADY_LINKED = "DUPLICATE_VALUE"


class SalesforceFiles:
    links_to_record = True  # CrmFiles.attached links each copy to the entry once written

    def __init__(self, client: SalesforceClient, visibility: str = "AllUsers"):
        self.client = client
        self.visibility = visibility

    def upload(self, name: str, data: bytes) -> CrmFile:
        """The ContentVersion, without its document yet (``complete`` reads it): the caller
        keeps the version first, so a failed read-back never uploads the file again."""
        # A create is not repeated after an ambiguous failure (salesforce_client): at worst
        # the retried delivery leaves one unlinked copy in the integration user's library.
        answer = self.client.call("sobjects/ContentVersion/", method="POST", json={
            "Title": PurePosixPath(name).stem or name, "PathOnClient": name,
            "VersionData": base64.b64encode(data).decode("ascii")}) or {}
        version_id = str(answer.get("id") or "")
        if not SF_ID.match(version_id):
            raise TransientError(f"Salesforce created no ContentVersion for {name}: {answer!r:.200}")
        return CrmFile(file_id=version_id, url="")

    def complete(self, version_ids: list[str]) -> dict[str, CrmFile]:
        """The versions' ContentDocuments, and the links to them, in one query: {version id:
        file} for each version Salesforce has made its document for."""
        ids = [v for v in version_ids if SF_ID.match(v)]
        if not ids:
            return {}
        listed = ", ".join(f"'{v}'" for v in ids)  # ids only: letters and digits
        rows = (self.client.call("query/", params={
            "q": f"SELECT Id, ContentDocumentId FROM ContentVersion WHERE Id IN ({listed})"}) or {}).get("records")
        documents = {}
        for r in rows or []:
            if isinstance(r, dict):
                found, document = str(r.get("Id") or ""), str(r.get("ContentDocumentId") or "")
                documents[found] = document
                documents.setdefault(found[:15], document)  # a 15-character id kept earlier
        base = self.instance_url()
        return {v: CrmFile(file_id=v, document_id=d, url=f"{base}/lightning/r/ContentDocument/{d}/view")
                for v in ids if SF_ID.match(d := documents.get(v, ""))}

    def instance_url(self) -> str:
        return self.client.salesforce().base_url.split("/services/data/")[0].rstrip("/")

    def attach(self, files: list[dict], record_id: str) -> tuple[list[dict], Exception | None]:
        """Link each file (crm_files rows not linked to it yet) to ``record_id``: (the rows
        now linked, the error that kept the others from being linked, or None)."""
        if not SF_ID.match(record_id or ""):
            raise PermanentError(f"cannot link files to {record_id!r}: not a Salesforce record id")
        answers = self.client.call("composite/sobjects", method="POST", json={
            "allOrNone": False,
            "records": [{"attributes": {"type": "ContentDocumentLink"},
                         "ContentDocumentId": f["document_id"], "LinkedEntityId": record_id,
                         "ShareType": "V", "Visibility": self.visibility} for f in files]}) or []
        if not isinstance(answers, list) or len(answers) != len(files):
            raise TransientError(f"Salesforce answered {answers!r:.200} to {len(files)} file links")
        linked, failure = [], None
        for f, answer in zip(files, answers):
            if answer.get("success") or ALREADY_LINKED in error_codes(answer.get("errors")):
                linked.append(f)
            elif failure is None:
                failure = record_error(answer.get("errors"))
        return linked, failure
