"""HubSpot: one Communications object (SMS channel) per message, on the contact's timeline.

``render`` builds the exact request (method, path, body) for dry-run, ``preview`` and
the live writer alike. The live writer matches the contact (hubspot_contacts), then
creates or updates the communication through hubspot_api.

Idempotency: ``crm_records`` maps our message id to the communication. Before a create,
an *intent* row (no object id yet) is written; a later attempt that finds an intent
and no id knows an earlier create may have landed with its answer lost, so it searches
HubSpot for that communication (by ``hubspot.message_id_property`` when configured,
else by contact + hs_timestamp + channel) before creating again. hs_timestamp has
Aircall's 1-second precision, so without the property a hit is adopted only if no other
message maps to it and its body is one this message's creates sent (a digest of each is
kept in the intent): another text logged in the same second is not taken for ours.
"""
from __future__ import annotations

import time

from .. import ratelimit
from ..events import MessageEvent, status_advances
from ..mapping import Mapping, MappingError, current
from .base import (DeliveryContext, Outcome, PermanentError, TransientError, WriteError, content_digest,
                   entry_kind, template_context)
from .hubspot_api import Ambiguous, HubSpotApi, InputRefused, errors_by_key
from .hubspot_contacts import Contact, ContactMatcher, Unmatched
from .hubspot_files import HubSpotFiles

NAME = "hubspot"
OBJECT_TYPE = "communications"
CONTACT_PLACEHOLDER = "{contact_id}"
COMPANY_PLACEHOLDER = "{company_id}"
DEAL_PLACEHOLDER = "{deal_id}"
COMMUNICATION_TO_CONTACT = 81  # HUBSPOT_DEFINED association type id
COMMUNICATION_TO_COMPANY = 87
FIXED = {"hs_communication_channel_type": "SMS", "hs_communication_logged_from": "CRM"}
SEARCH_LAG = 10.0  # seconds HubSpot's search may lag behind a create


def _association(object_id: str, type_id: int) -> dict:
    return {"to": {"id": object_id},
            "types": [{"associationCategory": "HUBSPOT_DEFINED", "associationTypeId": type_id}]}


def render(event: MessageEvent, ctx: DeliveryContext, operation: str, mapping: Mapping,
           contact_id: str = CONTACT_PLACEHOLDER, object_id: str = "{communication_id}",
           company_id: str | None = COMPANY_PLACEHOLDER, deal_id: str | None = DEAL_PLACEHOLDER) -> dict:
    """The request HubSpot receives for this event (create or update)."""
    mapping = current(mapping)  # one snapshot of a live mapping for the whole request
    cfg = ctx.config.hubspot
    # record.*: the contact a create is logged on (an update's is not looked up).
    record = {"id": contact_id, "type": "contact"} if operation == "create" else None
    props = mapping.render(entry_kind(event, operation), template_context(event, ctx, record))
    props = {k: ("" if v is None else str(v)) for k, v in props.items()}
    if operation == "update":
        return {"method": "PATCH", "path": f"/crm/v3/objects/communications/{object_id}",
                "body": {"properties": props}}
    for key, value in FIXED.items():  # what makes it an SMS logged from the CRM
        props.setdefault(key, value)
    props.setdefault("hs_timestamp", str(event.occurred_at_ms))
    if cfg.owner_id:
        props.setdefault("hubspot_owner_id", cfg.owner_id)
    if cfg.message_id_property:
        props[cfg.message_id_property] = event.message_id
    associations = [_association(contact_id, cfg.contact_association_type_id)]
    if cfg.associate_company and company_id:
        associations.append(_association(company_id, cfg.company_association_type_id))
    if cfg.associate_deal and deal_id:
        associations.append(_association(deal_id, cfg.deal_association_type_id))
    return {"method": "POST", "path": "/crm/v3/objects/communications",
            "body": {"properties": props, "associations": associations}}


def build_writer(config, mapping) -> "HubSpotWriter":
    """``mapping``: a Mapping, or a callable returning the current one (follows file edits)."""
    return HubSpotWriter(config, mapping if callable(mapping) else (lambda: mapping))


class HubSpotWriter:
    """Live mode: writes through the hubspot-api-client; ``deliver_many`` batches a burst."""

    name = NAME

    def __init__(self, config, mapping, api: HubSpotApi | None = None):
        self.config = config
        self.cfg = config.hubspot
        self.mapping = mapping  # callable returning the current Mapping
        # Rate limits per portal, shared through Redis by every worker in the scaled-out mode.
        self.api = api or HubSpotApi(self.cfg, config.time_zone, bucket=ratelimit.bucket(config, NAME),
                                     search_bucket=ratelimit.bucket(config, NAME, "search"))
        self.contacts = ContactMatcher(self.api, self.cfg)
        self.meter = self.api.meter
        self.files = HubSpotFiles(self.api, self.cfg.files_folder) if self.cfg.attachments == "crm-files" else None
        self._checked_types: set[str] = set()
        self.search_lag = SEARCH_LAG

    def skip_reason(self, event: MessageEvent, store) -> str | None:
        """Why this message will get no entry (``unknown_number: skip`` and no contact has
        its number), else None; asked before attachments are copied into the portal. The
        lookup goes through the contact cache, which keeps its answer for the write."""
        if self.cfg.unknown_number.action != "skip" or (store.get_record(NAME, event.message_id) or {}).get("object_id"):
            return None
        found = self.contacts.resolve(store, [event.external])[event.external]
        if isinstance(found, BaseException):
            raise found
        return found.reason if isinstance(found, Unmatched) else None

    def deliver(self, event: MessageEvent, ctx: DeliveryContext) -> Outcome:
        result = self.deliver_many([(event, ctx)])[0]
        if isinstance(result, BaseException):
            raise result
        return result

    # -- one burst -------------------------------------------------------------------
    def deliver_many(self, items: list) -> list:
        """One Outcome or exception per (event, ctx), in order."""
        # Events of one message go in separate rounds, so the second sees the first's entry.
        rounds: list[list[int]] = []
        seen: dict[str, int] = {}
        for i, (event, _) in enumerate(items):
            n = seen[event.message_id] = seen.get(event.message_id, -1) + 1
            if n == len(rounds):
                rounds.append([])
            rounds[n].append(i)
        results: list = [None] * len(items)
        for idx in rounds:
            for i, r in zip(idx, self._deliver_round([items[i] for i in idx])):
                results[i] = r
        return results

    def _deliver_round(self, items: list) -> list:
        results: list = [None] * len(items)
        store = items[0][1].store if items else None
        creates, updates = [], []
        for i, (event, ctx) in enumerate(items):
            rec = store.get_record(NAME, event.message_id)
            if rec and rec["object_id"]:
                self._plan_update(i, event, rec, results, updates)
            else:
                creates.append((i, rec))
        if creates:
            try:
                self._creates(items, creates, results, updates)
            except Exception as exc:  # a failure that stops every create in the burst
                for i, _ in creates:
                    if results[i] is None and not any(u[0] == i for u in updates):
                        results[i] = exc
        if updates:
            self._updates(items, updates, results)
        return results

    def _plan_update(self, i, event, rec, results, updates) -> None:
        if status_advances(rec["status"], event.status):
            updates.append((i, rec))
        else:
            results[i] = Outcome("delivered", result={
                "operation": "none", "id": rec["object_id"],
                "unchanged": f"entry already shows status {rec['status']}"})

    def _creates(self, items, creates, results, updates) -> None:
        store = items[0][1].store
        contacts = self.contacts.resolve(store, [items[i][0].external for i, _ in creates])
        ready = []
        for i, rec in creates:
            found = contacts[items[i][0].external]
            if isinstance(found, BaseException):
                results[i] = found
            elif isinstance(found, Unmatched):
                results[i] = Outcome("skipped", result={"reason": found.reason})
            else:
                ready.append((i, rec, found))
        if not ready:
            return
        self._check_association_types()
        todo, intents = [], []
        for i, rec, contact in ready:
            event, ctx = items[i]
            try:
                req = render(event, ctx, "create", self.mapping(), contact_id=contact.id,
                             company_id=contact.company_id, deal_id=contact.deal_id)
            except MappingError as exc:  # this message's own dead letter (Pipeline.record)
                results[i] = exc
                continue
            intent = (rec or {}).get("data", {}).get("intent")
            body = content_digest(req["body"]["properties"].get("hs_communication_body"))
            if intent:
                try:
                    existing = self._find_lost_create(event, intent, store, body)
                except WriteError as exc:
                    results[i] = exc
                    continue
                if existing:
                    rec = self._save(store, event, existing, intent.get("status"), contact)
                    self._plan_update(i, event, rec, results, updates)
                    continue
            # Earlier creates' bodies too: one may still land in search (a status event retries
            # the create with another body).
            bodies = list(dict.fromkeys((intent or {}).get("bodies", []) + [body]))[-5:]
            intents.append(_row(event, None, None, {"intent": {
                "at": time.time(), "status": event.status, "contact": contact.id,
                "hs_timestamp": req["body"]["properties"].get("hs_timestamp", ""), "bodies": bodies}}))
            todo.append((i, req, contact))
        store.save_records(NAME, intents)  # before any create, in one transaction
        for n in range(0, len(todo), self.cfg.batch_size):
            chunk = todo[n:n + self.cfg.batch_size]
            if len(chunk) == 1:
                self._create_one(items, chunk[0], results)
            else:
                self._create_batch(items, chunk, results)

    def _create_one(self, items, job, results) -> None:
        i, req, contact = job
        event, ctx = items[i]
        try:
            res = self.api.call(self.api.comm_basic.create, idempotent=False,
                                simple_public_object_input_for_create=req["body"])
        except Ambiguous as exc:  # maybe created: the next attempt searches, after search catches up
            results[i] = TransientError(str(exc), retry_after=max(exc.retry_after or 0, self.search_lag))
            return
        except WriteError as exc:  # refused, so surely not created: no search next time
            self._drop_intent(ctx.store, event)
            results[i] = self._stale_contact(ctx.store, event, exc)
            return
        self._save(ctx.store, event, str(res.id), event.status, contact)
        results[i] = Outcome("delivered", rendered=req,
                             result=self._result("create", res.id, contact))

    def _create_batch(self, items, chunk, results) -> None:
        inputs = [dict(req["body"], objectWriteTraceId=items[i][0].message_id) for i, req, _ in chunk]
        try:
            res = self.api.call(self.api.comm_batch.create, idempotent=False,
                                batch_input_simple_public_object_batch_input_for_create={"inputs": inputs})
        except Ambiguous as exc:
            err = TransientError(str(exc), retry_after=max(exc.retry_after or 0, self.search_lag))
            for i, _, _ in chunk:
                results[i] = err
            return
        except InputRefused:
            # One bad input refuses the whole batch and nothing is created: halve it until
            # the refused inputs stand alone (a few calls, not one per message).
            half = len(chunk) // 2
            for part in (chunk[:half], chunk[half:]):
                if len(part) == 1:
                    self._create_one(items, part[0], results)
                else:
                    self._create_batch(items, part, results)
            return
        except WriteError as exc:
            for i, _, _ in chunk:
                self._drop_intent(items[i][1].store, items[i][0])
                results[i] = exc
            return
        created = {r.object_write_trace_id: r for r in res.results or [] if r.object_write_trace_id}
        errors = errors_by_key(getattr(res, "errors", None))
        rows = []
        for i, req, contact in chunk:
            event = items[i][0]
            obj = created.get(event.message_id)
            if obj is not None:
                rows.append(_row(event, str(obj.id), event.status, {"contact": contact.id}))
                results[i] = Outcome("delivered", rendered=req,
                                     result=self._result("create", obj.id, contact, batch=True))
            elif event.message_id in errors:  # HubSpot refused this one: it was not created
                rows.append(_row(event, None, None, {}))
                results[i] = self._stale_contact(items[i][1].store, event, errors[event.message_id])
            else:
                results[i] = TransientError(
                    "HubSpot's batch answer did not mention this record; it is looked up before retrying",
                    retry_after=self.search_lag)
        items[0][1].store.save_records(NAME, rows)

    def _updates(self, items, updates, results) -> None:
        for n in range(0, len(updates), self.cfg.batch_size):
            reqs = []
            for i, rec in updates[n:n + self.cfg.batch_size]:
                try:
                    reqs.append((i, rec, render(items[i][0], items[i][1], "update", self.mapping(),
                                                object_id=rec["object_id"])))
                except MappingError as exc:
                    results[i] = exc
            if not reqs:
                continue
            try:
                if len(reqs) == 1:
                    i, rec, req = reqs[0]
                    self.api.call(self.api.comm_basic.update, rec["object_id"],
                                  simple_public_object_input=req["body"])
                    errors, updated = {}, {rec["object_id"]}
                else:
                    inputs = [dict(req["body"], id=rec["object_id"]) for _, rec, req in reqs]
                    res = self.api.call(self.api.comm_batch.update,
                                        batch_input_simple_public_object_batch_input={"inputs": inputs})
                    errors = errors_by_key(getattr(res, "errors", None))
                    updated = {str(r.id) for r in getattr(res, "results", None) or []}
            except WriteError as exc:
                for i, _, _ in reqs:
                    results[i] = exc
                continue
            rows = []
            for i, rec, req in reqs:
                event = items[i][0]
                if rec["object_id"] in errors:
                    results[i] = errors[rec["object_id"]]
                    continue
                if rec["object_id"] not in updated:  # only what HubSpot says it updated is
                    results[i] = TransientError(f"HubSpot's batch update answer does not show "
                                                f"communication {rec['object_id']} updated")
                    continue
                rows.append(_row(event, rec["object_id"], event.status, rec.get("data")))
                results[i] = Outcome("delivered", rendered=req, result={
                    "operation": "update", "id": rec["object_id"], **({"batch": True} if len(reqs) > 1 else {})})
            items[0][1].store.save_records(NAME, rows)

    # -- helpers ---------------------------------------------------------------------
    @staticmethod
    def _stale_contact(store, event, exc: WriteError) -> WriteError:
        """A create refused for its associations: the remembered contact (or its deal or
        company) was deleted or merged in HubSpot since. Forget it, so the retry looks the
        number up again, rather than dead-lettering every text from it until the cache
        entry expires."""
        text = str(exc).lower()
        if isinstance(exc, TransientError) or "association" not in text or "invalid" not in text:
            return exc
        store.drop_contact(NAME, event.external)
        return TransientError(f"{exc}; the contact of {event.external} is looked up again")

    def _save(self, store, event, object_id: str, status, contact: Contact) -> dict:
        data = {"contact": contact.id}
        store.save_record(NAME, event.message_id, object_type=OBJECT_TYPE, object_id=object_id,
                          status=status, data=data)
        return {"object_id": object_id, "status": status, "data": data}

    @staticmethod
    def _drop_intent(store, event) -> None:
        store.save_record(NAME, event.message_id, object_type=OBJECT_TYPE, object_id=None,
                          status=None, data={})

    @staticmethod
    def _result(operation: str, object_id, contact: Contact, batch: bool = False) -> dict:
        out = {"operation": operation, "id": str(object_id), "contact_id": contact.id}
        if contact.created:
            out["contact_created"] = True
        if batch:
            out["batch"] = True
        return out

    def _check_association_types(self) -> None:
        """The configured association type ids exist in this portal (checked once)."""
        pairs = [("contacts", self.cfg.contact_association_type_id, "contact_association_type_id")]
        if self.cfg.associate_company:
            pairs.append(("companies", self.cfg.company_association_type_id, "company_association_type_id"))
        if self.cfg.associate_deal:
            pairs.append(("deals", self.cfg.deal_association_type_id, "deal_association_type_id"))
        for to_type, type_id, key in pairs:
            if to_type in self._checked_types:
                continue
            res = self.api.call(self.api.labels.get_all, "communications", to_type)
            known = [(r.category, r.type_id) for r in res.results or []]
            if ("HUBSPOT_DEFINED", type_id) not in known:
                have = ", ".join(f"{t} ({c})" for c, t in known) or "none"
                raise PermanentError(
                    f"hubspot.{key}: {type_id} is not a HUBSPOT_DEFINED communications -> {to_type} "
                    f"association type in this portal (it has: {have})")
            self._checked_types.add(to_type)

    def _find_lost_create(self, event: MessageEvent, intent: dict, store, body: str) -> str | None:
        """The communication an earlier, unanswered create made, if it exists. ``body``: the
        digest of this create's body (for an intent that kept none)."""
        age = time.time() - float(intent.get("at") or 0)
        if age < self.search_lag:  # too early for search to show it: come back later
            raise TransientError("an earlier create of this entry got no answer; checking HubSpot for "
                                 "it once its search has caught up", retry_after=self.search_lag - age)
        props = ["hs_timestamp"]
        if self.cfg.message_id_property:  # exact: the property holds our message id
            filters = [{"propertyName": self.cfg.message_id_property, "operator": "EQ",
                        "value": event.message_id}]
        else:
            filters = [{"propertyName": "associations.contact", "operator": "EQ", "value": intent["contact"]},
                       {"propertyName": "hs_timestamp", "operator": "EQ", "value": intent["hs_timestamp"]},
                       {"propertyName": "hs_communication_channel_type", "operator": "EQ", "value": "SMS"}]
            props.append("hs_communication_body")
        search = {"filterGroups": [{"filters": filters}], "properties": props, "sorts": [],
                  "limit": 100, "after": "0"}
        res = self.api.call(self.api.comm_search.do_search, public_object_search_request=search, search=True)
        found = sorted(res.results or [], key=lambda r: (len(str(r.id)), str(r.id)))
        if self.cfg.message_id_property:
            return str(found[0].id) if found else None
        # Another text of this contact in the same second shares the filters: not ours if
        # another message maps to it, or if its body is not one we sent.
        taken = store.mapped_object_ids(NAME, [str(r.id) for r in found])
        ours = set(intent.get("bodies") or [body])
        for r in found:
            if str(r.id) not in taken and content_digest((r.properties or {}).get("hs_communication_body")) in ours:
                return str(r.id)
        return None


def _row(event: MessageEvent, object_id: str | None, status: str | None, data: dict | None) -> dict:
    return dict(message_id=event.message_id, object_type=OBJECT_TYPE, object_id=object_id,
                status=status, data=data)
