"""Acknowledgement latency of POST /webhooks/aircall, one request after another.

Starts `mms-connector serve` on the embedded default (SQLite, dry-run CRMs, worker in
the same process) on a free loopback port, posts N authenticated MMS webhooks, each
with its own message id, and prints p50/p99/max latency. Then checks that every
acknowledged event is in the store (committed before its 2xx).

    python bench/ingest.py [--count 1000] [--url http://127.0.0.1:8080 --token T]
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests
import yaml

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "bench-token"
EXTRA: list[str] = []


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(workdir: Path) -> tuple[subprocess.Popen, str, Path]:
    port = free_port()
    cfg = yaml.safe_load((ROOT / "config.example.yaml").read_text())
    cfg["server"]["port"] = port
    cfg["hubspot"]["mapping"] = str(ROOT / "mappings" / "hubspot.yaml")
    cfg["salesforce"]["mapping"] = str(ROOT / "mappings" / "salesforce.yaml")
    cfg.setdefault("logging", {})["level"] = "WARNING"
    config = workdir / "config.yaml"
    config.write_text(yaml.safe_dump(cfg))
    env = dict(os.environ, AIRCALL_WEBHOOK_TOKEN=TOKEN, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "connector.cli", "serve", "--config", str(config), *EXTRA],
                            cwd=workdir, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            requests.get(url + "/healthz", timeout=0.5)
            return proc, url, config
        except requests.ConnectionError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("server did not start")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=1000)
    ap.add_argument("--url", help="an already running server (default: start one)")
    ap.add_argument("--token", default=TOKEN)
    args = ap.parse_args()

    template = json.loads((ROOT / "tests/fixtures/aircall/mms_received.json").read_text())
    template["token"] = args.token
    tmp = tempfile.TemporaryDirectory()
    proc = config = None
    url = args.url
    if not url:
        proc, url, config = start_server(Path(tmp.name))
    session = requests.Session()
    latencies = []
    statuses: dict[int, int] = {}
    run = int(time.time())
    try:
        for i in range(20):  # warm-up, not counted
            p = copy.deepcopy(template)
            p["data"]["id"] = f"warm-{run}-{i}"
            session.post(url + "/webhooks/aircall", json=p, timeout=5)
        started = time.perf_counter()
        for i in range(args.count):
            p = copy.deepcopy(template)
            p["data"]["id"] = f"bench-{run}-{i}"
            body = json.dumps(p).encode()
            t0 = time.perf_counter()
            r = session.post(url + "/webhooks/aircall", data=body,
                             headers={"Content-Type": "application/json"}, timeout=5)
            latencies.append((time.perf_counter() - t0) * 1000)
            statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
        elapsed = time.perf_counter() - started
        latencies.sort()
        q = statistics.quantiles(latencies, n=100)
        print(f"webhooks posted:     {args.count} (sequential, keep-alive, loopback)")
        print(f"responses:           {statuses}")
        print(f"ack latency p50:     {q[49]:.2f} ms")
        print(f"ack latency p99:     {q[98]:.2f} ms")
        print(f"ack latency max:     {latencies[-1]:.2f} ms")
        print(f"throughput:          {args.count / elapsed:.0f} req/s")
        if config is not None:
            env = dict(os.environ, AIRCALL_WEBHOOK_TOKEN=TOKEN, PYTHONPATH=str(ROOT))
            out = subprocess.run([sys.executable, "-m", "connector.cli", "events", "--config", str(config),
                                  "--json", "--limit", str(args.count + 100)],
                                 cwd=tmp.name, env=env, capture_output=True, text=True, check=True)
            stored = {e["message_id"] for e in json.loads(out.stdout)
                      if e["message_id"].startswith(f"bench-{run}-")}
            print(f"stored in the inbox: {len(stored)} of {statuses.get(200, 0)} acknowledged")
    finally:
        if proc:
            proc.terminate()
            proc.wait(10)
        tmp.cleanup()


if __name__ == "__main__":
    main()
