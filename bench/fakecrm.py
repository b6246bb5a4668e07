"""A fake CRM on loopback and a writer that talks to it, for fault tests and the soak.

The server takes HubSpot-shaped Communications requests (the bodies the real
``connector.crm.hubspot.render`` produces) and can be told to misbehave: answer 503,
answer 503 *after* storing the entry (the ambiguous failure), answer 429 with a
Retry-After, or hang on a create until released (so a test can SIGKILL the worker in
the middle of the write). It records every request with its arrival time and notes any
request that arrives while a Retry-After it gave is still running.

``HttpWriter`` is a minimal live writer for it, with the same idempotency protocol a
real writer needs where the CRM has no idempotency key: an intent row before the
create, and on a later attempt a search by our message id before creating again.
"""
from __future__ import annotations

import json
import random
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import requests

from connector.crm import hubspot
from connector.crm.base import Outcome, PermanentError, RateLimited, TransientError
from connector.events import status_advances

BASE_PATH = "/crm/v3/objects/communications"


class FakeCRM:
    def __init__(self, seed: int = 0):
        self.lock = threading.Lock()
        self.entries: dict[str, dict] = {}  # id -> {"external_id", "properties", "created_at"}
        self.requests: list[tuple[float, str, str, int]] = []  # (monotonic time, method, path, status)
        self.violations: list[str] = []
        self.blocked_until = 0.0
        self.script: list[tuple[int, float | None, bool]] = []  # next answers: (status, retry_after, store first)
        self.fail_rate = 0.0  # random 503s (half of them after storing: ambiguous)
        self.down_until = 0.0  # monotonic time until which every request gets 503
        self.rng = random.Random(seed)
        self.hang_create = None  # "before" | "after": hang the next create, before/after storing it
        self.hung = threading.Event()  # set when a create is hanging
        self.release = threading.Event()
        self.next_id = 1000
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.release.set()
        self.server.shutdown()
        self.server.server_close()

    # -- what tests look at ----------------------------------------------------------
    def by_external_id(self) -> dict[str, list[dict]]:
        with self.lock:
            out: dict[str, list[dict]] = {}
            for e in self.entries.values():
                out.setdefault(e["external_id"], []).append(e)
            return out

    def down_for(self, seconds: float) -> None:
        """Answer 503 to everything for a while (half the creates stored anyway)."""
        self.down_until = time.monotonic() + seconds

    def fail_next(self, n: int, status: int = 503, retry_after: float | None = None,
                  store_first: bool = False) -> None:
        with self.lock:
            self.script.extend([(status, retry_after, store_first)] * n)

    # -- the server ------------------------------------------------------------------
    def _handler(self):
        crm = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _send(self, status: int, body: dict | None = None, headers: dict | None = None):
                data = json.dumps(body or {}).encode()
                try:
                    self.send_response(status)
                    for k, v in (headers or {}).items():
                        self.send_header(k, v)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:  # the client was killed meanwhile
                    pass
                with crm.lock:
                    crm.requests.append((time.monotonic(), self.command, self.path, status))

            def _body(self) -> dict | None:
                """The JSON body; None when the client died before sending all of it
                (a real CRM never acts on a cut-off request)."""
                n = int(self.headers.get("Content-Length") or 0)
                data = self.rfile.read(n)
                if len(data) < n or not data:
                    return None
                return json.loads(data)

            def _store(self, body: dict) -> str:
                with crm.lock:
                    crm.next_id += 1
                    oid = str(crm.next_id)
                    crm.entries[oid] = {"id": oid, "external_id": body.get("external_id"),
                                        "properties": dict(body.get("properties", {})),
                                        "associations": body.get("associations")}
                return oid

            def _fault(self, body: dict | None) -> bool:
                """Apply the next scripted or random fault; True when answered."""
                now = time.monotonic()
                with crm.lock:
                    if now < crm.blocked_until:
                        crm.violations.append(f"{self.command} {self.path} {crm.blocked_until - now:.3f}s early")
                    fault = crm.script.pop(0) if crm.script else None
                    if fault is None and now < crm.down_until:
                        fault = (503, None, crm.rng.random() < 0.5)
                    if fault is None and crm.fail_rate and crm.rng.random() < crm.fail_rate:
                        fault = (503, None, crm.rng.random() < 0.5)
                    if fault and fault[0] == 429:
                        crm.blocked_until = now + (fault[1] or 0)
                if fault is None:
                    return False
                status, retry_after, store_first = fault
                if store_first and body is not None and self.command == "POST" and self.path == BASE_PATH:
                    self._store(body)
                headers = {"Retry-After": f"{retry_after:g}"} if retry_after is not None else None
                self._send(status, {"status": "error", "message": f"fake CRM says {status}"}, headers)
                return True

            def do_GET(self):
                u = urlparse(self.path)
                if u.path != BASE_PATH + "/search":
                    return self._send(404)
                if self._fault(None):
                    return
                ext = parse_qs(u.query).get("external_id", [""])[0]
                with crm.lock:
                    found = [e["id"] for e in crm.entries.values() if e["external_id"] == ext]
                self._send(200, {"results": [{"id": i} for i in found]})

            def do_POST(self):
                if self.path != BASE_PATH:
                    return self._send(404)
                body = self._body()
                if body is None or not body.get("external_id"):
                    return self._send(400, {"message": "cut-off body or no external_id"})
                if self._fault(body):
                    return
                hang, crm.hang_create = crm.hang_create, None
                if hang == "before":
                    crm.hung.set()
                    crm.release.wait()
                    return  # the worker died: nobody is listening
                oid = self._store(body)
                if hang == "after":
                    crm.hung.set()
                    crm.release.wait()
                    return
                self._send(201, {"id": oid, "properties": body.get("properties", {})})

            def do_PATCH(self):
                if not self.path.startswith(BASE_PATH + "/"):
                    return self._send(404)
                body = self._body()
                if body is None:
                    return self._send(400, {"message": "cut-off body"})
                if self._fault(body):
                    return
                oid = self.path.rsplit("/", 1)[1]
                with crm.lock:
                    entry = crm.entries.get(oid)
                    if entry is not None:
                        entry["properties"].update(body.get("properties", {}))
                if entry is None:
                    return self._send(404, {"message": f"no object {oid}"})
                self._send(200, {"id": oid})

        return Handler


class HttpWriter:
    """A live writer for FakeCRM: the real HubSpot rendering, an idempotent create."""

    def __init__(self, name: str, base_url: str, mapping, timeout: float = 30):
        self.name = name
        self.base_url = base_url.rstrip("/")
        self.mapping = mapping
        self.session = requests.Session()
        self.timeout = timeout

    def _call(self, method: str, path: str, body: dict | None = None) -> dict:
        try:
            r = self.session.request(method, self.base_url + path, json=body, timeout=self.timeout)
        except requests.RequestException as exc:
            raise TransientError(f"fake CRM unreachable: {type(exc).__name__}") from exc
        if r.status_code == 429:
            raise RateLimited("fake CRM 429", retry_after=float(r.headers.get("Retry-After") or 1))
        if r.status_code >= 500:
            raise TransientError(f"fake CRM {r.status_code}")
        if r.status_code >= 400:
            raise PermanentError(f"fake CRM {r.status_code}: {r.text[:200]}")
        return r.json()

    def deliver(self, event, ctx) -> Outcome:
        store = ctx.store
        rec = store.get_record(self.name, event.message_id)
        if rec and rec["object_id"]:
            if not status_advances(rec["status"], event.status):
                return Outcome("delivered", result={"unchanged": f"entry already shows status {rec['status']}"})
            req = hubspot.render(event, ctx, "update", self.mapping, object_id=rec["object_id"])
            self._call("PATCH", req["path"], req["body"])
            store.save_record(self.name, event.message_id, object_type="communications",
                              object_id=rec["object_id"], status=event.status)
            return Outcome("delivered", rendered=req, result={"operation": "update", "id": rec["object_id"]})
        if rec is not None:
            # An earlier attempt may have created it before dying: look before creating.
            found = self._call("GET", f"{BASE_PATH}/search?external_id={event.message_id}")["results"]
            if found:
                oid = found[0]["id"]
                store.save_record(self.name, event.message_id, object_type="communications",
                                  object_id=oid, status=event.status)
                return Outcome("delivered", result={"operation": "adopted", "id": oid})
        else:
            store.save_record(self.name, event.message_id, object_type="communications",
                              object_id=None, status=None)  # intent: a create may be in flight
        req = hubspot.render(event, ctx, "create", self.mapping, contact_id="fake-contact")
        created = self._call("POST", req["path"], {**req["body"], "external_id": event.message_id})
        store.save_record(self.name, event.message_id, object_type="communications",
                          object_id=created["id"], status=event.status)
        return Outcome("delivered", rendered=req, result={"operation": "create", "id": created["id"]})
