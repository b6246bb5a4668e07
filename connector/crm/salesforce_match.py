"""Find the Contact or Lead behind a phone number (SOSL IN PHONE FIELDS), or create one.

The search term is the number's national digits, and is escaped for SOSL anyway (defence
in depth: nothing from a phone ever reaches the query unescaped). Salesforce keeps phones
as typed, so every candidate is confirmed client-side by normalizing its phone fields to
E.164. Matches and created records are remembered in the store's contacts table, since
the search index lags creates by minutes; a burst from a new number creates one record,
whichever worker gets there first (an insert-if-absent marker row), and the records for a
batch's new numbers are created together (one sObject Collections call per 200).
"""
from __future__ import annotations

from dataclasses import dataclass

from simple_salesforce.format import format_soql

from .. import phones
from ..config import SalesforceConfig
from .base import PermanentError, RateLimited, TransientError, WriteError
from .salesforce_client import SalesforceClient, record_error

TARGET = "salesforce"
SOSL_RESERVED = frozenset('?&|!{}[]()^~*:\\"\'+-')
MAX_SEARCH_QUERY = 3900  # Salesforce drops OR operators from FIND terms over 4,000 characters
CREATE_CLAIM_SECONDS = 120  # how long a "being created" marker holds off other workers
COLLECTION_SIZE = 200  # records per sObject Collections call (Salesforce's maximum)
NONE, CREATING = "none", "creating"

PHONE_FIELDS = {
    "Contact": ["Phone", "MobilePhone", "HomePhone", "OtherPhone", "AssistantPhone"],
    "Lead": ["Phone", "MobilePhone"],
    "Account": ["Phone"],
    "PersonAccount": ["Phone", "PersonMobilePhone", "PersonHomePhone", "PersonOtherPhone"],
}
DEFAULT_NEW_FIELDS = {
    "Lead": {"LastName": "{e164}", "Company": "Unknown ({e164})", "Phone": "{e164}"},
    "Contact": {"LastName": "{e164}", "Phone": "{e164}"},
}


def escape_sosl(term: str) -> str:
    """Backslash-escape every SOSL reserved character of a FIND term."""
    return "".join("\\" + ch if ch in SOSL_RESERVED else ch for ch in term)


def search_digits(e164: str) -> str:
    """The national significant number's digits: how reps usually type a phone."""
    return phones.national_digits(e164)


def returning_clause(objects: list[str]) -> str:
    parts = []
    for obj in objects:
        if obj == "Contact":
            parts.append(f"Contact(Id, {', '.join(PHONE_FIELDS['Contact'])}, CreatedDate)")
        elif obj == "Lead":  # a converted Lead is read-only history, never a target
            parts.append(f"Lead(Id, {', '.join(PHONE_FIELDS['Lead'])}, CreatedDate "
                         "WHERE IsConverted = false)")
    if "Account" in objects or "PersonAccount" in objects:
        fields = ["Id", "Phone", "CreatedDate"]
        if "PersonAccount" in objects:  # these fields exist only where Person Accounts are on
            fields += PHONE_FIELDS["PersonAccount"][1:] + ["PersonContactId", "IsPersonAccount"]
        parts.append(f"Account({', '.join(fields)})")
    return ", ".join(parts)


def build_sosl(numbers: list[str], objects: list[str]) -> str:
    terms = " OR ".join(escape_sosl(search_digits(n)) for n in numbers)
    return f"FIND {{{terms}}} IN PHONE FIELDS RETURNING {returning_clause(objects)}"


@dataclass(frozen=True)
class Link:
    """The record a message is logged on."""
    record_type: str  # Contact | Lead | Account | PersonAccount
    record_id: str
    created: bool = False


@dataclass(frozen=True)
class Skip:
    reason: str


def _record_type(rec: dict) -> str:
    t = (rec.get("attributes") or {}).get("type", "")
    if t == "Account" and rec.get("IsPersonAccount"):
        return "PersonAccount"
    return t


def index_by_number(records: list[dict], regions: set[str]) -> dict[str, list[tuple[str, dict]]]:
    """E.164 -> (type, record) for every phone field of every hit, read as typed in each region."""
    index: dict[str, list[tuple[str, dict]]] = {}
    for rec in records:
        rtype = _record_type(rec)
        numbers = set()
        for f in PHONE_FIELDS.get(rtype, []):
            value = rec.get(f)
            if isinstance(value, str) and value:
                numbers.update(phones.to_e164(value, region, typed=True) for region in regions)
        for n in numbers - {None}:
            index.setdefault(n, []).append((rtype, rec))
    return index


def pick(records: list[dict], e164: str, cfg: SalesforceConfig,
         index: dict[str, list[tuple[str, dict]]] | None = None) -> Link | None:
    """Deterministic: first type in ``match.objects`` order, then oldest (or newest) created, then Id.

    Only records whose phone fields normalize to ``e164`` count (SOSL matches tokens)."""
    if index is None:
        index = index_by_number(records, {phones.region_of(e164) or phones.DEFAULT_REGION})
    by_type: dict[str, list[dict]] = {}
    for rtype, rec in index.get(e164, []):
        if rtype in cfg.match.objects:
            by_type.setdefault(rtype, []).append(rec)
    for rtype in cfg.match.objects:
        found = by_type.get(rtype)
        if not found:
            continue
        found.sort(key=lambda r: (r.get("CreatedDate") or "", r.get("Id") or ""),
                   reverse=cfg.match.multiple == "newest")
        rec = found[0]
        rid = rec.get("PersonContactId") if rtype == "PersonAccount" else rec.get("Id")
        return Link(rtype, rid)
    return None


def forget(store, e164: str) -> None:
    """Drop a remembered record (deleted or merged in Salesforce): the next write searches again."""
    store.put_contact(TARGET, e164, NONE, None, -1)


class Matcher:
    def __init__(self, cfg: SalesforceConfig, client: SalesforceClient):
        self.cfg = cfg
        self.client = client

    def resolve(self, numbers: list[str], store) -> dict[str, Link | Skip | WriteError]:
        """Each distinct number's record, or why there is none, with as few searches as possible."""
        out: dict[str, Link | Skip | WriteError] = {}
        todo: list[str] = []
        malformed = 0
        for n in dict.fromkeys(numbers):
            if phones.to_e164(n) != n:  # only well-formed E.164 numbers are looked up
                out[n] = Skip(f"the number {n!r} cannot be matched to a Salesforce record")
                malformed += 1
                continue
            cached = store.get_contact(TARGET, n)
            if cached is None or (cached["record_type"] == NONE
                                  and self.cfg.unknown_number.action != "skip"):
                todo.append(n)
            elif cached["record_type"] == NONE:
                out[n] = Skip(self._skip_reason(n))
            elif cached["record_type"] == CREATING:
                out[n] = TransientError(f"another worker is creating the record for {n}",
                                        retry_after=5)
            else:
                out[n] = Link(cached["record_type"], cached["record_id"])
        self.client.meter.lookups("cache", len(out) - malformed)
        self.client.meter.lookups("crm", len(todo))
        to_create: list[str] = []
        for chunk in self._chunks(todo):
            try:
                result = self.client.call("search/", params={"q": build_sosl(chunk, self.cfg.match.objects)})
            except WriteError as exc:
                out.update({n: exc for n in chunk})
                continue
            records = (result or {}).get("searchRecords", []) if isinstance(result, dict) else []
            index = index_by_number(records, {phones.region_of(n) or phones.DEFAULT_REGION for n in chunk})
            for n in chunk:
                found = self._found_or_unknown(n, pick(records, n, self.cfg, index), store)
                if found is None:
                    to_create.append(n)
                else:
                    out[n] = found
        if to_create:
            sobject = "Lead" if self.cfg.unknown_number.action == "create_lead" else "Contact"
            out.update(self._create(to_create, sobject, store))
        return out

    def _chunks(self, numbers: list[str]):
        chunk: list[str] = []
        size = 0
        for n in numbers:
            cost = len(escape_sosl(search_digits(n))) + 4
            if chunk and size + cost > MAX_SEARCH_QUERY:
                yield chunk
                chunk, size = [], 0
            chunk.append(n)
            size += cost
        if chunk:
            yield chunk

    def _skip_reason(self, n: str) -> str:
        return (f"no {' or '.join(self.cfg.match.objects)} has the phone number {n} "
                "(salesforce.unknown_number.action is skip)")

    def _found_or_unknown(self, n: str, link: Link | None, store) -> Link | Skip | None:
        """The record, or why there is none; None when one is to be created."""
        if link is not None:
            store.put_contact(TARGET, n, link.record_type, link.record_id, self.cfg.contact_cache_ttl)
            return link
        if self.cfg.unknown_number.action == "skip":
            if self.cfg.unknown_cache_ttl:
                store.put_contact(TARGET, n, NONE, None, self.cfg.unknown_cache_ttl)
            return Skip(self._skip_reason(n))
        return None

    def _create(self, numbers: list[str], sobject: str, store) -> dict[str, Link | WriteError]:
        """Create a record for each number: one lookup and one sObject Collections create
        per 200 numbers (a burst from new numbers costs two calls, not two per number)."""
        out: dict[str, Link | WriteError] = {}
        mine = []
        for n in numbers:
            # A remembered "no record" (from while the policy was skip) is taken over.
            if store.reserve_contact(TARGET, n, CREATING, CREATE_CLAIM_SECONDS, replaces=(NONE,)):
                mine.append(n)
            else:
                out[n] = TransientError(f"another worker is creating the record for {n}", retry_after=5)
        for i in range(0, len(mine), COLLECTION_SIZE):
            out.update(self._create_chunk(mine[i:i + COLLECTION_SIZE], sobject, store))
        return out

    def _new_record(self, n: str, sobject: str) -> dict:
        values = {"e164": n, "national": phones.national(n), "digits": phones.digits(n)}
        body = {}
        for name, tmpl in (self.cfg.unknown_number.fields or DEFAULT_NEW_FIELDS[sobject]).items():
            for key, val in values.items():
                tmpl = tmpl.replace("{" + key + "}", val)
            body[name] = tmpl
        return body

    def _create_chunk(self, numbers: list[str], sobject: str, store) -> dict[str, Link | WriteError]:
        bodies = {n: self._new_record(n, sobject) for n in numbers}

        def release(ns) -> None:
            for n in ns:
                store.put_contact(TARGET, n, CREATING, None, -1)

        try:
            # An earlier attempt may have created some with its answer lost, and search lags
            # creates: look for the exact numbers (SOQL reads the database, not the index).
            earlier = self._already_created(sobject, bodies)
        except WriteError as exc:
            release(numbers)
            return {n: exc for n in numbers}
        except BaseException:
            release(numbers)
            raise
        todo = [n for n in numbers if n not in earlier]
        answers: list = []
        if todo:
            try:
                answers = self.client.call("composite/sobjects", method="POST", json={
                    "allOrNone": False,
                    "records": [{"attributes": {"type": sobject}, **bodies[n]} for n in todo]})
            except (PermanentError, RateLimited) as exc:  # refused: nothing was created
                release(todo)
                answers = [exc] * len(todo)
            except WriteError as exc:
                # A timeout or 5xx after sending: Salesforce may still create them. The
                # markers stay (CREATE_CLAIM_SECONDS), then the lookup above finds them.
                answers = [exc] * len(todo)
            if not isinstance(answers, list) or len(answers) != len(todo):
                err = TransientError(f"Salesforce create of {len(todo)} {sobject} records: "
                                     f"unexpected answer {str(answers)[:200]}")
                answers = [err] * len(todo)
        out: dict[str, Link | WriteError] = {}
        created = dict(earlier)
        for n, answer in zip(todo, answers):
            if isinstance(answer, WriteError):
                out[n] = answer
            elif isinstance(answer, dict) and answer.get("success") and answer.get("id"):
                created[n] = answer["id"]
            else:
                release([n])
                out[n] = record_error(answer.get("errors") if isinstance(answer, dict) else answer)
        for n, record_id in created.items():
            out[n] = Link(sobject, record_id, created=True)
            store.put_contact(TARGET, n, sobject, record_id, self.cfg.contact_cache_ttl)
        return out

    def _already_created(self, sobject: str, bodies: dict[str, dict]) -> dict[str, str]:
        """Number -> Id of the oldest record of ``sobject`` with exactly that Phone."""
        by_phone = {b["Phone"]: n for n, b in bodies.items() if b.get("Phone")}
        if not by_phone:
            return {}
        soql = format_soql("SELECT Id, Phone FROM {:literal} WHERE Phone IN {}"
                           + (" AND IsConverted = false" if sobject == "Lead" else "")
                           + " ORDER BY CreatedDate, Id", sobject, list(by_phone))
        out: dict[str, str] = {}
        for rec in (self.client.call("query/", params={"q": soql}) or {}).get("records") or []:
            n = by_phone.get(rec.get("Phone"))
            if n is not None and n not in out:
                out[n] = rec["Id"]
        return out


def link_field(mapping, record_type: str = "Contact") -> str:
    """The lookup field that ties the record to a Contact/Lead (WhoId) or an Account (WhatId)."""
    who = mapping.options.get("who_field", "WhoId")
    if isinstance(who, dict) and record_type in who:
        return str(who[record_type] or "")
    if record_type == "Account":
        return str(mapping.options.get("what_field", "WhatId") or "")
    return "" if isinstance(who, dict) else str(who or "")
