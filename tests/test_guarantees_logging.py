"""Secrets never reach logs; one log line per decision, carrying the ids."""
from __future__ import annotations

import io
import json
import logging
import sys

import pytest
import requests

from connector.config import load_config
from connector.logs import REDACTED, Redactor, config_secrets, make_formatter
from connector.store import Store
from tests.conftest import ROOT, aircall_payload
from tests.procs import free_port, start, stop, wait_for, wait_http, write_config

SECRETS = {
    "webhook_token": "whk-7f3a9c1e-live-token",
    "webhook_token_rotated": "whk-rotated-22b8d0aa41",
    "aircall_api_token": "acl-api-5e2d7c11f0b9",
    "aircall_oauth": "acl-oauth-9d8c7b6a5f4e",
    "hubspot_access": "pat-na1-3b5c7d9e-1a2b-4c6d-8e0f-abcdef123456",
    "hubspot_client_secret": "hs-client-secret-0c1d2e3f",
    "hubspot_refresh": "hs-refresh-4f5e6d7c8b9a",
    "salesforce_password": "sf-pass-Zq81!x",
    "salesforce_security_token": "sf-sectok-7Hk2LmN9pQ",
    "api_token": "api-bearer-51c0ffee77",
    "api_token_rotated": "api-bearer-rotated-9a9a9a",
    "outbound_hubspot_secret": "hs-app-secret-for-signatures-1f",
    "salesforce_url_token": "sf-om-url-token-3e4d",
}
PRESIGNED = "X-Amz-Signature="


def _config(tmp_path, json_lines: bool, port: int) -> dict:
    return {
        "server": {"host": "127.0.0.1", "port": port, "max_body_bytes": 65536},
        "store": {"url": f"sqlite:///{tmp_path / 'c.db'}"},
        "worker": {"poll_interval": 0.05},
        "aircall": {"webhook_tokens": [SECRETS["webhook_token"], SECRETS["webhook_token_rotated"]],
                    "api_id": "acl-id", "api_base_url": f"http://127.0.0.1:{port}/no-aircall-here", "api_token": SECRETS["aircall_api_token"],
                    "oauth_token": SECRETS["aircall_oauth"]},
        "hubspot": {"mode": "dry-run", "mapping": str(ROOT / "mappings" / "hubspot.yaml"),
                    "access_token": SECRETS["hubspot_access"],
                    "client_secret": SECRETS["hubspot_client_secret"],
                    "refresh_token": SECRETS["hubspot_refresh"]},
        "salesforce": {"mode": "dry-run", "mapping": str(ROOT / "mappings" / "salesforce.yaml"),
                       "username": "integration@acme.test", "password": SECRETS["salesforce_password"],
                       "security_token": SECRETS["salesforce_security_token"]},
        "outbound": {"api_tokens": [SECRETS["api_token"], SECRETS["api_token_rotated"]],
                     "hubspot": {"client_secret": SECRETS["outbound_hubspot_secret"]},
                     "salesforce": {"organization_ids": ["00D5e000000AbCdEAF"],
                                    "token": SECRETS["salesforce_url_token"]}},
        "logging": {"level": "DEBUG", "json": json_lines},
    }


@pytest.mark.parametrize("json_lines", [False, True], ids=["plain", "json"])
def test_real_traffic_logs_no_secret(tmp_path, json_lines):
    port = free_port()
    cfg = write_config(tmp_path / "config.yaml", _config(tmp_path, json_lines, port))
    log_path = tmp_path / "server.log"
    proc = start(["serve", "--config", str(cfg)], log_path)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http(base + "/healthz", proc)
        hook = base + "/webhooks/aircall"
        codes = [
            requests.post(hook, json=aircall_payload("mms_received", SECRETS["webhook_token"])).status_code,
            requests.post(hook, json=aircall_payload("mms_received", SECRETS["webhook_token"])).status_code,
            requests.post(hook, json=aircall_payload("sms_received", SECRETS["webhook_token_rotated"])).status_code,
            requests.post(hook, json=aircall_payload("call_created", SECRETS["webhook_token"])).status_code,
            # A sender who got one character wrong, and one who sends the API token.
            requests.post(hook, json=aircall_payload("sms_received", SECRETS["webhook_token"] + "x")).status_code,
            requests.post(hook, json=aircall_payload("sms_received", SECRETS["aircall_api_token"])).status_code,
            requests.post(hook, data=json.dumps({"token": SECRETS["webhook_token"], "event": "message.received",
                                                 "data": {"id": 5}}),
                          headers={"Authorization": f"Bearer {SECRETS['hubspot_access']}"}).status_code,
            requests.post(hook, data="x" * 70000, headers={"Authorization": f"Bearer {SECRETS['hubspot_access']}"}).status_code,
        ]
        assert codes == [200, 200, 200, 200, 401, 401, 400, 413]
        api = base + "/api/v1/messages"
        msg = {"to": "+14155550142", "text": "hi"}  # no line configured: refused, never sent
        out_codes = [
            requests.post(api, json=msg, headers={"Authorization": f"Bearer {SECRETS['api_token']}"}).status_code,
            requests.post(api, json=msg, headers={"Authorization": f"Bearer {SECRETS['api_token_rotated']}x"}).status_code,
            requests.post(api, json=msg, headers={"Authorization": f"Bearer {SECRETS['webhook_token']}"}).status_code,
            requests.post(base + f"/outbound/salesforce?token={SECRETS['salesforce_url_token']}x",
                          data="<x/>", headers={"Content-Type": "text/xml"}).status_code,
            requests.post(base + f"/outbound/salesforce?token={SECRETS['salesforce_url_token']}",
                          data="<x/>", headers={"Content-Type": "text/xml"}).status_code,
            requests.post(base + "/outbound/hubspot", data=b'{"callbackId": "c"}',
                          headers={"X-HubSpot-Signature": SECRETS["outbound_hubspot_secret"],
                                   "Content-Type": "application/json"}).status_code,
        ]
        assert out_codes == [422, 401, 401, 401, 400, 401]
        store = Store(f"sqlite:///{tmp_path / 'c.db'}")
        wait_for(lambda: store.pending_count() == 0 and len(store.list_events()) == 2, what="deliveries done")
        assert requests.get(base + "/metrics").status_code == 200
    finally:
        stop(proc)
    text = log_path.read_text()
    for name, secret in SECRETS.items():
        assert secret not in text, f"{name} leaked into the log"
    assert PRESIGNED not in text  # presigned media links keep their path, lose their signature
    assert "stored aircall message.received message abdcSM77mms0001 as event 1" in text  # decisions carry the ids
    assert "delivery 1 message abdcSM77mms0001 hubspot: dry-run" in text
    assert "rejected: missing or wrong token" in text
    if json_lines:
        records = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
        assert any(r["message"].endswith("dry-run") and r["level"] == "INFO" for r in records)
        assert all({"time", "level", "logger", "message"} <= set(r) for r in records)


def _log_through(json_lines: bool, secrets: list[str], emit, name: str = "") -> str:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(make_formatter(json_lines, Redactor(secrets)))
    logger = logging.getLogger(name or f"test.redaction.{json_lines}")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    try:
        emit(logger)
    finally:
        logger.removeHandler(handler)
    return stream.getvalue()


@pytest.mark.parametrize("json_lines", [False, True])
def test_formatter_redacts_messages_args_and_tracebacks(json_lines):
    secret = 'sig"n\\ing-secret-77'  # quotes and backslashes: escaped differently in JSON

    def emit(log):
        log.info("calling with Authorization: Bearer abc.def-ghi and %s", secret)
        log.info("headers %s", {"Authorization": "Basic dXNlcjpwYXNz"})
        log.warning("fetch https://bucket.s3.amazonaws.com/m/1.jpg?X-Amz-Signature=deadbeef&X-Amz-Credential=AK failed")
        log.info("link http://127.0.0.1:8080/media/eyJtIjoiYWJjIn0.ZXhw.c2lnbmF0dXJl/front.jpg")
        log.info("payload %s", json.dumps({"token": "body-token-123", "event": "message.received"}))
        try:
            raise RuntimeError(f"HubSpot said no to token {secret}")
        except RuntimeError:
            log.exception("unexpected error")

    out = _log_through(json_lines, [secret], emit)
    for leaked in (secret, json.dumps(secret)[1:-1], "abc.def-ghi", "dXNlcjpwYXNz", "deadbeef", "X-Amz-Credential",
                   "eyJtIjoiYWJjIn0", "body-token-123"):
        assert leaked not in out, leaked
    assert out.count(REDACTED) >= 7
    assert "https://bucket.s3.amazonaws.com/m/1.jpg?[redacted]" in out
    assert "RuntimeError" in out  # the traceback is kept, only the secret goes
    if json_lines:
        assert all(json.loads(line)["logger"].startswith("test.redaction") for line in out.splitlines()
                   if line.startswith("{"))


@pytest.mark.parametrize("json_lines", [False, True])
def test_a_logger_name_cannot_shield_a_secret_in_the_message(json_lines):
    # In a plain line the Authorization pattern could start in the prefix ("...authorization")
    # and swallow the message's "token" key; the message is redacted on its own first.
    out = _log_through(json_lines, [], lambda log: log.info(':"token": "%s"', "body-token-456"),
                       name=f"oauth.{json_lines}.authorization")
    assert "body-token-456" not in out and REDACTED in out
    try:
        raise ValueError("token=abc")
    except ValueError:
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "a %s", ("token=xyz",), sys.exc_info())
    line = make_formatter(json_lines, Redactor([])).format(record)
    assert "xyz" not in line and "abc" not in line
    # Other handlers get the record as it came (the formatter only borrows it).
    assert (record.msg, record.args, record.exc_info[0]) == ("a %s", ("token=xyz",), ValueError)


def test_config_secrets_found_by_key_name(tmp_path):
    cfg = load_config(data=_config(tmp_path, False, 8081))
    found = set(config_secrets(cfg))
    assert set(SECRETS.values()) <= found
    assert "acl-id" not in found and "127.0.0.1" not in found


def test_a_file_path_under_a_media_directory_is_not_taken_for_a_signed_link():
    from connector.logs import Redactor
    redact = Redactor([])
    assert redact("generated one in /srv/data/media/.signing-secret") == \
        "generated one in /srv/data/media/.signing-secret"
    assert redact("GET /media/eyJtIjoiU00xIn0.Zx3a9Q.sig-part") == "GET /media/[redacted]"
