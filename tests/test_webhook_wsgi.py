"""POST /webhooks/aircall is answered in front of Flask: what only a server's request shows
(chunked bodies, lengths, methods) and what a store failure answers."""
from __future__ import annotations

import io
import json
import logging
import os
import socket
import subprocess
import sys

import pytest
import requests
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError
from werkzeug.test import EnvironBuilder

from connector.store import inbox
from connector.web import create_app

from conftest import ROOT, aircall_payload, base_config
from procs import free_port, stop, wait_for, write_config
from test_metrics_health import scrape, value

HOOK = "/webhooks/aircall"


def stored(rt) -> int:
    with rt.store.engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(inbox)).scalar()


def call(app, body: bytes, chunked: bool):
    """The app's answer to ``body`` sent as gunicorn hands it over: with Content-Length,
    or chunked (no length, Transfer-Encoding kept, the stream ended by the server)."""
    environ = EnvironBuilder(path=HOOK, method="POST", data=body, content_type="application/json").get_environ()
    environ["wsgi.input_terminated"] = True
    if chunked:
        del environ["CONTENT_LENGTH"]
        environ["HTTP_TRANSFER_ENCODING"] = "chunked"
        environ["wsgi.input"] = io.BytesIO(body)
    answer = {}

    def start_response(status, headers, exc_info=None):
        answer.update(status=status, headers=dict(headers))

    data = b"".join(app(environ, start_response))
    return answer["status"], answer["headers"], json.loads(data)


@pytest.mark.parametrize("chunked", [False, True])
def test_a_body_within_the_limit_is_stored_and_one_over_it_is_413(make_runtime, chunked):
    rt = make_runtime(server={"max_body_bytes": 4096})
    app = create_app(rt.config, rt)
    body = json.dumps(aircall_payload("sms_received")).encode()
    status, headers, answer = call(app, body, chunked)
    assert status == "200 OK" and answer["status"] == "stored"
    assert headers["Content-Type"] == "application/json" and int(headers["Content-Length"]) > 0

    big = aircall_payload("sms_received")
    big["data"]["id"], big["data"]["body"] = "big-one", "x" * 5000
    status, _, answer = call(app, json.dumps(big).encode(), chunked)
    assert status == "413 REQUEST ENTITY TOO LARGE"
    assert answer == {"error": "The data value transmitted exceeds the capacity limit.", "status": 413}
    assert stored(rt) == 1


def test_other_methods_are_405_naming_post_and_options_is_answered(client, runtime):
    r = client.put(HOOK, json=aircall_payload("sms_received"))
    assert r.status_code == 405 and r.headers["Allow"] == "OPTIONS, POST" and r.get_json()["status"] == 405
    r = client.head(HOOK)
    assert r.status_code == 405 and r.data == b""  # no body after a HEAD's headers
    r = client.options(HOOK)
    assert r.status_code == 200 and r.headers["Allow"] == "OPTIONS, POST" and r.data == b""
    assert stored(runtime) == 0
    assert value(scrape(client), "mms_connector_webhooks_total", endpoint=HOOK, result="accepted") == 1
    # Flask's routes are untouched: a near miss is Flask's JSON 404.
    r = client.post(HOOK + "/", json=aircall_payload("sms_received"))
    assert r.status_code == 404 and r.is_json


@pytest.mark.parametrize("path", ["//webhooks/aircall", "/webhooks//aircall", "///webhooks/aircall"])
def test_a_webhook_url_typed_with_a_doubled_slash_is_stored(make_runtime, path):
    # A base URL ending in "/" plus the path: Flask's router takes repeated slashes as one.
    rt = make_runtime()
    app = create_app(rt.config, rt)
    environ = EnvironBuilder(path=HOOK, method="POST", json=aircall_payload("sms_received")).get_environ()
    environ["PATH_INFO"] = path
    answer = {}
    body = b"".join(app(environ, lambda status, headers, exc=None: answer.update(status=status)))
    assert answer["status"] == "200 OK" and json.loads(body)["status"] == "stored"
    assert stored(rt) == 1


def test_a_store_that_fails_answers_500_logs_why_and_counts_an_error(make_runtime, caplog):
    rt = make_runtime()
    client = create_app(rt.config, rt).test_client()

    def broken(**_):
        raise OperationalError("INSERT INTO inbox", {}, Exception("disk I/O error"))

    rt.store.ingest = broken
    with caplog.at_level(logging.ERROR, logger="connector.webhooks"):
        r = client.post(HOOK, json=aircall_payload("sms_received"))
    assert r.status_code == 500
    assert r.get_json() == {"error": "the event was not stored (see the connector's log); send it again",
                            "status": 500}
    [record] = [rec for rec in caplog.records if rec.name == "connector.webhooks"]
    assert record.getMessage() == "aircall webhook not stored" and "disk I/O error" in caplog.text
    assert value(scrape(client), "mms_connector_webhooks_total", endpoint=HOOK, result="error") == 1


@pytest.mark.parametrize("worker", [("--threads", "4"), ("-k", "gevent")], ids=["threads", "gevent"])
def test_under_gunicorn_chunked_bodies_and_lengths_are_read_as_sent(tmp_path, worker):
    """The real server: a chunked webhook is stored, a chunked one over the limit is a 413
    with nothing stored, and a request cut short is a 400, never a hang or a 500."""
    data = base_config(tmp_path, server={"max_body_bytes": 4096})
    path = write_config(tmp_path / "c.yaml", data)
    port = free_port()
    log = open(tmp_path / "gunicorn.log", "ab")
    proc = subprocess.Popen([sys.executable, "-m", "gunicorn", "-w", "1", *worker, "-b",
                             f"127.0.0.1:{port}", "connector.web.wsgi:app"], cwd=ROOT, stdout=log, stderr=log,
                            env={**os.environ, "PYTHONPATH": str(ROOT), "MMS_CONNECTOR_CONFIG": str(path)})
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: proc.poll() is None and _up(base), timeout=60, what="gunicorn")
        body = json.dumps(aircall_payload("mms_received")).encode()
        r = requests.post(base + HOOK, data=iter([body[:100], body[100:]]),  # a generator: sent chunked
                          headers={"Content-Type": "application/json"}, timeout=10)
        assert r.status_code == 200 and r.json()["status"] == "stored", r.text
        big = aircall_payload("mms_received")
        big["data"]["id"], big["data"]["body"] = "big-one", "x" * 5000
        raw = json.dumps(big).encode()
        r = requests.post(base + HOOK, data=iter([raw[:2000], raw[2000:]]),
                          headers={"Content-Type": "application/json"}, timeout=10)
        assert r.status_code == 413, r.text
        # Content-Length says more than arrives before the client stops sending.
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(b"POST " + HOOK.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"Content-Length: 500\r\nConnection: close\r\n\r\n" + body[:200])
            s.shutdown(socket.SHUT_WR)
            answer = b"".join(iter(lambda: s.recv(65536), b""))  # to the server's close
        assert answer.startswith(b"HTTP/1.1 400"), answer[:200]
        assert b"body is not valid JSON" in answer
        # A doubled slash (gunicorn keeps it in PATH_INFO) is the same route.
        second = aircall_payload("sms_received")
        r = requests.post(f"{base}//webhooks/aircall", json=second, timeout=10)
        assert r.status_code == 200 and r.json()["status"] == "stored", r.text
        r = requests.head(base + HOOK, timeout=10)
        assert r.status_code == 405 and r.headers["Allow"] == "OPTIONS, POST"
        r = requests.get(base + "/metrics", timeout=10)
        assert 'mms_connector_webhooks_total{endpoint="/webhooks/aircall",result="stored"} 2.0' in r.text
        assert 'mms_connector_webhooks_total{endpoint="/webhooks/aircall",result="too_large"} 1.0' in r.text
    finally:
        stop(proc)
    from connector.store import Store
    store = Store(data["store"]["url"])
    try:
        with store.engine.connect() as conn:
            assert sorted(conn.execute(select(inbox.c.message_id)).scalars()) == ["abdcSM11da5f0b1", "abdcSM77mms0001"]
    finally:
        store.engine.dispose()
    text = (tmp_path / "gunicorn.log").read_text()
    assert "Traceback" not in text and "body bytes on a no-body response" not in text


def _up(base: str) -> bool:
    try:
        return requests.get(base + "/healthz", timeout=2).status_code == 200
    except requests.RequestException:
        return False
