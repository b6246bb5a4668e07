"""Shared fixtures: a config on a temp SQLite store, the app, its runtime, payloads."""
from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import pytest

from connector.config import load_config
from connector.runtime import Runtime
from connector.web import create_app

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"
TOKEN = "test-webhook-token"


def aircall_payload(name: str, token: str = TOKEN) -> dict:
    """A documented Aircall payload from tests/fixtures/aircall, with our token."""
    data = json.loads((FIXTURES / "aircall" / f"{name}.json").read_text())
    data["token"] = token
    return data


def base_config(tmp_path: Path, **sections) -> dict:
    cfg = {
        "store": {"url": f"sqlite:///{tmp_path / 'connector.db'}"},
        "aircall": {"webhook_tokens": [TOKEN]},
        "worker": {"poll_interval": 0.05, "backoff_initial": 0.01, "backoff_max": 0.05},
        "hubspot": {"mode": "dry-run", "mapping": str(ROOT / "mappings" / "hubspot.yaml")},
        "salesforce": {"mode": "dry-run", "mapping": str(ROOT / "mappings" / "salesforce.yaml")},
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key] = {**cfg[key], **value}
        else:
            cfg[key] = value
    return cfg


@pytest.fixture
def make_runtime(tmp_path):
    def make(**sections) -> Runtime:
        return Runtime(load_config(data=copy.deepcopy(base_config(tmp_path, **sections))))
    return make


@pytest.fixture
def runtime(make_runtime) -> Runtime:
    return make_runtime()


@pytest.fixture
def client(runtime):
    app = create_app(runtime.config, runtime)
    return app.test_client()


def services_required() -> bool:
    return os.environ.get("CONNECTOR_REQUIRE_SERVICES") == "1"
