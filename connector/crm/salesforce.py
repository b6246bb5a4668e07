"""Salesforce: one record (a completed Task by default) per message on the Contact or Lead.

``render`` builds the exact request for one message; dry-run, ``preview`` and the live
writer all use it, so what an admin previews is what Salesforce receives. The batch path
(``deliver_many``) sends the same record bodies inside one sObject Collections request.

Idempotency: with ``salesforce.external_id_field`` set, every write is an upsert keyed by
the message id, so a retry or redelivery can only touch the same record. Without it the
store's crm_records map holds message id -> record id, and an "intent" row is written
before each create. Recovering from a create whose answer was lost, either way:
salesforce_recovery.py.
"""
from __future__ import annotations

from simple_salesforce.format import format_external_id

from .. import phones, ratelimit
from ..events import MessageEvent, status_advances
from ..mapping import Mapping, MappingError, current
from .base import (DeliveryContext, Outcome, RateLimited, TransientError,
                   WriteError, entry_kind, template_context)
from .salesforce_client import Refused, SalesforceClient, describe_errors, error_codes, record_error
from .salesforce_files import SalesforceFiles
from .salesforce_match import Link, Matcher, Skip, forget, link_field
from .salesforce_recovery import INTENT_KEYS, Recovery

NAME = "salesforce"
WHO_PLACEHOLDER = "{who_id}"
TRUNCATED = "… [truncated]"
# WhoId points at a record that was deleted or merged since we remembered it.
STALE_LINK_CODES = {"INVALID_CROSS_REFERENCE_KEY", "ENTITY_IS_DELETED"}


# -- rendering ----------------------------------------------------------------------
def _utf16_len(s: str) -> int:
    return len(s.encode("utf-16-le")) // 2


def truncate(value: str, limit: int) -> str:
    """Fit ``value`` in ``limit`` characters (Salesforce counts UTF-16 units), marking any cut."""
    if _utf16_len(value) <= limit:
        return value
    mark = TRUNCATED if _utf16_len(TRUNCATED) < limit else "…"
    keep = max(0, limit - _utf16_len(mark))
    head = value.encode("utf-16-le")[: keep * 2].decode("utf-16-le", errors="ignore")
    return head.rstrip() + mark


def fit_limits(fields: dict, limits: dict[str, int]) -> dict:
    return {k: truncate(v, limits[k]) if isinstance(v, str) and k in limits else v
            for k, v in fields.items()}


def render(event: MessageEvent, ctx: DeliveryContext, operation: str, mapping: Mapping,
           who_id: str = WHO_PLACEHOLDER, object_id: str = "{record_id}",
           record_type: str = "Contact") -> dict:
    """The request Salesforce receives for this event (create or update)."""
    mapping = current(mapping)  # one snapshot of a live mapping for the whole request
    cfg = ctx.config.salesforce
    sobject = mapping.object or "Task"
    # record.*: the Contact/Lead/Account a create is linked to (an update's is not looked up).
    record = {"id": who_id, "type": record_type} if operation == "create" else None
    fields = fit_limits(mapping.render(entry_kind(event, operation), template_context(event, ctx, record)),
                        {**mapping.limits, **cfg.field_limits})  # config overrides the mapping's lengths
    if operation == "create":
        field = link_field(mapping, record_type)
        if field:
            fields[field] = who_id
    base = f"/services/data/v{cfg.api_version}/sobjects/{sobject}"
    ext = cfg.external_id_field
    if ext:
        fields.pop(ext, None)  # the key travels in the URL, or the record is named by its Id
    # An update names its record: an upsert of a record deleted in Salesforce since would
    # make a new one holding only the status entry.
    if operation == "update":
        return {"method": "PATCH", "path": f"{base}/{object_id}", "body": fields}
    if ext:
        return {"method": "PATCH", "path": f"{base}/{format_external_id(ext, event.message_id)}",
                "body": fields}
    return {"method": "POST", "path": f"{base}/", "body": fields}


def _rest_path(path: str, api_version: str) -> str:
    return path.removeprefix(f"/services/data/v{api_version}/")


# -- the live writer ----------------------------------------------------------------
class SalesforceWriter(Recovery):
    name = NAME

    def __init__(self, config, mapping: Mapping, client: SalesforceClient | None = None):
        self.config = config
        self.cfg = config.salesforce
        self.mapping = mapping  # a Mapping, or a LiveMapping that follows edits to its file
        # Pacing per org, shared through Redis by every worker in the scaled-out mode.
        self.client = client or SalesforceClient(self.cfg, resolve=config.resolve,
                                                 bucket=ratelimit.bucket(config, NAME))
        self.matcher = Matcher(self.cfg, self.client)
        self.meter = self.client.meter
        self.files = SalesforceFiles(self.client, self.cfg.files_visibility) \
            if self.cfg.attachments == "crm-files" else None

    @property
    def sobject(self) -> str:
        return current(self.mapping).object or "Task"

    def skip_reason(self, event: MessageEvent, store) -> str | None:
        """Why this message will get no record (no match under ``unknown_number: skip``, or
        a number that cannot be matched), else None; asked before attachments are uploaded
        to the org. The lookup goes through the contact cache, as the write's does."""
        if (store.get_record(NAME, event.message_id) or {}).get("object_id"):
            return None
        if self.cfg.unknown_number.action != "skip" and phones.to_e164(event.external) == event.external:
            return None  # a record is found or made for it
        found = self.matcher.resolve([event.external], store)[event.external]
        if isinstance(found, BaseException):
            raise found
        return found.reason if isinstance(found, Skip) else None

    # One message ------------------------------------------------------------------
    def deliver(self, event: MessageEvent, ctx: DeliveryContext) -> Outcome:
        plan = self._plan(event, ctx)
        if isinstance(plan, Outcome):
            return plan
        operation, rec = plan
        link = None
        if operation == "create":
            link = self.matcher.resolve([event.external], ctx.store)[event.external]
            if isinstance(link, Skip):
                return Outcome("skipped", result={"reason": link.reason})
            if isinstance(link, WriteError):
                raise link
        req = self._render(event, ctx, operation, rec, link)
        if operation == "create" and not self.cfg.external_id_field:
            found = self._recover_intent(event, ctx, rec, req, link)
            if found:
                return self._recovered(event, ctx, req, found, link, rec)
            self._write_intent(event, ctx, req, link)
        extra = {}
        try:
            result = self._send(req)
        except Refused as exc:
            self._stale_link(event, ctx, link, exc.codes, str(exc))
            made = self._made_earlier(event, operation, exc.codes)
            if not made:
                raise self._still_racing(exc.codes, str(exc)) or exc
            operation, rec = "update", {**(rec or {}), "object_id": made}
            req = self._render(event, ctx, operation, rec, link)
            result = self._send(req)
            extra = {"recovered": True}
        object_id = (result or {}).get("id") or (rec or {}).get("object_id")
        return self._done(event, ctx, req, operation, object_id, link, rec,
                          created=(result or {}).get("created", operation == "create"), **extra)

    def _send(self, req: dict):
        return self.client.call(_rest_path(req["path"], self.cfg.api_version),
                                method=req["method"], json=req["body"])

    def _plan(self, event: MessageEvent, ctx: DeliveryContext):
        """("create"|"update", record) or an Outcome when there is nothing to send."""
        rec = ctx.store.get_record(NAME, event.message_id)
        if rec and rec.get("object_id"):
            if not status_advances(rec["status"], event.status):
                return Outcome("delivered", result={
                    "unchanged": f"record already shows status {rec['status']}",
                    "id": rec["object_id"]})
            if self.client.near_allocation():
                # A status change can wait; new messages keep going while usage is high.
                raise RateLimited(f"Salesforce API usage {self.client.usage[0]}/{self.client.usage[1]} "
                                  "is near the allocation; status updates paused",
                                  retry_after=self.cfg.usage_pause_seconds, whole_crm=False)
            return "update", rec
        return "create", rec

    def _render(self, event, ctx, operation, rec, link: Link | None) -> dict:
        return render(event, ctx, operation, self.mapping,
                      who_id=link.record_id if link else WHO_PLACEHOLDER,
                      object_id=(rec or {}).get("object_id") or "",
                      record_type=link.record_type if link else "Contact")

    def _done(self, event, ctx, req, operation, object_id, link: Link | None, rec: dict | None,
              status: str | None = None, **extra) -> Outcome:
        data = ({"link_type": link.record_type, "link_id": link.record_id} if link
                else {k: v for k, v in ((rec or {}).get("data") or {}).items() if k not in INTENT_KEYS})
        ctx.store.save_record(NAME, event.message_id, object_type=self.sobject,
                              object_id=object_id, status=status or event.status, data=data)
        result = {"operation": operation, "id": object_id, **extra}
        if link:
            result["linked_to"] = {"type": link.record_type, "id": link.record_id,
                                   "created": link.created}
        return Outcome("delivered", rendered=req, result=result)

    def _stale_link(self, event, ctx, link: Link | None, codes: set[str], detail: str) -> None:
        """A remembered Contact/Lead that was deleted or merged: forget it and look again."""
        if link is not None and codes & STALE_LINK_CODES:
            forget(ctx.store, event.external)
            raise TransientError(f"{link.record_type} {link.record_id} is no longer usable "
                                 f"({detail}); matching {event.external} again")

    # A burst ------------------------------------------------------------------------
    def deliver_many(self, items: list[tuple[MessageEvent, DeliveryContext]]) -> list:
        """One Outcome or exception per item, in order; Collections calls of up to batch_size."""
        if len(items) == 1:
            return [self._guard(self.deliver, *items[0])]
        results: list = [None] * len(items)
        seen: set[str] = set()
        later: list[int] = []  # a second event of one message waits for the first
        todo: list[tuple[int, str, dict | None]] = []
        for i, (event, ctx) in enumerate(items):
            if event.message_id in seen:
                later.append(i)
                continue
            seen.add(event.message_id)
            plan = self._guard(self._plan, event, ctx)
            if isinstance(plan, (Outcome, Exception)):
                results[i] = plan
            elif plan[0] == "create" and not self.cfg.external_id_field and plan[1]:
                later.append(i)  # an intent without an id: the careful one-by-one path
            else:
                todo.append((i, plan[0], plan[1]))
        creates = [items[i][0].external for i, op, _ in todo if op == "create"]
        links = self.matcher.resolve(creates, items[0][1].store) if creates else {}
        ready: list[tuple[int, str, dict | None, Link | None, dict]] = []
        for i, op, rec in todo:
            event, ctx = items[i]
            link = links.get(event.external) if op == "create" else None
            if isinstance(link, Skip):
                results[i] = Outcome("skipped", result={"reason": link.reason})
            elif isinstance(link, Exception):
                results[i] = link
            else:
                req = self._guard(self._render, event, ctx, op, rec, link)
                if isinstance(req, Exception):
                    results[i] = req
                else:
                    ready.append((i, op, rec, link, req))
        self._write_collections(items, ready, results)
        for i in later:
            results[i] = self._guard(self.deliver, *items[i])
        return results

    @staticmethod
    def _guard(fn, *args):
        try:
            return fn(*args)
        except (WriteError, MappingError) as exc:  # that item's outcome, not its batch's
            return exc

    def _write_collections(self, items, ready, results) -> None:
        ext = self.cfg.external_id_field
        groups: dict[tuple[str, str], list] = {}
        for entry in ready:
            i, op, rec, link, req = entry
            if op == "update":
                key = ("PATCH", "composite/sobjects")  # by Id, as render() says why
            elif ext:
                key = ("PATCH", f"composite/sobjects/{self.sobject}/{ext}")
            else:
                key = ("POST", "composite/sobjects")
            groups.setdefault(key, []).append(entry)
        for (method, path), entries in groups.items():
            for start in range(0, len(entries), self.cfg.batch_size):
                self._write_chunk(items, method, path, entries[start:start + self.cfg.batch_size],
                                  results)

    def _write_chunk(self, items, method, path, chunk, results, **extra) -> None:
        ext = self.cfg.external_id_field
        records = []
        for i, op, rec, link, req in chunk:
            event, ctx = items[i]
            record = {"attributes": {"type": self.sobject}, **req["body"]}
            if op == "update":
                record["id"] = rec["object_id"]
            elif ext:
                record[ext] = event.message_id
            else:
                self._write_intent(event, ctx, req, link)
            records.append(record)
        try:
            answers = self.client.call(path, method=method, json={"allOrNone": False, "records": records})
        except WriteError as exc:
            for i, *_ in chunk:
                results[i] = exc
            return
        if not isinstance(answers, list) or len(answers) != len(chunk):
            err = TransientError(f"Salesforce {method} {path}: unexpected answer for "
                                 f"{len(chunk)} records: {str(answers)[:200]}")
            for i, *_ in chunk:
                results[i] = err
            return
        refused = []
        for (i, op, rec, link, req), answer in zip(chunk, answers):
            event, ctx = items[i]
            if answer.get("success"):
                object_id = answer.get("id") or (rec or {}).get("object_id")
                results[i] = self._done(event, ctx, req, op, object_id, link, rec, batched=True,
                                        created=answer.get("created", op == "create"), **extra)
            else:
                errors = answer.get("errors") or []
                detail = describe_errors(errors)
                try:
                    self._stale_link(event, ctx, link, error_codes(errors), detail)
                except TransientError as exc:
                    results[i] = exc
                    continue
                results[i] = record_error(errors)
                if self._upsert_refused(op, error_codes(errors)):
                    refused.append((i, rec, link, error_codes(errors)))
        if refused:
            self._update_existing(items, refused, results)


def build_writer(config, mapping: Mapping) -> SalesforceWriter:
    return SalesforceWriter(config, mapping)
