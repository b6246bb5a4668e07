"""Soak: webhooks at a fixed rate while the worker is SIGKILLed and restarted, against a
CRM that sometimes fails. Prints sent / stored / delivered / duplicated / lost.

Loopback only, bounded in count and time. Runs the real web server (`mms-connector serve
--no-worker`, waitress) and a separate worker process (bench/fake_worker.py: the real
worker with its CRM writer pointed at bench/fakecrm.FakeCRM), in a temporary directory.

    python -m bench.soak --rate 100 --seconds 100      # 10,000 events
    python -m bench.soak --rate 50 --seconds 10        # quick look

A redelivered webhook (--duplicates) must be stored once; every acknowledged message
must end as exactly one CRM entry. Exit status 1 when anything was lost or duplicated.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.fakecrm import FakeCRM  # noqa: E402
from connector.store import Store  # noqa: E402

TOKEN = "soak-webhook-token"


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def payload(i: int, t0: float) -> dict:
    body = json.loads((ROOT / "tests" / "fixtures" / "aircall" /
                       ("mms_received.json" if i % 3 == 0 else "sms_received.json")).read_text())
    body["token"] = TOKEN
    body["data"]["id"] = f"soak-{i:07d}"
    body["data"]["created_at"] = int((t0 + i / 1000) * 1000)
    return body


def spawn(args: list[str], log: Path, module: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", module, *args], cwd=ROOT,
                            stdout=open(log, "ab"), stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})


def wait_http(url: str, deadline: float) -> None:
    while time.monotonic() < deadline:
        try:
            requests.get(url, timeout=1)
            return
        except requests.ConnectionError:
            time.sleep(0.05)
    raise SystemExit(f"{url} did not come up")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rate", type=float, default=100, help="webhooks per second")
    ap.add_argument("--seconds", type=float, default=100, help="how long to post")
    ap.add_argument("--count", type=int, default=10_000, help="at most this many events")
    ap.add_argument("--kill-every", type=float, nargs=2, default=(2.0, 5.0), metavar=("MIN", "MAX"),
                    help="SIGKILL the worker after a random number of seconds in this range")
    ap.add_argument("--fail-rate", type=float, default=0.05,
                    help="share of CRM calls answered 503 (half of them after storing the entry)")
    ap.add_argument("--duplicates", type=float, default=0.05, help="share of webhooks sent twice")
    ap.add_argument("--drain-timeout", type=float, default=600, help="longest wait for the backlog")
    ap.add_argument("--worker-threads", type=int, default=4)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    total = min(args.count, int(args.rate * args.seconds))

    tmp = Path(tempfile.mkdtemp(prefix="mms-soak-"))
    port = free_port()
    cfg = {
        "server": {"host": "127.0.0.1", "port": port, "threads": 8},
        "store": {"url": f"sqlite:///{tmp / 'soak.db'}"},
        "worker": {"threads": args.worker_threads, "lease_seconds": 5, "sweep_interval": 1,
                   "poll_interval": 0.1, "backoff_initial": 0.2, "backoff_max": 2, "max_attempts": 50},
        "aircall": {"webhook_tokens": [TOKEN]},
        "hubspot": {"mode": "dry-run", "mapping": str(ROOT / "mappings" / "hubspot.yaml")},
        "salesforce": {"mode": "off"},
        "logging": {"level": "WARNING"},
    }
    cfg_path = tmp / "config.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    print(f"soak: {total} events at {args.rate:g}/s, worker killed every {args.kill_every[0]:g}-"
          f"{args.kill_every[1]:g}s, CRM failing {args.fail_rate:.0%}, dir {tmp}", flush=True)

    crm = FakeCRM(seed=args.seed)
    crm.fail_rate = args.fail_rate
    crm.__enter__()
    server = spawn(["serve", "--no-worker", "--config", str(cfg_path)], tmp / "server.log", "connector.cli")
    worker_args = ["--config", str(cfg_path), "--crm-url", crm.url]
    state = {"worker": spawn(worker_args, tmp / "worker.log", "bench.fake_worker"), "kills": 0}
    stop_killing = threading.Event()
    started = time.monotonic()
    hard_deadline = started + args.seconds + args.drain_timeout + 60
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", time.monotonic() + 30)

        def ready_count() -> int:
            return (tmp / "worker.log").read_text(errors="replace").count("fake worker running")

        def killer():
            # Each worker gets a random 2-5 s of work once it is up (start-up is not work).
            while True:
                started_workers = state["kills"] + 1
                up_deadline = time.monotonic() + 60
                while ready_count() < started_workers and time.monotonic() < up_deadline:
                    if stop_killing.wait(0.05):
                        return
                if stop_killing.wait(rng.uniform(*args.kill_every)):
                    return
                state["worker"].send_signal(signal.SIGKILL)
                state["worker"].wait()
                state["kills"] += 1
                state["worker"] = spawn(worker_args, tmp / "worker.log", "bench.fake_worker")

        kill_thread = threading.Thread(target=killer, daemon=True)
        kill_thread.start()

        acked: set[str] = set()
        answers: dict[str, int] = {}
        errors: list[str] = []
        lock = threading.Lock()
        url = f"http://127.0.0.1:{port}/webhooks/aircall"
        t0 = time.time()
        jobs = list(range(total))
        n_senders = 8
        interval = n_senders / args.rate

        def sender(k: int):
            session = requests.Session()
            next_at = time.monotonic() + k / args.rate
            for i in jobs[k::n_senders]:
                delay = next_at - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                next_at += interval
                body = payload(i, t0)
                for _ in range(2 if rng.random() < args.duplicates else 1):
                    try:
                        r = session.post(url, json=body, timeout=10)
                        status = r.json().get("status") if r.ok else f"http {r.status_code}"
                    except requests.RequestException as exc:
                        status = f"error {type(exc).__name__}"
                    with lock:
                        answers[status] = answers.get(status, 0) + 1
                        if status in ("stored", "duplicate"):
                            acked.add(body["data"]["id"])
                        else:
                            errors.append(status)
                if time.monotonic() > hard_deadline:
                    return

        senders = [threading.Thread(target=sender, args=(k,)) for k in range(n_senders)]
        for t in senders:
            t.start()
        for t in senders:
            t.join()
        post_seconds = time.monotonic() - started
        print(f"posted for {post_seconds:.1f}s: {answers}", flush=True)

        store = Store(cfg["store"]["url"])
        drain_until = time.monotonic() + args.drain_timeout
        while time.monotonic() < drain_until and store.pending_count():
            time.sleep(0.5)
        stop_killing.set()
        kill_thread.join()
        # Let the last worker finish anything it holds, then stop it.
        drain_until = time.monotonic() + 30
        while time.monotonic() < drain_until and store.pending_count():
            time.sleep(0.5)
        drained = time.monotonic() - started

        figures = store.queue_figures()["counts"]
        stored = len(store.list_events(limit=10**7))
        delivered = figures.get(("hubspot", "delivered"), 0)
        dead = figures.get(("hubspot", "dead"), 0)
        open_ = figures.get(("hubspot", "pending"), 0) + figures.get(("hubspot", "retrying"), 0)
        entries = crm.by_external_id()
        duplicated = sum(len(v) - 1 for v in entries.values() if len(v) > 1)
        open_ids = {e["message_id"] for e in store.list_events(limit=10**7, state="pending")} | \
            {e["message_id"] for e in store.list_events(limit=10**7, state="retrying")}
        # Lost: acknowledged, no CRM entry, and no longer being worked on.
        lost = sorted(m for m in acked if m not in entries and m not in open_ids)
        extra = sorted(str(m) for m in entries if m not in acked)
        calls = len(crm.requests)
        failures = sum(1 for r in crm.requests if r[3] >= 500)
        print(json.dumps({
            "sent": total, "acknowledged": len(acked), "webhook_errors": len(errors),
            "stored": stored, "delivered": delivered, "dead": dead, "still_open": open_,
            "crm_entries": sum(len(v) for v in entries.values()), "duplicated": duplicated,
            "lost": len(lost), "unexpected_entries": len(extra),
            "worker_kills": state["kills"], "crm_calls": calls, "crm_503s": failures,
            "post_seconds": round(post_seconds, 1), "total_seconds": round(drained, 1),
        }, indent=2), flush=True)
        if lost:
            print(f"lost, first few: {lost[:10]}")
        if extra:
            print(f"entries for messages never acknowledged: {extra[:10]}")
        if open_:
            print(f"not drained within --drain-timeout: {open_} deliveries still open")
        return 0 if not lost and not duplicated and not extra and not open_ else 1
    finally:
        stop_killing.set()
        for proc in (state["worker"], server):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
        crm.__exit__(None, None, None)


if __name__ == "__main__":
    sys.exit(main())
