"""SQLite writes out of the webhook's way: writers of several processes queue on a lock
file, and WAL checkpoints run on their own thread, never inside a commit."""
from __future__ import annotations

import json
import multiprocessing
import threading
import time

from connector.sqlite_writes import WriteLock
from connector.store import Store


def fill(store: Store, n: int) -> None:
    for i in range(n):
        store.ingest(dedup_key=f"k{i}", provider="aircall", message_id=f"m{i}", event_name="message.received",
                     status="received", direction="inbound", external="+15550000001", occurred_at=1.0,
                     payload=json.dumps({"id": i, "text": "x" * 3000}), targets=("hubspot", "salesforce"))


def test_commits_never_checkpoint_the_wal(tmp_path):
    db = tmp_path / "c.db"
    store = Store(f"sqlite:///{db}")
    store.create_schema()
    store.checkpointer.interval = 3600  # the thread starts but does not run within the test
    before = db.stat().st_size
    fill(store, 800)  # some 6,000 WAL frames: SQLite's default checkpoints every 1,000
    assert db.stat().st_size == before  # nothing copied into the database file by a commit
    assert (tmp_path / "c.db-wal").stat().st_size > 4_000_000
    store.close()


def test_the_checkpointer_thread_copies_the_wal_into_the_database(tmp_path):
    db = tmp_path / "c.db"
    store = Store(f"sqlite:///{db}")
    store.create_schema()
    store.checkpointer.interval = 0.05
    before = db.stat().st_size
    fill(store, 800)
    deadline = time.monotonic() + 10
    while db.stat().st_size <= before + 2_000_000 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert db.stat().st_size > before + 2_000_000
    with store.read() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM inbox").scalar() == 800
    store.close()


def _hold(path: str, entered, release, log: str) -> None:
    with WriteLock(path):
        entered.set()
        release.wait(10)
        with open(log, "a") as f:
            f.write("child released\n")


def test_sqlite_write_lock_queues_writers_of_other_processes(tmp_path):
    lock_path, log = str(tmp_path / "db.lock"), str(tmp_path / "log")
    ctx = multiprocessing.get_context("spawn")
    entered, release = ctx.Event(), ctx.Event()
    child = ctx.Process(target=_hold, args=(lock_path, entered, release, log))
    child.start()
    try:
        assert entered.wait(30)
        got = threading.Event()

        def take():
            with WriteLock(lock_path):
                with open(log, "a") as f:
                    f.write("parent acquired\n")
                got.set()

        t = threading.Thread(target=take)
        t.start()
        assert not got.wait(0.5)  # the other process holds it
        release.set()
        t.join(10)
        assert got.is_set()
        with open(log) as f:
            assert f.read().splitlines() == ["child released", "parent acquired"]
    finally:
        release.set()
        child.join(10)
