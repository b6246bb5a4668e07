"""Web processes under gevent (gunicorn -k gevent, README's setting): requests that arrive
together still share commits, and blocking C calls leave the other requests running."""
from __future__ import annotations

import copy
import http.client
import json
import os
import re
import subprocess
import sys
import textwrap
import threading
from concurrent.futures import ThreadPoolExecutor

import requests
from sqlalchemy import func, select

from conftest import ROOT, TOKEN, aircall_payload, base_config
from connector.store import Store, deliveries, inbox
from procs import free_port, stop, wait_for, write_config

GEVENT_GUNICORN = ("-w", "1", "-k", "gevent") + (("--worker-tmp-dir", "/dev/shm") if os.path.isdir("/dev/shm") else ())


def run_python(code: str) -> str:
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, capture_output=True, text=True,
                       timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_blocking_calls_leave_the_loop_only_where_greenlets_share_a_thread():
    out = run_python("""
        import _thread
        from connector import cooperative
        main = _thread.get_native_id()
        print(cooperative.active(), cooperative.off_loop(_thread.get_native_id) == main)
        from gevent import monkey
        monkey.patch_all()
        import gevent
        blocking_sleep = monkey.get_original("time", "sleep")  # a C call that holds its thread
        ticks = []
        ticker = gevent.spawn(lambda: [ticks.append(gevent.sleep(0.02)) for _ in range(5)])
        gevent.sleep(0)
        where = cooperative.off_loop(lambda: (blocking_sleep(0.3), _thread.get_native_id())[1])
        # The other greenlet went on while the call blocked its native thread.
        print(cooperative.active(), where != main, len(ticks))
    """)
    assert out.split() == ["False", "True", "True", "True", "5"]


def test_the_wal_checkpoint_runs_off_the_loop_under_gevent(tmp_path):
    """A checkpoint syncs the database file: on the loop it would stop every request of the
    process meanwhile; under gevent it runs on a native thread."""
    out = run_python(f"""
        from gevent import monkey
        monkey.patch_all()
        import _thread, gevent
        from connector import sqlite_writes
        from connector.store import Store
        main, ran_on = _thread.get_native_id(), []
        real = sqlite_writes.cooperative.off_loop
        sqlite_writes.cooperative.off_loop = lambda fn, *a: real(
            lambda: (ran_on.append(_thread.get_native_id()), fn(*a))[1])
        s = Store("sqlite:///{tmp_path / 'c.db'}")
        s.create_schema()
        s.checkpointer.interval = 0.02
        s.ingest(dedup_key="k", provider="aircall", message_id="m", event_name="message.received",
                 status="received", direction="inbound", external="+15550000001", occurred_at=1.0,
                 payload="{{}}", targets=("hubspot",))
        gevent.sleep(0.5)
        print(len(ran_on) >= 3, main not in ran_on)
    """)
    assert out.split() == ["True", "True"]


def test_under_gevent_webhooks_that_arrive_together_share_commits(tmp_path):
    """One gevent web process, 16 clients at once, each message sent twice: every message
    stored once with its deliveries, every answer right, and transactions shared (the
    log names several events per commit; without the yield before writing, one each)."""
    data = base_config(tmp_path)
    path = write_config(tmp_path / "c.yaml", data)
    port = free_port()
    log = open(tmp_path / "gunicorn.log", "ab")
    proc = subprocess.Popen([sys.executable, "-m", "gunicorn", *GEVENT_GUNICORN, "-b", f"127.0.0.1:{port}",
                             "connector.web.wsgi:app"], cwd=ROOT, stdout=log, stderr=log,
                            env={**os.environ, "PYTHONPATH": str(ROOT), "MMS_CONNECTOR_CONFIG": str(path)})
    base = f"http://127.0.0.1:{port}"
    messages = []
    for i in range(150):
        body = copy.deepcopy(aircall_payload("sms_received"))
        body["token"], body["data"]["id"] = TOKEN, f"together-{i}"
        messages.append(body)
    try:
        wait_for(lambda: proc.poll() is None and _up(base), timeout=60, what="gunicorn")
        clients = threading.local()

        def post(body):
            # Headers and body in one packet, as Aircall's and wrk's requests arrive: a
            # request read at once never yields inside the app, so only the writer's own
            # yield lets the others join its transaction.
            if not hasattr(clients, "conn"):
                clients.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            clients.conn.request("POST", "/webhooks/aircall", json.dumps(body).encode(),
                                 {"Content-Type": "application/json"})
            r = clients.conn.getresponse()
            answer = json.loads(r.read())
            return r.status, answer["status"], answer["message_id"]

        with ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(post, [m for m in messages for _ in range(2)]))
        r = requests.get(f"{base}/readyz", timeout=10)
        assert r.status_code == 200, r.text
    finally:
        stop(proc)
    assert {code for code, _, _ in answers} == {200}
    for i in range(150):
        assert sorted(s for _, s, m in answers if m == f"together-{i}") == ["duplicate", "stored"]
    store = Store(data["store"]["url"])
    try:
        with store.engine.connect() as conn:
            assert sorted(conn.execute(select(inbox.c.message_id)).scalars()) == sorted(
                m["data"]["id"] for m in messages)
            assert conn.execute(select(func.count()).select_from(deliveries)).scalar() == 2 * 150
    finally:
        store.engine.dispose()
    text = (tmp_path / "gunicorn.log").read_text()
    assert "Traceback" not in text, text[-3000:]
    shared = [int(n) for n in re.findall(r"stored (\d+) events: ", text)]
    alone = len(re.findall(r"stored aircall ", text))
    assert sum(shared) + alone == 150
    assert shared and alone + len(shared) < 150, (alone, shared)


def _up(base: str) -> bool:
    try:
        return requests.get(base + "/healthz", timeout=2).status_code == 200
    except requests.RequestException:
        return False


def test_a_write_waiting_for_another_process_s_lock_leaves_the_other_requests_running(tmp_path):
    """While another process (a worker, the CLI, the other web process) holds the store's
    write lock, a webhook's write waits for it on a native thread: the process's other
    greenlets (other requests, /healthz) go on meanwhile."""
    out = run_python(f"""
        from gevent import monkey
        monkey.patch_all()
        import subprocess, sys, time, gevent
        from connector.store import Store
        s = Store("sqlite:///{tmp_path / 's.db'}")
        s.create_schema()
        def ingest(mid):
            return s.ingest(dedup_key=mid, provider="aircall", message_id=mid, event_name="message.received",
                            status="received", direction="inbound", external="+1", occurred_at=1.0,
                            payload="{{}}", targets=("hubspot",))
        ingest("warm-up")
        hold = ("import fcntl, os, time; fd = os.open({str(tmp_path / 's.db.lock')!r}, os.O_RDWR | os.O_CREAT); "
                "fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); time.sleep(1)")
        holder = subprocess.Popen([sys.executable, "-c", hold], stdout=subprocess.PIPE)
        holder.stdout.readline()
        ticks = []
        ticker = gevent.spawn(lambda: [ticks.append(gevent.sleep(0.01)) for _ in range(1000)])
        start = time.monotonic()
        new_id = gevent.spawn(ingest, "during-hold").get()
        waited = time.monotonic() - start
        ticker.kill(); holder.wait()
        print(new_id, waited > 0.5, len(ticks) >= 0.5 * waited / 0.01)
    """)
    assert out.split() == ["2", "True", "True"]
