"""The benches' workload: MMS webhook payloads from a fixed set of known contacts."""
from __future__ import annotations

import copy
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def mms_payloads(n_events: int, n_contacts: int, prefix: str = "bench") -> list[dict]:
    """``n_events`` documented MMS payloads, each its own message, from ``n_contacts`` numbers."""
    template = json.loads((ROOT / "tests/fixtures/aircall/mms_received.json").read_text())
    out = []
    for i in range(n_events):
        p = copy.deepcopy(template)
        p["data"]["id"] = f"{prefix}{i:05d}"
        p["data"]["raw_digits"] = f"+1 415 555 {i % n_contacts:04d}"
        out.append(p)
    return out
