"""Attachments copied into a CRM (``attachments: crm-files``), around the media step.

Before a message is written to a CRM whose writer has ``files`` (connector/crm/
hubspot_files.py, salesforce_files.py), each attachment the entry can offer (supported,
fetched, within retention) is uploaded once and remembered in ``crm_files`` as soon as
the CRM has it, so a retried delivery or a later status update never uploads it again.
The entry's links then point at the CRM's copy, which stays when the connector's own copy
expires; "Download all" stays the connector's zip. After the entry is written,
``attached`` links the copies to it where the CRM needs that (Salesforce); a failure
there makes the delivery retry, and the write it repeats is idempotent.

A message the writer will skip (no record has its number under ``unknown_number:
skip``) uploads nothing: the writer is asked first, through the contact cache its write
then reads, so the question costs no second search.
"""
from __future__ import annotations

import logging
import time

from sqlalchemy import select, update

from ..crm.base import CrmFile, Outcome, TransientError
from ..store import Store, crm_files

log = logging.getLogger("connector.crm_files")


class CrmFiles:
    def __init__(self, store: Store, media, writers: dict):
        self.store = store
        self.media = media  # connector.media.MediaService
        self.writers = writers
        self.uploaders = {name: w.files for name, w in writers.items() if getattr(w, "files", None)}

    def __call__(self, event, delivery=None):
        """The pipeline's media hook: (views, download-all link), links to the CRM's copies."""
        attachments, views, download_all = self.media.collected(event)
        files = self.uploaders.get(getattr(delivery, "target", None))
        if files is None or not views:
            return views, download_all
        target, message_id = delivery.target, event.message_id
        kept = self.rows(target, message_id)
        now = time.time()
        todo = [a for a in attachments if a.index not in kept and self.media.present(a, now)]
        if todo:
            reason = self.writers[target].skip_reason(event, self.store)
            if reason:  # no entry will show them: copies would only clutter the CRM
                log.info("%s: attachments of message %s not uploaded: %s", target, message_id, reason)
                return views, download_all
        for a in todo:
            with self.media.storage.open(a.key) as fh:
                data = fh.read()
            kept[a.index] = self._save(target, message_id, a.index, files.upload(a.name, data))
            log.info("%s: attachment %s of message %s uploaded as file %s",
                     target, a.index + 1, message_id, kept[a.index]["file_id"])
        unread = [row for row in kept.values() if not row["url"]]  # uploaded; links still to be read
        if unread:
            read = files.complete([row["file_id"] for row in unread])
            for row in unread:
                if row["file_id"] in read:
                    kept[row["idx"]] = self._complete(row, read[row["file_id"]])
            missing = [row["file_id"] for row in unread if row["file_id"] not in read]
            if missing:
                raise TransientError(f"{target} has no document yet for uploaded file(s) {', '.join(missing)}")
        for a, view in zip(attachments, views):
            row = kept.get(a.index)
            if row is not None:
                view.link, view.available, view.reason = row["url"], True, ""
        return views, download_all

    def attached(self, target: str, event, result):
        """After a write: link the message's copies to the entry; the write's result, or
        the error that kept a copy from being linked (the delivery then retries)."""
        files = self.uploaders.get(target)
        if files is None or not files.links_to_record:
            return result
        if not isinstance(result, Outcome) or result.state != "delivered":
            return result
        record_id = (result.result or {}).get("id")
        rows = [r for r in self.rows(target, event.message_id).values() if r["linked_to"] != record_id]
        if not rows or not record_id:
            return result
        try:
            linked, error = files.attach(rows, record_id)
        except Exception as exc:
            return exc
        if linked:
            with self.store.write() as conn:
                conn.execute(update(crm_files).where(crm_files.c.id.in_([r["id"] for r in linked]))
                             .values(linked_to=record_id))
        return error or result

    # -- the remembered copies -------------------------------------------------------
    def rows(self, target: str, message_id: str) -> dict[int, dict]:
        with self.store.read() as conn:
            found = conn.execute(select(crm_files).where(crm_files.c.target == target,
                                                         crm_files.c.message_id == message_id)).fetchall()
        return {r.idx: dict(r._mapping) for r in found}

    def _complete(self, row: dict, f: CrmFile) -> dict:
        with self.store.write() as conn:
            conn.execute(update(crm_files).where(crm_files.c.id == row["id"])
                         .values(document_id=f.document_id, url=f.url))
        return {**row, "document_id": f.document_id, "url": f.url}

    def _save(self, target: str, message_id: str, idx: int, f: CrmFile) -> dict:
        values = dict(target=target, message_id=message_id, idx=idx, file_id=f.file_id,
                      document_id=f.document_id, url=f.url, linked_to=None, created_at=time.time())
        with self.store.write() as conn:
            row_id = conn.execute(crm_files.insert().values(**values)).inserted_primary_key[0]
        return {"id": row_id, **values}
