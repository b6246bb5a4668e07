"""Schema through Alembic: empty databases upgrade, every table has a migration."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, inspect

from connector import migrations
from connector.store import Store, make_engine, metadata

from conftest import ROOT, TOKEN


def _db_cli(tmp_path, url: str, *args: str) -> subprocess.CompletedProcess:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"store:\n  url: '{url}'\naircall:\n  webhook_tokens: [{TOKEN}]\n")
    return subprocess.run([sys.executable, "-m", "connector.cli", "db", *args, "--config", str(cfg)],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)


def test_db_upgrade_creates_every_table_in_an_empty_sqlite_database(tmp_path):
    url = f"sqlite:///{tmp_path / 'new' / 'store.db'}"
    before = _db_cli(tmp_path, url, "current")
    assert before.returncode == 1 and "run `mms-connector db upgrade`" in before.stdout

    up = _db_cli(tmp_path, url, "upgrade")
    assert up.returncode == 0, up.stderr
    assert "upgraded (empty) -> " in up.stdout
    engine = create_engine(url)
    assert set(inspect(engine).get_table_names()) == set(metadata.tables) | {"alembic_version"}
    assert migrations.current(engine) == migrations.heads()

    again = _db_cli(tmp_path, url, "upgrade")
    assert again.returncode == 0 and "already at" in again.stdout
    assert _db_cli(tmp_path, url, "current").returncode == 0


def test_migrations_match_the_tables_in_store_py(tmp_path):
    """A table or column added to connector/store.py without a migration fails here:
    run `mms-connector db revision -m "..."` and commit the file it writes."""
    engine = make_engine(f"sqlite:///{tmp_path / 'store.db'}")
    migrations.upgrade(engine)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
    assert diff == []


def test_database_made_before_migrations_is_adopted_not_recreated(tmp_path):
    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = make_engine(url)
    baseline = [t for t in metadata.sorted_tables if t.name in ("inbox", "deliveries", "crm_records", "contacts")]
    metadata.create_all(engine, tables=baseline)
    old = Store(url)
    old.ingest(dedup_key="k1", provider="aircall", message_id="m1", event_name="message.received",
               status="received", direction="inbound", external="+15550000001", occurred_at=1.0,
               payload="{}", targets=["hubspot"])

    Store(url).create_schema()  # what serve / worker do at start

    assert migrations.current(engine) == migrations.heads()
    assert [e["message_id"] for e in Store(url).list_events()] == ["m1"]


def test_db_upgrade_on_an_empty_postgresql_schema(tmp_path, pg_url):
    up = _db_cli(tmp_path, pg_url, "upgrade")
    assert up.returncode == 0, up.stderr
    engine = create_engine(pg_url)
    assert set(inspect(engine).get_table_names()) == set(metadata.tables) | {"alembic_version"}
    assert migrations.current(engine) == migrations.heads()
    with engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), metadata) == []
    engine.dispose()


def test_dry_run_records_of_earlier_versions_move_apart_from_live_ones(tmp_path):
    from sqlalchemy import select

    from connector.store import crm_records
    url = f"sqlite:///{tmp_path / 'store.db'}"
    engine = make_engine(url)
    migrations.upgrade(engine, "6a98bd146ee3")  # before dry-run records had their own key
    old = Store(url)
    old.save_record("hubspot", "m1", object_type="communications", object_id="dry-run-m1", status="sent")
    old.save_record("salesforce", "m1", object_type="Task", object_id="00T000000000001AAA", status="sent")
    migrations.upgrade(engine)
    with engine.connect() as conn:
        rows = sorted((r.target, r.object_id) for r in conn.execute(select(crm_records)))
    assert rows == [("hubspot:dry-run", "dry-run-m1"), ("salesforce", "00T000000000001AAA")]


def test_db_revision_with_no_table_change_writes_nothing():
    versions = Path(migrations.__file__).parent / "versions"
    before = set(versions.iterdir())
    try:
        assert migrations.revision("nothing changed") == ""
    finally:
        for stray in set(versions.iterdir()) - before:  # never leave a file in the source tree
            stray.unlink()
    assert set(versions.iterdir()) == before
