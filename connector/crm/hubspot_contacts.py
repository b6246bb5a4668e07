"""HubSpot contact matching by phone, with the per-number cache and the create claim.

One search request finds the contacts of one or many numbers: a filterGroup per
matching property (ORed), EQ for one number, IN for several. ``phone`` and
``mobilephone`` hold whatever was typed, so they are searched as E.164; HubSpot's
``hs_searchable_calculated_*`` properties hold its own normalized digits without the
country code, so "(415) 555-0142", "+1 415 555 0142" and "4155550142" are all found by
the national digits. Those digits are the same for +1 207 183 8750 and +44 20 7183 8750,
so every hit, even a lone one, is accepted only if one of its typed numbers normalizes
to the searched E.164 (a number typed without country code is read in the searched
number's country).

Matches and created contacts are remembered per number in the store's contacts table
(HubSpot's search lags behind creates). Creating is claimed first with a "creating"
row inserted only when no live row exists, so two workers handling a burst from one new
number create one contact: the loser waits for the winner's row.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timezone

import phonenumbers

from .. import phones
from ..config import HubSpotConfig
from .base import PermanentError, TransientError, WriteError
from .hubspot_api import Ambiguous, HubSpotApi, InputRefused, errors_by_key

NAME = "hubspot"
CONTACT, CREATING, NONE = "contact", "creating", "none"
# A contact just created is remembered at least this long, whatever contact_cache_ttl says:
# HubSpot's search shows it only seconds later, and a second text from the number must not
# create it again.
CREATED_TTL = 60
SEARCH_CHUNK = 50  # numbers per search request (IN values)
READ_PROPERTIES = ["createdate", "lastmodifieddate", "associatedcompanyid"]
TYPED_PROPERTIES = ["phone", "mobilephone"]  # what HubSpot derives its calculated numbers from
CALCULATED = "hs_searchable_calculated_"


@dataclass(frozen=True)
class Contact:
    id: str
    company_id: str | None = None
    deal_id: str | None = None
    created: bool = False

    def encode(self) -> str:  # the contacts table keeps one id column: "contact/company/deal"
        return "/".join([self.id, self.company_id or "", self.deal_id or ""]).rstrip("/")

    @classmethod
    def decode(cls, value: str) -> "Contact":
        cid, company, deal = (value.split("/") + ["", ""])[:3]
        return cls(cid, company or None, deal or None)


@dataclass(frozen=True)
class Unmatched:
    reason: str


def _search_value(prop: str, number: str) -> str:
    """What a property holds for this number: E.164, or HubSpot's calculated digits."""
    if prop.startswith(CALCULATED):
        if "international" in prop:
            return phones.digits(number)
        return phones.national_digits(number)
    return number


def search_body(cfg: HubSpotConfig, numbers: list[str], after: str | None = None) -> dict:
    """The contacts search request for these E.164 numbers (one filterGroup per property)."""
    groups = []
    for prop in cfg.match_properties:
        values = list(dict.fromkeys(_search_value(prop, n) for n in numbers))
        if len(values) == 1:
            groups.append({"filters": [{"propertyName": prop, "operator": "EQ", "value": values[0]}]})
        else:
            groups.append({"filters": [{"propertyName": prop, "operator": "IN", "values": values}]})
    # "sorts" and "after" are required by HubSpot's published schema for this request.
    return {"filterGroups": groups,
            "properties": list(dict.fromkeys(TYPED_PROPERTIES + cfg.match_properties + READ_PROPERTIES)),
            "sorts": [], "limit": 100, "after": after or "0"}


def numbers_of(cfg: HubSpotConfig, props: dict | None, region: str) -> set[str]:
    """The E.164 numbers a found contact has, country code included: its typed numbers
    read in ``region`` when they have none."""
    out = set()
    for prop in dict.fromkeys(TYPED_PROPERTIES + cfg.match_properties):
        value = (props or {}).get(prop)
        if not value:
            continue
        if prop.startswith(CALCULATED):  # national digits say nothing of the country
            if "international" in prop:
                out.add("+" + phones.digits(value))
        elif number := phones.to_e164(value, region, typed=True):
            out.add(number)
    return out


def _region(number: str) -> str:
    """The country a number typed without country code is read in for this E.164 number
    (by its calling code when phonenumbers does not know the number: +44 stays GB)."""
    try:
        code = phonenumbers.parse(number, None).country_code
    except phonenumbers.NumberParseException:
        return phones.DEFAULT_REGION
    return phones.region_of(number) or phonenumbers.region_code_for_country_code(code)


def _when(obj, attr: str, prop: str) -> float:
    value = getattr(obj, attr, None)
    if isinstance(value, datetime):
        return value.timestamp()
    raw = (obj.properties or {}).get(prop)
    if raw:
        try:
            return datetime.fromisoformat(str(raw).replace("Z", "+00:00")).timestamp()
        except ValueError:
            pass
    return datetime.max.replace(tzinfo=timezone.utc).timestamp() if attr == "created_at" else 0.0


def pick(rule: str, candidates: list):
    """The one contact a message goes to when several share the number: deterministic."""
    def num(c) -> int:
        return int(c.id) if str(c.id).isdigit() else 0
    if rule == "newest":
        return max(candidates, key=lambda c: (_when(c, "created_at", "createdate"), num(c)))
    if rule == "last_modified":
        return max(candidates, key=lambda c: (_when(c, "updated_at", "lastmodifieddate"), num(c)))
    return min(candidates, key=lambda c: (_when(c, "created_at", "createdate"), num(c)))


class ContactMatcher:
    def __init__(self, api: HubSpotApi, cfg: HubSpotConfig, wait_for_creator: float = 3.0,
                 poll: float = 0.1):
        self.api = api
        self.cfg = cfg
        self.wait_for_creator = wait_for_creator
        self.poll = poll

    def resolve(self, store, numbers: list[str]) -> dict[str, Contact | Unmatched | WriteError]:
        """Each number's contact, the reason it has none, or the error that stopped us."""
        out: dict[str, Contact | Unmatched | WriteError] = {}
        misses = []
        for n in dict.fromkeys(numbers):
            hit = store.get_contact(NAME, n)
            if hit and hit["record_type"] == CONTACT and hit["record_id"]:
                out[n] = Contact.decode(hit["record_id"])
            elif hit and hit["record_type"] == NONE and self.cfg.unknown_number.action == "skip":
                out[n] = self._unmatched(n)
            elif hit and hit["record_type"] == CREATING:
                out[n] = self._await_creator(store, n)
            else:
                misses.append(n)
        self.api.meter.lookups("cache", len(out))
        self.api.meter.lookups("crm", len(misses))
        to_create: list[str] = []
        for i in range(0, len(misses), SEARCH_CHUNK):
            chunk = misses[i:i + SEARCH_CHUNK]
            try:
                found = self._search(chunk)
            except WriteError as exc:
                out.update({n: exc for n in chunk})
                continue
            chosen = {n: pick(self.cfg.multiple_matches, found[n]) for n in chunk if found.get(n)}
            try:
                deals = self._latest_deals([str(c.id) for c in chosen.values()])
            except WriteError as exc:
                out.update({n: exc for n in chunk})
                continue
            for n in chunk:
                if n in chosen:
                    c = chosen[n]
                    company = (c.properties or {}).get("associatedcompanyid") or None
                    out[n] = Contact(str(c.id), company, deals.get(str(c.id)))
                    store.put_contact(NAME, n, CONTACT, out[n].encode(), self.cfg.contact_cache_ttl)
                elif self.cfg.unknown_number.action == "skip":
                    store.put_contact(NAME, n, NONE, None, self.cfg.unmatched_cache_ttl)
                    out[n] = self._unmatched(n)
                else:
                    to_create.append(n)
        out.update(self._create(store, to_create))
        return out

    def _unmatched(self, number: str) -> Unmatched:
        return Unmatched(f"no HubSpot contact has the number {number} "
                         "(hubspot.unknown_number.action is skip)")

    def _search(self, numbers: list[str]) -> dict[str, list]:
        found: dict[str, list] = {n: [] for n in numbers}
        by_region: dict[str, list[str]] = {}
        for n in numbers:
            by_region.setdefault(_region(n), []).append(n)
        after = None
        while True:
            res = self.api.call(self.api.contacts_search.do_search,
                                public_object_search_request=search_body(self.cfg, numbers, after),
                                search=True)
            for c in res.results or []:  # HubSpot ORs the filters of all numbers and properties
                for region, wanted in by_region.items():
                    has = numbers_of(self.cfg, c.properties, region)
                    for n in wanted:
                        if n in has:
                            found[n].append(c)
            nxt = getattr(getattr(res, "paging", None), "next", None)
            after = getattr(nxt, "after", None)
            if not after:
                return found

    def _latest_deals(self, contact_ids: list[str]) -> dict[str, str]:
        """Each contact's most recently created deal (highest id), one batch read per 100."""
        if not self.cfg.associate_deal or not contact_ids:
            return {}
        out: dict[str, str] = {}
        for i in range(0, len(contact_ids), 100):
            res = self.api.call(self.api.assoc_batch.get_page, "contacts", "deals",
                                batch_input_public_fetch_associations_batch_request={
                                    "inputs": [{"id": c} for c in contact_ids[i:i + 100]]})
            for row in res.results or []:
                ids = [str(t.to_object_id) for t in row.to or []]
                if ids:
                    out[str(row._from.id)] = max(ids, key=lambda x: (len(x), x))
        return out

    def _await_creator(self, store, number: str) -> Contact | WriteError:
        deadline = time.monotonic() + self.wait_for_creator
        while time.monotonic() < deadline:
            time.sleep(self.poll)
            hit = store.get_contact(NAME, number)
            if hit and hit["record_type"] == CONTACT and hit["record_id"]:
                return Contact.decode(hit["record_id"])
            if not hit or hit["record_type"] != CREATING:
                break
        # Not a HubSpot limit (RateLimited would pause every delivery): an ordinary retry.
        return TransientError(f"the HubSpot contact for {number} is being created by another worker",
                              retry_after=2.0)

    def _create(self, store, numbers: list[str]) -> dict[str, Contact | WriteError]:
        """Create a contact for each number: one batch create per 100 (a burst from new
        numbers costs a call per hundred, not per number)."""
        out: dict[str, Contact | WriteError] = {}
        inputs, contended = [], []
        for n in numbers:
            # The marker lives as long as HubSpot's search may lag a create whose answer was lost.
            if not store.reserve_contact(NAME, n, CREATING, CREATED_TTL, replaces=(NONE,)):
                contended.append(n)  # waited for below, once ours are created
                continue
            props = self._new_contact(n)
            if isinstance(props, WriteError):
                store.drop_contact(NAME, n)
                out[n] = props
            else:
                inputs.append({"properties": props, "associations": [], "objectWriteTraceId": n})
        for i in range(0, len(inputs), 100):
            out.update(self._create_chunk(store, inputs[i:i + 100]))
        for n in contended:
            out[n] = self._await_creator(store, n)
        return out

    def _new_contact(self, number: str) -> dict | WriteError:
        names = {"e164": number, "national": phones.national(number),
                 "international": phones.international(number)}
        props = {"phone": number}
        try:
            for key in ("firstname", "lastname"):
                value = getattr(self.cfg.unknown_number, key).format(**names).strip()
                if value:
                    props[key] = value
        except (KeyError, IndexError, ValueError) as exc:
            return PermanentError(f"hubspot.unknown_number: bad name template ({exc})")
        return props

    def _create_chunk(self, store, inputs: list[dict]) -> dict[str, Contact | WriteError]:
        numbers = [inp["objectWriteTraceId"] for inp in inputs]
        try:
            res = self.api.call(self.api.contacts_batch.create, idempotent=False,
                                batch_input_simple_public_object_batch_input_for_create={"inputs": inputs})
        except Ambiguous as exc:
            return {n: exc for n in numbers}  # they may exist: the markers expire after search catches up
        except InputRefused as exc:
            if len(inputs) > 1:  # HubSpot refuses a whole batch for one bad input: find it
                out: dict[str, Contact | WriteError] = {}
                for inp in inputs:
                    out.update(self._create_chunk(store, [inp]))
                return out
            store.drop_contact(NAME, numbers[0])
            return {numbers[0]: exc}
        except WriteError as exc:  # not created (refused before any work, 401/403 whoever asks):
            # free to try again
            for n in numbers:
                store.drop_contact(NAME, n)
            return {n: exc for n in numbers}
        created = {r.object_write_trace_id: r for r in res.results or [] if r.object_write_trace_id}
        errors = errors_by_key(getattr(res, "errors", None))
        out = {}
        for n in numbers:
            if n in created:
                out[n] = Contact(str(created[n].id), created=True)
                store.put_contact(NAME, n, CONTACT, out[n].encode(), max(self.cfg.contact_cache_ttl, CREATED_TTL))
            elif n in errors:  # HubSpot refused this one: not created
                store.drop_contact(NAME, n)
                out[n] = errors[n]
            else:  # left out of the answer: maybe created; the marker holds until search shows it
                out[n] = Ambiguous(f"HubSpot's batch answer does not mention the contact for {n}",
                                   retry_after=60)
        return out
