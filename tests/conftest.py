"""Shared fixtures: a config on a temp SQLite store, the app, its runtime, payloads."""
from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import pytest

from connector.config import load_config
from connector.render import default_media_views
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
        rt = Runtime(load_config(data=copy.deepcopy(base_config(tmp_path, **sections))))
        if "media" not in sections:
            # The fixtures' media URLs (media.aircall.example) do not resolve: unless a test
            # configures `media` (tests/test_media.py serves real files), attachments are
            # judged by their declared types and keep the provider's links.
            rt.pipeline.media = lambda event, _d: (default_media_views(event), "")
        return rt
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


# -- real PostgreSQL and Redis for the scaled-out mode ---------------------------------
PG_URL = os.environ.get("CONNECTOR_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("CONNECTOR_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


def _unavailable(what: str, exc: Exception):
    reason = f"{what} not reachable ({type(exc).__name__}: {str(exc).strip()[:160]})"
    if services_required():
        pytest.fail(f"{reason}, and CONNECTOR_REQUIRE_SERVICES=1")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def pg_database():
    """A PostgreSQL database of our own for this test session, dropped at the end."""
    import uuid

    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    base = make_url(PG_URL)
    name = f"connector_test_{uuid.uuid4().hex[:10]}"
    admin = create_engine(base, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 3})
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:
        admin.dispose()
        _unavailable(f"PostgreSQL at {base.render_as_string(hide_password=True)}", exc)
    try:
        yield base.set(database=name)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def pg_url(pg_database) -> str:
    """An empty schema in the session's database; its URL puts it first on search_path."""
    import uuid

    from sqlalchemy import create_engine, text

    schema = f"t_{uuid.uuid4().hex[:10]}"
    engine = create_engine(pg_database, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    url = pg_database.update_query_dict({"options": f"-csearch_path={schema}"})
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with engine.connect() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path):
    """A new store, once on SQLite and once on the session's PostgreSQL."""
    from connector.store import Store

    url = (f"sqlite:///{tmp_path / 'store.db'}" if request.param == "sqlite"
           else request.getfixturevalue("pg_url"))
    s = Store(url)
    s.create_schema()
    yield s
    s.close()


@pytest.fixture
def redis_url():
    """The test Redis, with a key prefix of our own (``?prefix=``); keys removed after."""
    import uuid

    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=3)
    try:
        client.ping()
    except Exception as exc:
        _unavailable(f"Redis at {REDIS_URL}", exc)
    prefix = f"connector-test-{uuid.uuid4().hex[:10]}"
    try:
        yield REDIS_URL, prefix
    finally:
        for key in client.scan_iter(f"{prefix}:*"):
            client.delete(key)
        client.close()
