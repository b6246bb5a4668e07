"""Find the Contact or Lead behind a phone number (SOSL IN PHONE FIELDS), or create one.

The search term is the number's national digits, and is escaped for SOSL anyway (defence
in depth: nothing from a phone ever reaches the query unescaped). Salesforce keeps phones
as typed, so every candidate is confirmed client-side by normalizing its phone fields to
E.164. Matches and created records are remembered in the store's contacts table, since
the search index lags creates by minutes; a burst from a new number creates one record,
whichever worker gets there first (an insert-if-absent marker row).
"""
from __future__ import annotations

from dataclasses import dataclass

from simple_salesforce.format import format_soql

from .. import phones
from ..config import SalesforceConfig
from .base import TransientError, WriteError
from .salesforce_client import SalesforceClient

TARGET = "salesforce"
SOSL_RESERVED = frozenset('?&|!{}[]()^~*:\\"\'+-')
MAX_SEARCH_QUERY = 3900  # Salesforce drops OR operators from FIND terms over 4,000 characters
CREATE_CLAIM_SECONDS = 120  # how long a "being created" marker holds off other workers
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
                numbers.update(phones.to_e164(value, region) for region in regions)
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
        for n in dict.fromkeys(numbers):
            if phones.to_e164(n) != n:  # only well-formed E.164 numbers are looked up
                out[n] = Skip(f"the number {n!r} cannot be matched to a Salesforce record")
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
        for chunk in self._chunks(todo):
            try:
                result = self.client.call("search/", params={"q": build_sosl(chunk, self.cfg.match.objects)})
            except WriteError as exc:
                out.update({n: exc for n in chunk})
                continue
            records = (result or {}).get("searchRecords", []) if isinstance(result, dict) else []
            index = index_by_number(records, {phones.region_of(n) or phones.DEFAULT_REGION for n in chunk})
            for n in chunk:
                out[n] = self._found_or_unknown(n, pick(records, n, self.cfg, index), store)
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

    def _found_or_unknown(self, n: str, link: Link | None, store) -> Link | Skip | WriteError:
        if link is not None:
            store.put_contact(TARGET, n, link.record_type, link.record_id, self.cfg.contact_cache_ttl)
            return link
        action = self.cfg.unknown_number.action
        if action == "skip":
            if self.cfg.unknown_cache_ttl:
                store.put_contact(TARGET, n, NONE, None, self.cfg.unknown_cache_ttl)
            return Skip(self._skip_reason(n))
        try:
            return self._create(n, "Lead" if action == "create_lead" else "Contact", store)
        except WriteError as exc:
            return exc

    def _create(self, n: str, sobject: str, store) -> Link:
        if not store.reserve_contact(TARGET, n, CREATING, CREATE_CLAIM_SECONDS):
            raise TransientError(f"another worker is creating the record for {n}", retry_after=5)
        values = {"e164": n, "national": phones.national(n), "digits": phones.digits(n)}
        fields = self.cfg.unknown_number.fields or DEFAULT_NEW_FIELDS[sobject]
        body = {}
        for name, tmpl in fields.items():
            for key, val in values.items():
                tmpl = tmpl.replace("{" + key + "}", val)
            body[name] = tmpl
        try:
            # An earlier attempt may have created it with its answer lost, and search lags
            # creates: look for the exact number (SOQL reads the database, not the index).
            found = self._already_created(sobject, body)
            if found:
                link = Link(sobject, found, created=True)
            else:
                result = self.client.call(f"sobjects/{sobject}/", method="POST", json=body)
                link = Link(sobject, result["id"], created=True)
        except BaseException:
            store.put_contact(TARGET, n, CREATING, None, -1)  # release the marker at once
            raise
        store.put_contact(TARGET, n, sobject, link.record_id, self.cfg.contact_cache_ttl)
        return link

    def _already_created(self, sobject: str, body: dict) -> str | None:
        if not body.get("Phone"):
            return None
        soql = format_soql("SELECT Id FROM {:literal} WHERE Phone = {}"
                           + (" AND IsConverted = false" if sobject == "Lead" else "")
                           + " ORDER BY CreatedDate, Id LIMIT 1", sobject, body["Phone"])
        records = (self.client.call("query/", params={"q": soql}) or {}).get("records") or []
        return records[0]["Id"] if records else None
