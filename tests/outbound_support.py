"""Shared set-up for outbound tests: a runtime whose Aircall API and media host are a
local fake server (pytest-httpserver), and helpers to run the sender and the pipeline."""
from __future__ import annotations

import copy
import json

import pytest
from werkzeug import Response

from connector.config import load_config
from connector.outbox import Outbox
from connector.runtime import Runtime
from connector.web import create_app
from tests.conftest import base_config
from tests.mms_samples import sample

LINE = "+14155550100"
LINE_ID = "476258"
TO = "+14155550142"
API_TOKEN = "api-secret-token"
HS_SECRET = "hubspot-client-secret"
ORG = "00D5e000000AbCdEAF"


def outbound_sections(httpserver, **overrides) -> dict:
    sections = {
        "aircall": {"api_base_url": httpserver.url_for("/v1"), "api_id": "ac-id", "api_token": "ac-token",
                    "send_read_timeout": 10, "send_max_wait": 0.05, "send_max_attempts": 3},
        "fetch": {"allow_http": True, "allow_networks": ["127.0.0.0/8"], "read_timeout": 1},
        "outbound": {"lines": [{"number": LINE, "id": int(LINE_ID)},
                               {"number": "+14155550111", "id": 9, "mms": False}],
                     "default_line": LINE, "api_tokens": [API_TOKEN],
                     "hubspot": {"client_secret": HS_SECRET},
                     "salesforce": {"organization_ids": [ORG]}},
    }
    for k, v in overrides.items():
        sections[k] = {**sections.get(k, {}), **v}
    return sections


@pytest.fixture
def ort(tmp_path, httpserver):
    """Runtime wired to the fake Aircall; ``ort.make(**overrides)`` for other configs."""
    def make(**overrides) -> Runtime:
        cfg = base_config(tmp_path, **outbound_sections(httpserver, **overrides))
        return Runtime(load_config(data=copy.deepcopy(cfg)))
    rt = make()
    rt.make = make
    return rt


@pytest.fixture
def oclient(ort):
    return create_app(ort.config, ort).test_client()


def serve_media(httpserver, name: str, kind: str, size: int = 1000) -> str:
    httpserver.expect_request(f"/media/{name}").respond_with_data(sample(kind, size))
    return httpserver.url_for(f"/media/{name}")


def aircall_message(msg_id: str = "SMout1", to: str = TO, text: str = "hi", status: str = "pending") -> dict:
    return {"id": msg_id, "status": status, "direction": "outbound", "created_at": 1722758201825,
            "direct_link": f"https://api.aircall.io/v1/numbers/{LINE_ID}/messages/{msg_id}",
            "raw_digits": to.lstrip("+"), "body": text,
            "number": {"id": int(LINE_ID), "digits": "+1 415-555-0100", "country": "US", "name": "Sales US"}}


def expect_send(httpserver, response=None, status: int = 200, headers=None, mode: str = "native"):
    path = f"/v1/numbers/{LINE_ID}/messages/native/send" if mode == "native" else \
        f"/v1/numbers/{LINE_ID}/messages/send"
    body = json.dumps(response if response is not None else aircall_message())
    httpserver.expect_oneshot_request(path, method="POST").respond_with_response(
        Response(body, status=status, headers=headers or {}, content_type="application/json"))


def send_requests(httpserver) -> list[dict]:
    """JSON bodies of the send requests the fake Aircall received, in order."""
    return [json.loads(r.get_data()) for r, _ in httpserver.log if r.path.endswith("/send")]


def outbox_rows(rt) -> list:
    return sorted(Outbox(rt.store).list(limit=1000), key=lambda m: m.id)
