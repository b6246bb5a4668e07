"""How the Salesforce writer recovers from a create whose answer was lost.

Without ``salesforce.external_id_field`` an "intent" row (a digest of the create's
fields and its event's status) is written before each create; a later event that finds
an intent but no record id looks for the record that create may have made (same link,
same field values, created since the intent, mapped to no other message) and brings it
up to date instead of creating a second one. With the field, a retried upsert whose
record exists is refused by Salesforce for create-only fields (TaskSubtype, a
master-detail field of a custom object), or, while the first is still being inserted,
refused as a duplicate of the external id (``DUPLICATE_VALUE``); one query confirms the
record and the event is sent as its update (a duplicate not yet readable is retried).
"""
from __future__ import annotations

import time
from datetime import datetime, timezone

from simple_salesforce.format import format_soql

from ..events import status_advances
from .base import Outcome, TransientError, WriteError, content_digest
from .salesforce_match import Link, link_field

NAME = "salesforce"
INTENT_SLACK_SECONDS = 120  # clock skew allowance when looking for a record an intent made
INTENT_KEYS = {"intent_at", "sent"}  # crm_records data of a create whose answer is owed
NOT_UPDATEABLE = "INVALID_FIELD_FOR_INSERT_UPDATE"
DUPLICATE = "DUPLICATE_VALUE"


class Recovery:
    """SalesforceWriter's recovery steps (they use its client, mapping and write path)."""

    # Fallback idempotency without an external id field ----------------------------
    def _sent_fields(self, req, link: Link | None) -> dict:
        """The create body but its link field (the recovery query filters on the link)."""
        field = link_field(self.mapping, link.record_type) if link else ""
        return {k: v for k, v in req["body"].items() if k != field}

    def _write_intent(self, event, ctx, req, link: Link | None) -> None:
        # What this create sends, so a later event of the message finds the record it made.
        body = self._sent_fields(req, link)
        sent = {"fields": list(body), "digest": content_digest(body), "status": event.status}
        ctx.store.save_record(NAME, event.message_id, object_type=self.sobject, object_id=None,
                              status=None, data={"intent_at": time.time(), "sent": sent})

    def _recover_intent(self, event, ctx, rec, req, link: Link) -> str | None:
        """After a create whose outcome was lost: the record it made, if Salesforce has it."""
        data = (rec or {}).get("data") or {}
        field = link_field(self.mapping, link.record_type)
        if not data.get("intent_at") or not field:
            return None
        body = self._sent_fields(req, link)
        # Match what the lost create sent, not this event: a status may have come since.
        sent = data.get("sent") or {"fields": list(body), "digest": content_digest(body)}
        since = datetime.fromtimestamp(data["intent_at"] - INTENT_SLACK_SECONDS, tz=timezone.utc)
        soql = format_soql(
            "SELECT Id, {:literal} FROM {:literal} WHERE {:literal} = {} AND CreatedDate >= {:literal} "
            "ORDER BY CreatedDate, Id LIMIT 50",
            ", ".join(sent["fields"]) or "Id", self.sobject, field, link.record_id,
            since.strftime("%Y-%m-%dT%H:%M:%SZ"))
        found = (self.client.call("query/", params={"q": soql}) or {}).get("records", [])
        taken = ctx.store.mapped_object_ids(NAME, [r["Id"] for r in found])
        for r in found:
            if r["Id"] not in taken and content_digest({k: r.get(k) for k in sent["fields"]}) == sent["digest"]:
                return r["Id"]
        return None

    def _recovered(self, event, ctx, req, found: str, link: Link, rec) -> Outcome:
        """The lost create's record was found; bring it up to this event."""
        sent = ((rec or {}).get("data") or {}).get("sent") or {}
        if sent.get("digest") in (None, content_digest(self._sent_fields(req, link))):
            return self._done(event, ctx, req, "create", found, link, rec, recovered=True)
        if not status_advances(sent.get("status"), event.status):  # it shows a later status
            return self._done(event, ctx, req, "create", found, link, rec,
                              status=sent["status"], recovered=True)
        upd = self._render(event, ctx, "update", {"object_id": found}, None)
        self._send(upd)
        return self._done(event, ctx, upd, "update", found, link, rec, recovered=True)

    # An upsert refused for fields an update cannot set ---------------------------
    def _upsert_refused(self, operation: str, codes: set[str]) -> bool:
        return bool(self.cfg.external_id_field) and operation == "create" and bool({NOT_UPDATEABLE, DUPLICATE} & codes)

    def _still_racing(self, codes: set[str], detail: str) -> TransientError | None:
        """A create upsert refused as a duplicate of our external id whose record the query
        did not find yet: an earlier try of this message is still being inserted."""
        ext = self.cfg.external_id_field
        if ext and DUPLICATE in codes and ext.lower() in detail.lower():
            return TransientError(f"{detail} (an earlier try of this message is still being saved; "
                                  "trying again)")
        return None

    def _made_earlier(self, event, operation, codes: set[str]) -> str | None:
        """The Id of the record a refused create upsert found (a lost answer's create made it).

        The event is then sent as that record's update: the mapping's status entry, fields an
        update may set. That needs no list of create-only fields, so it holds for a custom
        object (a master-detail field) too; a create refused while no record exists stays
        refused rather than being sent without the field."""
        if not self._upsert_refused(operation, codes):
            return None
        return self._existing([event.message_id]).get(event.message_id)

    def _existing(self, message_ids: list[str]) -> dict[str, str]:
        """Message id -> Id of the records that already carry these external ids."""
        ext = self.cfg.external_id_field
        soql = format_soql("SELECT Id, {:literal} FROM {:literal} WHERE {:literal} IN {}",
                           ext, self.sobject, ext, message_ids)
        found = (self.client.call("query/", params={"q": soql}) or {}).get("records", [])
        # Salesforce spells the field as defined, whatever case the config used.
        return {str(v): r["Id"] for r in found for k, v in r.items() if k.lower() == ext.lower()}

    def _update_existing(self, items, refused, results) -> None:
        """``_made_earlier`` for a chunk: one query, then one call with the updates."""
        try:
            existing = self._existing([items[i][0].message_id for i, *_ in refused])
        except WriteError as exc:
            for i, *_ in refused:
                results[i] = exc
            return
        again = []
        for i, rec, link, codes in refused:
            event, ctx = items[i]
            object_id = existing.get(event.message_id)
            if not object_id:  # the refusal stands, unless the record is still on its way
                results[i] = self._still_racing(codes, str(results[i])) or results[i]
            else:
                rec = {**(rec or {}), "object_id": object_id}
                req = self._guard(self._render, event, ctx, "update", rec, link)
                if isinstance(req, Exception):
                    results[i] = req
                else:
                    again.append((i, "update", rec, link, req))
        if again:  # updates name their records by Id
            self._write_chunk(items, "PATCH", "composite/sobjects", again, results, recovered=True)
