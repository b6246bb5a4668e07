"""``mms-connector worker`` with every CRM target writing to a FakeCRM at --crm-url.

The real Runtime, Worker, Pipeline and store; only the writers are swapped. Used by
the SIGKILL guarantee test and bench/soak.py (run with ``python -m bench.fake_worker``).
"""
from __future__ import annotations

import argparse
import signal
import threading

from connector.config import load_config
from connector.pipeline.writers import load_mapping
from connector.runtime import Runtime, setup_logging

from bench.fakecrm import HttpWriter


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", required=True)
    ap.add_argument("--crm-url", required=True)
    args = ap.parse_args()
    cfg = load_config(args.config)
    setup_logging(cfg)
    rt = Runtime(cfg)
    rt.pipeline.writers = {t: HttpWriter(t, args.crm_url, load_mapping(cfg, t)) for t in cfg.targets()}
    worker = rt.worker()
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    worker.start()
    print("fake worker running", flush=True)
    done.wait()
    worker.stop()


if __name__ == "__main__":
    main()
