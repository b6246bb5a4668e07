"""Peak memory of a server process while it serves "Download all" for a large message.

Stores 10 attachments of 5 MB in a scratch media store, starts `mms-connector serve`
(waitress, loopback, a free port) in its own process, then downloads the message's zip
and samples the server's resident memory (/proc/<pid>/status VmRSS) every 2 ms. Prints
idle RSS, peak RSS during the download, the difference, and checks that Content-Length
equals the bytes received. Goal: under 20 MB above idle.

    python bench/media_zip_memory.py [--files 10] [--size-mb 5]
"""
from __future__ import annotations

import argparse
import os
import socket
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
MESSAGE_ID = "SMbenchzip"


def rss_kb(pid: int, field: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not found")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prepare(tmp: Path, port: int, files: int, size: int) -> tuple[Path, str]:
    """A config on a scratch store, the attachments stored; returns (config, zip link)."""
    from connector.config import load_config
    from connector.runtime import Runtime
    from connector.media.collect import storage_key

    cfg = {"server": {"host": "127.0.0.1", "port": port, "public_base_url": f"http://127.0.0.1:{port}"},
           "store": {"url": f"sqlite:///{tmp / 'bench.db'}"},
           "aircall": {"webhook_tokens": ["bench-token"]},
           "hubspot": {"mode": "off"}, "salesforce": {"mode": "off"},
           "media": {"dir": str(tmp / "media")}, "logging": {"level": "WARNING"}}
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    rt = Runtime(load_config(path))
    now = time.time()
    head = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00"
    for i in range(files):
        data = head + os.urandom(size - len(head))
        key = storage_key(MESSAGE_ID, i, "image/jpeg")
        rt.media.storage.put(key, data)
        assert rt.store.media_claim(MESSAGE_ID, i, name=f"photo-{i + 1}.jpg", declared_type="image/jpeg",
                                    owner="bench", lease_seconds=60)
        rt.store.media_finish(MESSAGE_ID, i, "bench", state="available", detected_type="image/jpeg",
                              size=size, path=key, fetched_at=now, expires_at=now + 86400)
    _views, link = rt.media.views(MESSAGE_ID)
    return path, link


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=10)
    ap.add_argument("--size-mb", type=float, default=5)
    args = ap.parse_args()
    size = int(args.size_mb * 1024 * 1024)
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        port = free_port()
        config, link = prepare(tmp, port, args.files, size)
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        proc = subprocess.Popen([sys.executable, "-m", "connector.cli", "serve", "--config", str(config),
                                 "--no-worker"], cwd=ROOT, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            base = f"http://127.0.0.1:{port}"
            for _ in range(200):
                try:
                    requests.get(base + "/healthz", timeout=1)
                    break
                except requests.ConnectionError:
                    time.sleep(0.05)
            # Warm up: one small request through the media blueprint (imports, pools).
            requests.get(base + "/media/not-a-token", timeout=5)
            time.sleep(0.3)
            idle = rss_kb(proc.pid)
            peak = idle
            done = threading.Event()

            def sample():
                nonlocal peak
                while not done.is_set():
                    peak = max(peak, rss_kb(proc.pid))
                    time.sleep(0.002)

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            started = time.perf_counter()
            received = 0
            with requests.get(link, stream=True, timeout=60) as resp:
                resp.raise_for_status()
                length = int(resp.headers["Content-Length"])
                for chunk in resp.iter_content(256 * 1024):
                    received += len(chunk)
            elapsed = time.perf_counter() - started
            done.set()
            sampler.join()
        finally:
            proc.terminate()
            proc.wait(10)
    total_mb = args.files * size / 1024 / 1024
    print(f"download all: {args.files} files x {args.size_mb:g} MB = {total_mb:.0f} MB of attachments")
    print(f"zip: {received} bytes received, Content-Length {length} "
          f"({'equal' if received == length else 'DIFFERENT'}), {received / elapsed / 1e6:.0f} MB/s")
    print(f"server RSS idle {idle / 1024:.1f} MB, peak while serving {peak / 1024:.1f} MB, "
          f"above idle {(peak - idle) / 1024:.1f} MB (goal: under 20 MB)")


if __name__ == "__main__":
    main()
