"""The scaled-out mode: Redis nudges, the WSGI entry, and gunicorn + workers on PG/Redis."""
from __future__ import annotations

import contextlib
import copy
import importlib
import os
import subprocess
import sys
import threading

import requests

from connector.config import load_config
from connector.nudges import Nudges
from connector.runtime import Runtime
from connector.web import create_app

from conftest import ROOT, TOKEN, aircall_payload, base_config
from hubspot_fake import LimitedHubSpot
from procs import free_port, stop, wait_for, write_config
from test_metrics_health import samples, value


def _answers(url: str, proc) -> bool:
    assert proc.poll() is None, f"exited with {proc.returncode}"
    try:
        return requests.get(url, timeout=2).status_code == 200
    except requests.RequestException:
        return False


README_GUNICORN = ("-w", "2", "-k", "gevent") + (("--worker-tmp-dir", "/dev/shm") if os.path.isdir("/dev/shm") else ())


@contextlib.contextmanager
def scaled_out(tmp_path, data: dict, gunicorn_args=README_GUNICORN):
    """README's scaled-out commands: gunicorn web processes and two `mms-connector worker`
    processes on ``data``'s config; yields (base URL, config path). Fails the test if any
    process logged a traceback."""
    path = write_config(tmp_path / "c.yaml", data)
    metrics_dir = tmp_path / "prometheus"  # README (Metrics): shared by all processes of a machine
    metrics_dir.mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MMS_CONNECTOR_CONFIG": str(path),
           "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
    port = free_port()
    log = open(tmp_path / "procs.log", "ab")
    procs = [subprocess.Popen([sys.executable, "-m", "gunicorn", *gunicorn_args, "-b", f"127.0.0.1:{port}",
                               "connector.web.wsgi:app"], cwd=ROOT, env=env, stdout=log, stderr=log)]
    procs += [subprocess.Popen([sys.executable, "-m", "connector.cli", "worker", "--config", str(path)],
                               cwd=ROOT, env=env, stdout=log, stderr=log) for _ in range(2)]
    try:
        # gunicorn's master accepts before its workers have booted: wait for a real answer.
        wait_for(lambda: _answers(f"http://127.0.0.1:{port}/readyz", procs[0]), timeout=60, what="gunicorn")
        yield f"http://127.0.0.1:{port}", path
    finally:
        for p in procs:
            stop(p)
        log.close()
    text = (tmp_path / "procs.log").read_text()
    assert "Traceback" not in text, text[-3000:]


def test_a_stored_webhook_nudges_workers_through_redis(tmp_path, redis_url):
    url, prefix = redis_url
    cfg = load_config(data=base_config(tmp_path, queue={"url": url, "prefix": prefix}))
    web = Runtime(cfg)
    woken, stop_listening = threading.Event(), threading.Event()
    listener = threading.Thread(target=Nudges(cfg).listen, args=(woken, stop_listening), daemon=True)
    listener.start()
    try:
        client = create_app(cfg, web).test_client()
        # Subscribed once a publish reaches a listener; before that, nudges are simply lost.
        from connector import redisconn
        wait_for(lambda: redisconn.client(cfg).pubsub_numsub(f"{prefix}:nudge")[0][1] >= 1,
                 timeout=10, what="subscription")
        assert client.post("/webhooks/aircall", json=aircall_payload("sms_received")).status_code == 200
        assert woken.wait(10)
        woken.clear()
        # A duplicate creates no work, so it sends no nudge.
        assert client.post("/webhooks/aircall", json=aircall_payload("sms_received")).get_json()["status"] == "duplicate"
        assert not woken.wait(0.3)
    finally:
        stop_listening.set()
        listener.join(5)


def test_webhooks_are_stored_when_redis_is_down(tmp_path):
    port = free_port()  # nothing listens there
    cfg = load_config(data=base_config(tmp_path, queue={"url": f"redis://127.0.0.1:{port}/0"}))
    rt = Runtime(cfg)
    client = create_app(cfg, rt).test_client()
    r = client.post("/webhooks/aircall", json=aircall_payload("sms_received"))
    assert r.status_code == 200 and r.get_json()["status"] == "stored"
    assert rt.store.pending_count() == 2
    # The next webhook does not even try Redis for a while.
    assert client.post("/webhooks/aircall", json=aircall_payload("mms_received")).status_code == 200


def test_wsgi_entry_reads_config_from_the_environment(tmp_path, monkeypatch):
    path = write_config(tmp_path / "c.yaml", base_config(tmp_path))
    monkeypatch.setenv("MMS_CONNECTOR_CONFIG", str(path))
    sys.modules.pop("connector.web.wsgi", None)
    wsgi = importlib.import_module("connector.web.wsgi")
    r = wsgi.app.test_client().post("/webhooks/aircall", json=aircall_payload("sms_received"))
    assert r.status_code == 200 and r.get_json()["status"] == "stored"
    assert wsgi.app.extensions["connector"].config.source == str(path)
    sys.modules.pop("connector.web.wsgi", None)


def test_wsgi_entry_with_a_bad_config_names_the_key(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("aircall:\n  webhook_tokens: [x]\nqueue:\n  url: http://nope\n")
    r = subprocess.run([sys.executable, "-c", "import connector.web.wsgi"], cwd=ROOT, capture_output=True,
                       text=True, timeout=60, env={**os.environ, "MMS_CONNECTOR_CONFIG": str(path)})
    assert r.returncode == 3
    assert "queue.url: " in r.stderr and "Redis URL" in r.stderr


def test_gunicorn_with_a_bad_config_stops_with_the_error_instead_of_restarting_workers(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("aircall:\n  webhook_tokens: [x]\nstore:\n  commit_delay: 5\n")
    r = subprocess.run([sys.executable, "-m", "gunicorn", "-w", "2", "-b", f"127.0.0.1:{free_port()}",
                        "connector.web.wsgi:app"], cwd=ROOT, capture_output=True, text=True, timeout=60,
                       env={**os.environ, "PYTHONPATH": str(ROOT), "MMS_CONNECTOR_CONFIG": str(path)})
    # 3, or 1 when gunicorn trips over its second failed worker while halting.
    assert r.returncode != 0
    assert "Worker failed to boot" in r.stderr
    assert f"Config {path} is not valid:" in r.stderr and "store.commit_delay" in r.stderr
    # Each worker tries once: no loop of workers failing the same way.
    assert r.stderr.count(f"Config {path} is not valid:") <= 2


def test_two_gunicorn_web_processes_and_two_workers_on_postgresql_and_redis(tmp_path, pg_url, redis_url):
    url, prefix = redis_url
    # Slow polling: the nudge must do the waking. The fixtures' media hosts do not resolve:
    # one try each, so the wait is the pipeline's, not DNS retries'.
    data = base_config(tmp_path, store={"url": pg_url}, queue={"url": url, "prefix": prefix},
                       worker={"poll_interval": 5}, media={"dir": str(tmp_path / "media"), "fetch_attempts": 1})
    with scaled_out(tmp_path, data, gunicorn_args=("-w", "2")) as (base, path):
        statuses = []
        for i in range(20):
            body = copy.deepcopy(aircall_payload("mms_received" if i % 2 else "sms_received"))
            body["data"]["id"] = f"burst-{i}"
            statuses.append(requests.post(f"{base}/webhooks/aircall", json=body, timeout=10).status_code)
            requests.post(f"{base}/webhooks/aircall", json=body, timeout=10)  # redelivery
        assert statuses == [200] * 20
        rt = Runtime(load_config(path))
        events = wait_for(lambda: (ev := rt.store.list_events(limit=100)) and all(
            t["state"] == "dry-run" for e in ev for t in e["targets"].values()) and ev,
            timeout=90, what="every delivery done")
        assert sorted(e["message_id"] for e in events) == sorted(f"burst-{i}" for i in range(20))
        assert {tuple(sorted(e["targets"])) for e in events} == {("hubspot", "salesforce")}
        assert all(t["attempts"] == 1 for e in events for t in e["targets"].values())


def test_a_concurrent_burst_with_redeliveries_through_two_web_processes_and_two_workers_reaches_hubspot_once_each_within_the_shared_limit(
        tmp_path, pg_url, redis_url, httpserver):
    """README's scaled-out commands, a live HubSpot (fake) that enforces 10 requests per
    rolling 10 s, and a burst of 120 messages, each posted twice at once from 16 threads."""
    from concurrent.futures import ThreadPoolExecutor

    from sqlalchemy import select

    from bench.workload import mms_payloads
    from connector.store import crm_records

    hub = LimitedHubSpot(httpserver, limit=10, window=10, latency=0.05)
    for i in range(30):
        hub.add_contact(phone=f"+1 415 555 {i:04d}")
    url, prefix = redis_url
    data = base_config(tmp_path, store={"url": pg_url}, queue={"url": url, "prefix": prefix},
                       salesforce={"mode": "off"},
                       hubspot={"mode": "live", "base_url": hub.url, "access_token": "pat-test",
                                "requests_per_10s": 10, "batch_size": 10},
                       worker={"poll_interval": 1, "batch_wait": 0.2})
    messages = mms_payloads(120, 30, prefix="burst")
    for body in messages:
        body["token"] = TOKEN
        body["data"].pop("media_details", None)  # text only: the fixture's media host does not exist
    with scaled_out(tmp_path, data) as (base, path):
        session = requests.Session()

        def post(body):
            r = session.post(f"{base}/webhooks/aircall", json=body, timeout=30)
            return r.status_code, r.json()["status"]

        with ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(post, [m for m in messages for _ in range(2)]))
        assert {code for code, _ in answers} == {200}
        statuses = [status for _, status in answers]
        assert statuses.count("stored") == 120 and statuses.count("duplicate") == 120

        rt = Runtime(load_config(path))
        wait_for(lambda: rt.store.pending_count() == 0, timeout=90, what="every delivery done")
        events = rt.store.list_events(limit=500)
        assert sorted(e["message_id"] for e in events) == sorted(m["data"]["id"] for m in messages)
        assert {e["targets"]["hubspot"]["state"] for e in events} == {"delivered"}
        with rt.store.read() as conn:
            records = conn.execute(select(crm_records.c.message_id, crm_records.c.object_id)
                                   .where(crm_records.c.target == "hubspot")).all()
        # One Communication per message, and nothing else created in HubSpot.
        assert len(records) == 120 and len({oid for _, oid in records}) == 120
        assert set(hub.comms) == {oid for _, oid in records}
        # The two workers shared one bucket: HubSpot never refused, never saw more than 10 in 10 s,
        # and the burst needed more than one window's worth of calls.
        assert hub.too_many == 0 and hub.peak <= 10 and len(hub.requests) > 10
        # Any web process's /metrics adds up both web processes and both workers.
        m = samples(requests.get(f"{base}/metrics", timeout=10).text)
        hook = "/webhooks/aircall"
        assert value(m, "mms_connector_webhooks_total", endpoint=hook, result="stored") == 120
        assert value(m, "mms_connector_webhooks_total", endpoint=hook, result="duplicate") == 120
        assert value(m, "mms_connector_crm_writes_total", target="hubspot", outcome="delivered") == 120
        assert value(m, "mms_connector_crm_requests_total", target="hubspot", result="ok") == len(hub.requests)
        assert value(m, "mms_connector_crm_requests_total", target="hubspot", result="rate_limited") == 0
        rt.store.engine.dispose()
