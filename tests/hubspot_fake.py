"""A stateful fake HubSpot on pytest-httpserver, for tests and bench/crm_calls_hubspot.py.

It keeps contacts and communications, answers the endpoints the writer uses, checks the
request shapes HubSpot's API description requires (string property values, association
specs, filter operators, at most 5 filterGroups, at most 100 batch inputs), records every
request, and can be told to fail the next matching requests.
"""
from __future__ import annotations

import itertools
import json
import re
import threading
import time
from urllib.parse import quote
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

import phonenumbers
from werkzeug import Request, Response

OPERATORS = {"EQ", "NEQ", "LT", "LTE", "GT", "GTE", "BETWEEN", "IN", "NOT_IN", "HAS_PROPERTY",
             "NOT_HAS_PROPERTY", "CONTAINS_TOKEN", "NOT_CONTAINS_TOKEN"}
EPOCH = datetime(2024, 1, 1, tzinfo=timezone.utc)


def hubspot_error(status: int, message: str, category: str = "VALIDATION_ERROR", **extra) -> Response:
    body = {"status": "error", "message": message, "category": category,
            "correlationId": f"corr-{status}-{abs(hash(message)) % 10_000}", **extra}
    return Response(json.dumps(body), status=status, content_type="application/json")


def rate_limited(policy: str = "TEN_SECONDLY_ROLLING", retry_after: str | None = None) -> Response:
    msg = ("You have reached your daily limit." if policy == "DAILY"
           else "You have reached your ten_secondly_rolling limit.")
    resp = hubspot_error(429, msg, "RATE_LIMITS", errorType="RATE_LIMIT", policyName=policy)
    if retry_after is not None:
        resp.headers["Retry-After"] = retry_after
    return resp


def _calculated(raw: str | None) -> str | None:
    """Roughly what HubSpot puts in hs_searchable_calculated_*: national digits."""
    if not raw:
        return None
    try:
        num = phonenumbers.parse(raw, "US")
    except phonenumbers.NumberParseException:
        return None
    return phonenumbers.national_significant_number(num)


def _calculated_properties(props: dict) -> dict:
    out = {}
    for raw, calc in (("phone", "hs_searchable_calculated_phone_number"),
                      ("mobilephone", "hs_searchable_calculated_mobile_number")):
        value = _calculated(props.get(raw))
        if value:
            out[calc] = value
    return out


@dataclass
class Obj:
    id: str
    properties: dict
    created: datetime
    updated: datetime
    associations: list = field(default_factory=list)

    def json(self, wanted: list | None = None) -> dict:
        props = self.properties if wanted is None else {k: self.properties.get(k) for k in wanted}
        return {"id": self.id, "properties": props, "createdAt": self.created.isoformat(),
                "updatedAt": self.updated.isoformat(), "archived": False}


class FakeHubSpot:
    def __init__(self, server, token: str = "pat-test"):
        self.server = server
        self.tokens = {token}
        self.contacts: dict[str, Obj] = {}
        self.comms: dict[str, Obj] = {}
        self.requests: list[tuple[str, str, dict | None]] = []
        self.failures: list[tuple[str, str, Response, bool]] = []  # method, path regex, answer, then-run
        self.labels = {"contacts": [81, 82], "companies": [87], "deals": [85]}
        self.deals: dict[str, list[str]] = {}  # contact id -> associated deal ids
        self.batch_rejects: dict[str, str] = {}  # objectWriteTraceId -> validation message
        self.refresh_count = 0
        self.files: dict[str, dict] = {}  # file id -> folder, name, data, options (Files API)
        self.slow: dict[str, float] = {}  # path regex -> seconds to wait before answering
        self._ids = itertools.count(1001)
        self._tick = itertools.count(1)
        server.expect_request(re.compile(".*")).respond_with_handler(self.handle)

    @property
    def url(self) -> str:
        return self.server.url_for("/").rstrip("/")

    def add_contact(self, created_days: int = 0, modified_days: int = 0, **props) -> str:
        cid = str(next(self._ids))
        props = {k: str(v) for k, v in props.items()}
        props.update(_calculated_properties(props))
        self.contacts[cid] = Obj(cid, props, EPOCH + timedelta(days=created_days),
                                 EPOCH + timedelta(days=modified_days))
        return cid

    def fail_next(self, method: str, path: str, response: Response, times: int = 1,
                  then_run: bool = False) -> None:
        """Answer the next ``times`` matching requests with ``response`` (``then_run``:
        still perform them, as when HubSpot acted but the answer was lost)."""
        for _ in range(times):
            self.failures.append((method, path, response, then_run))

    def calls(self, method: str | None = None, path: str | None = None) -> list:
        return [r for r in self.requests
                if (method is None or r[0] == method) and (path is None or re.fullmatch(path, r[1]))]

    # -- routing ---------------------------------------------------------------------
    def handle(self, request: Request) -> Response:
        body = request.get_json(silent=True) if request.data else None
        if request.path == "/oauth/v1/token":
            body = dict(request.form)
        if request.path == "/files/v3/files":  # multipart: the form fields and the file part
            part = request.files.get("file")
            body = {**request.form, "file": part and (part.filename, part.mimetype, part.read())}
        self.requests.append((request.method, request.path, body))
        for path, seconds in self.slow.items():
            if re.fullmatch(path, request.path):
                time.sleep(seconds)
        for n, (method, path, resp, then_run) in enumerate(self.failures):
            if method == request.method and re.fullmatch(path, request.path):
                del self.failures[n]
                if then_run:
                    self._route(request, body)
                return resp
        if request.path != "/oauth/v1/token":
            auth = request.headers.get("Authorization", "")
            if auth.removeprefix("Bearer ") not in self.tokens:
                return hubspot_error(401, "Authentication credentials not found.", "INVALID_AUTHENTICATION")
        return self._route(request, body)

    def _route(self, request: Request, body) -> Response:
        m, p = request.method, request.path
        if p == "/oauth/v1/token" and m == "POST":
            return self._token(body)
        if m == "GET" and (g := re.fullmatch(r"/crm/v4/associations/communications/(\w+)/labels", p)):
            return _json({"results": [{"category": "HUBSPOT_DEFINED", "typeId": t, "label": None}
                                      for t in self.labels.get(g.group(1), [])]})
        if m == "POST" and p == "/crm/v4/associations/contacts/deals/batch/read":
            return _json({"status": "COMPLETE", "startedAt": EPOCH.isoformat(), "completedAt": EPOCH.isoformat(),
                          "results": [{"from": {"id": i["id"]}, "to": [
                              {"toObjectId": int(d), "associationTypes": [
                                  {"category": "HUBSPOT_DEFINED", "typeId": 4, "label": None}]}
                              for d in self.deals.get(i["id"], [])]}
                              for i in body["inputs"] if self.deals.get(i["id"])]})
        if m == "POST" and p == "/crm/v3/objects/contacts/search":
            return self._search(self.contacts, body)
        if m == "POST" and p == "/crm/v3/objects/contacts":
            return self._create(self.contacts, body, contact=True)
        if m == "POST" and p == "/crm/v3/objects/communications":
            return self._create(self.comms, body)
        if m == "POST" and p == "/crm/v3/objects/communications/search":
            return self._search(self.comms, body)
        if m == "POST" and p == "/crm/v3/objects/communications/batch/create":
            return self._batch_create(body)
        if m == "POST" and p == "/crm/v3/objects/contacts/batch/create":
            return self._batch_create(body, contact=True)
        if m == "POST" and p == "/crm/v3/objects/communications/batch/update":
            return self._batch_update(body)
        if m == "POST" and p == "/files/v3/files":
            return self._upload(body)
        if m == "PATCH" and (g := re.fullmatch(r"/crm/v3/objects/communications/(\d+)", p)):
            return self._update(g.group(1), body)
        return hubspot_error(404, f"no route {m} {p}", "OBJECT_NOT_FOUND")

    # -- endpoints -------------------------------------------------------------------
    def _upload(self, body) -> Response:
        """POST /files/v3/files as files.json describes it: a file part, folderPath or
        folderId, options (access required); RETURN_EXISTING answers an identical file
        already in the folder instead of storing a second one."""
        if not body.get("file") or not body["file"][0]:
            return hubspot_error(400, "Could not determine name from file")
        if not (body.get("folderPath") or body.get("folderId")):
            return hubspot_error(400, "folderId or folderPath is required")
        try:
            options = json.loads(body.get("options") or "")
        except ValueError:
            return hubspot_error(400, "options is not valid JSON")
        if options.get("access") not in ("PUBLIC_INDEXABLE", "PUBLIC_NOT_INDEXABLE", "PRIVATE"):
            return hubspot_error(400, f"invalid access {options.get('access')!r}")
        filename, mimetype, data = body["file"]
        folder = body.get("folderPath")
        if options.get("duplicateValidationStrategy") == "RETURN_EXISTING":
            for fid, f in self.files.items():
                if f["folder"] == folder and f["data"] == data:
                    return _json(self._file_json(fid), 200)
        fid = str(next(self._ids))
        self.files[fid] = {"folder": folder, "name": filename, "mimetype": mimetype, "data": data,
                           "options": options}
        return _json(self._file_json(fid), 201)

    def _file_json(self, fid: str) -> dict:
        f = self.files[fid]
        name, _, ext = f["name"].rpartition(".")
        stamp = EPOCH.isoformat()
        return {"id": fid, "name": name, "extension": ext, "access": f["options"]["access"],
                "size": len(f["data"]), "archived": False, "createdAt": stamp, "updatedAt": stamp,
                "path": f"{f['folder'].rstrip('/')}/{f['name']}",
                "url": "https://files.hubspot.example/hubfs/123" + quote(f"{f['folder'].rstrip('/')}/{f['name']}")}

    def _token(self, form) -> Response:
        if form.get("grant_type") != "refresh_token" or form.get("refresh_token") != "refresh-ok":
            return hubspot_error(400, "missing or unknown refresh token", "BAD_REFRESH_TOKEN")
        self.refresh_count += 1
        token = f"oauth-{self.refresh_count}"
        self.tokens.add(token)
        return _json({"access_token": token, "refresh_token": "refresh-ok", "expires_in": 1800,
                      "token_type": "bearer"})

    def _check_input(self, body, contact: bool = False) -> str | None:
        if not isinstance(body, dict) or not isinstance(body.get("properties"), dict):
            return "properties: required object"
        for k, v in body["properties"].items():
            if not isinstance(v, str):
                return f"properties.{k}: must be a string"
        for a in body.get("associations") or []:
            types = a.get("types") or []
            if not isinstance(a.get("to", {}).get("id"), str) or not types:
                return "associations: each needs to.id (string) and types"
            for t in types:
                if t.get("associationCategory") not in ("HUBSPOT_DEFINED", "USER_DEFINED", "INTEGRATOR_DEFINED") \
                        or not isinstance(t.get("associationTypeId"), int):
                    return "associations.types: associationCategory and integer associationTypeId required"
        if not contact:
            props = body["properties"]
            if props.get("hs_communication_channel_type") not in ("SMS", "WHATS_APP", "LINKEDIN_MESSAGE"):
                return "hs_communication_channel_type: invalid"
            if props.get("hs_communication_logged_from") != "CRM":
                return "hs_communication_logged_from: must be CRM"
            if not props.get("hs_timestamp"):
                return "hs_timestamp: required"
        return None

    def _new(self, store: dict, body: dict, contact: bool) -> Obj:
        now = EPOCH + timedelta(days=400, seconds=next(self._tick))
        oid = str(next(self._ids))
        props = dict(body["properties"])
        if contact:
            props.update(_calculated_properties(props))
        assoc = [(a["to"]["id"], a["types"][0]["associationTypeId"]) for a in body.get("associations") or []]
        store[oid] = Obj(oid, props, now, now, assoc)
        return store[oid]

    def _create(self, store, body, contact: bool = False) -> Response:
        problem = self._check_input(body, contact)
        if problem:
            return hubspot_error(400, f"Property values were not valid: {problem}")
        return _json(self._new(store, body, contact).json(), 201)

    def _update(self, oid: str, body) -> Response:
        if oid not in self.comms:
            return hubspot_error(404, f"Object not found. objectId are usually numeric. ({oid})", "OBJECT_NOT_FOUND")
        if not isinstance(body, dict) or not isinstance(body.get("properties"), dict) or \
                not all(isinstance(v, str) for v in body["properties"].values()):
            return hubspot_error(400, "Property values were not valid")
        obj = self.comms[oid]
        obj.properties.update(body["properties"])
        obj.updated = obj.updated + timedelta(seconds=1)
        return _json(obj.json())

    def _batch_create(self, body, contact: bool = False) -> Response:
        inputs = (body or {}).get("inputs") or []
        if not 1 <= len(inputs) <= 100:
            return hubspot_error(400, "inputs: between 1 and 100 required")
        results, errors = [], []
        for inp in inputs:
            trace = inp.get("objectWriteTraceId")
            problem = self._check_input(inp, contact) or self.batch_rejects.get(trace)
            if problem:
                errors.append({"status": "error", "category": "VALIDATION_ERROR", "message": problem,
                               "context": {"objectWriteTraceId": [trace]}})
                continue
            store = self.contacts if contact else self.comms
            results.append(dict(self._new(store, inp, contact).json(), objectWriteTraceId=trace))
        out = {"status": "COMPLETE", "results": results, "startedAt": EPOCH.isoformat(),
               "completedAt": EPOCH.isoformat()}
        if errors:
            out.update(errors=errors, numErrors=len(errors))
            return _json(out, 207)
        return _json(out, 201)

    def _batch_update(self, body) -> Response:
        inputs = (body or {}).get("inputs") or []
        if not 1 <= len(inputs) <= 100:
            return hubspot_error(400, "inputs: between 1 and 100 required")
        results, errors = [], []
        for inp in inputs:
            obj = self.comms.get(str(inp.get("id")))
            if obj is None:
                errors.append({"status": "error", "category": "OBJECT_NOT_FOUND",
                               "message": "Object not found", "context": {"ids": [str(inp.get("id"))]}})
                continue
            obj.properties.update(inp.get("properties") or {})
            results.append(obj.json())
        out = {"status": "COMPLETE", "results": results, "startedAt": EPOCH.isoformat(),
               "completedAt": EPOCH.isoformat()}
        if errors:
            out.update(errors=errors, numErrors=len(errors))
            return _json(out, 207)
        return _json(out, 200)

    def _search(self, store: dict, body) -> Response:
        groups = (body or {}).get("filterGroups") or []
        if len(groups) > 5:
            return hubspot_error(400, "Too many filter groups: at most 5")
        for g in groups:
            for f in g.get("filters") or []:
                if f.get("operator") not in OPERATORS:
                    return hubspot_error(400, f"Invalid operator {f.get('operator')}")
                if f["operator"] in ("IN", "NOT_IN") and not isinstance(f.get("values"), list):
                    return hubspot_error(400, "IN needs values")
        hits = [o for o in store.values() if not groups or any(
            all(_filter(o, f) for f in g.get("filters") or []) for g in groups)]
        hits.sort(key=lambda o: int(o.id))
        start = int(body.get("after") or 0)
        limit = int(body.get("limit") or 10)
        page = hits[start:start + limit]
        out = {"total": len(hits), "results": [o.json(body.get("properties")) for o in page]}
        if start + limit < len(hits):
            out["paging"] = {"next": {"after": str(start + limit)}}
        return _json(out)


def _filter(obj: Obj, f: dict) -> bool:
    name, op = f["propertyName"], f["operator"]
    if name == "associations.contact":
        values = {cid for cid, _ in obj.associations}
        return op == "EQ" and f.get("value") in values
    value = obj.properties.get(name)
    if op == "EQ":
        return value is not None and value == f.get("value")
    if op == "IN":
        return value is not None and value in f.get("values", [])
    return False


def _json(data, status: int = 200) -> Response:
    return Response(json.dumps(data), status=status, content_type="application/json")


class LimitedHubSpot(FakeHubSpot):
    """Answers after ``latency`` seconds; more than ``limit`` requests in any ``window``
    seconds get HubSpot's TEN_SECONDLY_ROLLING 429 (and are counted)."""

    def __init__(self, server, limit: int = 100, window: float = 10, latency: float = 0.1):
        super().__init__(server)
        self.limit, self.window, self.latency = limit, window, latency
        self.arrivals: deque[float] = deque()
        self.too_many = 0
        self.lock = threading.Lock()
        self.peak = 0

    def handle(self, request):
        with self.lock:
            now = time.monotonic()
            while self.arrivals and self.arrivals[0] <= now - self.window:
                self.arrivals.popleft()
            limited = len(self.arrivals) >= self.limit
            if limited:
                self.too_many += 1
            else:
                self.arrivals.append(now)
                self.peak = max(self.peak, len(self.arrivals))
        time.sleep(self.latency)
        if limited:
            return rate_limited("TEN_SECONDLY_ROLLING")
        with self.lock:
            return super().handle(request)
