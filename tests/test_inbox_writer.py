"""The webhook's write under concurrency: group commit, one bad event, broken connections."""
from __future__ import annotations

import json
import threading
import time

import pytest
from sqlalchemy import func, select, text

from conftest import base_config
from connector.config import ConfigError, load_config
from connector.inbox_writer import _Slot
from connector.store import Store, deliveries, inbox


def ingest(store: Store, message_id: str, provider: str | None = "aircall"):
    return store.ingest(dedup_key=f"aircall:{message_id}:received", provider=provider,
                        message_id=message_id, event_name="message.received", status="received",
                        direction="inbound", external="+15550000001", occurred_at=1.0,
                        payload=json.dumps({"id": message_id}), targets=("hubspot", "salesforce"))


def ids_point_at_their_rows(store: Store, results: dict) -> bool:
    """Each id handed back is the inbox row of that message, with its deliveries."""
    with store.read() as conn:
        rows = dict(conn.execute(select(inbox.c.id, inbox.c.message_id)).all())
        queued = conn.execute(select(deliveries.c.inbox_id, deliveries.c.message_id)).all()
    return (all(rows.get(i) == mid for mid, i in results.items() if i is not None)
            and all(rows[i] == mid for i, mid in queued))


def counts(store: Store) -> tuple[int, int]:
    with store.read() as conn:
        return (conn.execute(select(func.count()).select_from(inbox)).scalar(),
                conn.execute(select(func.count()).select_from(deliveries)).scalar())


def writer(store: Store):
    if store.inbox_writer._conn is None:
        ingest(store, "warm-up")  # opens the writer's connection
    return store.inbox_writer


def queued_while_locked(store: Store, calls: list) -> tuple[dict, dict]:
    """Run ``calls`` (message id, provider) in threads while a write is in progress,
    end it once all are queued; (results by id, errors by id)."""
    w = writer(store)
    results, errors = {}, {}

    def run(mid, provider):
        try:
            results[mid] = ingest(store, mid, provider)
        except Exception as exc:
            errors[mid] = exc

    threads = [threading.Thread(target=run, args=c) for c in calls]
    with w._mutex:
        w._writing = True  # as if another request were being written
    for t in threads:
        t.start()
    deadline = time.monotonic() + 10
    while len(w._queue) < len(calls) and time.monotonic() < deadline:
        time.sleep(0.005)
    with w._mutex:
        assert len(w._queue) == len(calls)
        w._queue[0].wake.release()  # that write ends: the first queued leads the next
    for t in threads:
        t.join(10)
    return results, errors


def test_requests_queued_during_a_write_share_the_next_commit(store):
    w = writer(store)
    batches = []
    real = w._commit
    w._commit = lambda batch: (batches.append(len(batch)), real(batch))[1]
    calls = [(f"m{i}", "aircall") for i in range(6)] + [("m0", "aircall")]  # m0 twice
    results, errors = queued_while_locked(store, calls)
    assert errors == {}
    assert batches == [7]  # everything queued behind the lock went in one transaction
    assert sorted(results) == [f"m{i}" for i in range(6)]
    assert all(isinstance(results[f"m{i}"], int) for i in range(1, 6))
    assert ids_point_at_their_rows(store, results)
    assert counts(store) == (1 + 6, 2 * (1 + 6))
    assert ingest(store, "m3") is None  # a redelivery of a committed event is a duplicate


def test_a_batch_with_redeliveries_of_stored_events_gets_the_right_ids(store):
    w = writer(store)
    ingest(store, "old-1"), ingest(store, "old-2")
    batches = []
    real = w._commit
    w._commit = lambda batch: (batches.append(len(batch)), real(batch))[1]
    calls = [(m, "aircall") for m in ("new-1", "old-1", "new-2", "old-2", "new-3")]
    results, errors = queued_while_locked(store, calls)
    assert errors == {} and batches == [5]
    assert results["old-1"] is None and results["old-2"] is None  # duplicates
    assert all(isinstance(results[m], int) for m in ("new-1", "new-2", "new-3"))
    assert ids_point_at_their_rows(store, results)
    assert counts(store) == (6, 12)


def test_a_key_twice_in_one_batch_keeps_the_first_on_every_store(store):
    w = writer(store)

    def slot(key, payload):
        return _Slot((key, "aircall", key, "message.received", "received", "inbound", "+15550000001",
                      1.0, 1.0, payload), ("hubspot", "salesforce"))

    firsts = [slot(f"k{i}", f"first {i} é") for i in range(100)]
    batch = firsts + [slot(f"k{i}", f"second {i}") for i in range(0, 100, 2)] + [slot("once", "only")]
    w._commit(batch)
    assert all(isinstance(s.inbox_id, int) for s in firsts) and isinstance(batch[-1].inbox_id, int)
    assert all(s.inbox_id is None for s in batch[100:-1])  # the repeats are the duplicates
    with store.read() as conn:
        payloads = dict(conn.execute(select(inbox.c.id, inbox.c.payload)).all())
    assert [payloads[s.inbox_id] for s in firsts] == [f"first {i} é" for i in range(100)]
    assert counts(store) == (1 + 101, 2 * (1 + 101))


def test_one_bad_event_fails_alone_and_the_rest_are_stored(store):
    calls = [("good-1", "aircall"), ("bad", None), ("good-2", "aircall"), ("good-3", "aircall")]
    results, errors = queued_while_locked(store, calls)
    assert list(errors) == ["bad"] and "provider" in str(errors["bad"])
    assert sorted(results) == ["good-1", "good-2", "good-3"]
    assert all(isinstance(v, int) for v in results.values())
    assert counts(store) == (1 + 3, 2 * (1 + 3))
    with store.read() as conn:
        stored = set(conn.execute(select(inbox.c.message_id)).scalars())
    assert stored == {"warm-up", "good-1", "good-2", "good-3"}


def test_concurrent_redeliveries_are_stored_once(store):
    out: dict[str, list] = {}
    lock = threading.Lock()

    def run(k):
        for i in range(30):
            mid = f"m{i}"
            got = ingest(store, mid)
            with lock:
                out.setdefault(mid, []).append(got)

    threads = [threading.Thread(target=run, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for mid, got in out.items():
        assert len(got) == 6
        assert sum(g is not None for g in got) == 1, (mid, got)  # one "stored", five duplicates
    assert counts(store) == (30, 60)


def test_a_broken_connection_is_replaced_and_the_event_stored(pg_url):
    store = Store(pg_url)
    store.create_schema()
    w = writer(store)
    pid = w._conn.driver_connection.info.backend_pid
    with store.engine.connect() as conn:
        conn.execute(text("SELECT pg_terminate_backend(:p)"), {"p": pid})
        conn.commit()
    time.sleep(0.2)
    assert isinstance(ingest(store, "after-restart"), int)
    assert w._conn.driver_connection.info.backend_pid != pid
    assert counts(store) == (2, 4)
    store.close()


def test_a_write_that_cannot_start_fails_its_requests_and_the_next_one_works(store):
    w = writer(store)
    real_lock = w._lock

    class Broken:
        def __enter__(self):
            raise OSError("lock file unwritable")

        def __exit__(self, *exc):
            return False

    w._lock = Broken()
    results, errors = queued_while_locked(store, [("a", "aircall"), ("b", "aircall"), ("c", "aircall")])
    assert results == {} and sorted(errors) == ["a", "b", "c"]
    assert all(isinstance(e, (OSError, RuntimeError)) for e in errors.values())
    assert counts(store) == (1, 2)  # nothing half-stored
    w._lock = real_lock
    assert isinstance(ingest(store, "a"), int)  # Aircall's retry of it is stored
    assert counts(store) == (2, 4)


def test_the_writer_sql_names_every_column_an_event_needs():
    from connector.inbox_writer import DELIVERY_COLUMNS, INBOX_COLUMNS
    assert list(INBOX_COLUMNS) == [c.name for c in inbox.columns if c.name != "id"]
    assert set(DELIVERY_COLUMNS) == {c.name for c in deliveries.columns if not c.nullable and c.name != "id"}


def test_a_lone_request_does_not_wait_for_company(store):
    w = writer(store)
    waits = []
    w._joined.wait = lambda timeout=None: waits.append(timeout)
    w.join_window(30.0, lambda: 0)  # nothing else in flight
    assert isinstance(ingest(store, "alone"), int)
    assert waits == []
    assert counts(store) == (2, 4)


def test_requests_in_flight_join_the_leaders_transaction(store):
    w = writer(store)
    batches = []
    real = w._commit
    w._commit = lambda batch: (batches.append(len(batch)), real(batch))[1]
    w.join_window(30.0, lambda: 2)  # two more requests of this process are being answered
    results = {}
    threads = [threading.Thread(target=lambda m=m: results.update({m: ingest(store, m)}))
               for m in ("j1", "j2", "j3")]
    started = time.monotonic()
    for t in threads:
        t.start()
        time.sleep(0.05)  # they arrive one after another, while the first one waits
    for t in threads:
        t.join(20)
    assert batches == [3]  # one transaction, written as soon as all three were queued
    assert time.monotonic() - started < 20  # not after the whole 30 s window
    assert sorted(results) == ["j1", "j2", "j3"] and all(isinstance(v, int) for v in results.values())
    assert counts(store) == (4, 8)


def test_company_that_never_comes_only_costs_the_window(store):
    w = writer(store)
    w.join_window(0.05, lambda: 5)  # in flight, but none of them will write
    assert isinstance(ingest(store, "waited"), int)
    assert counts(store) == (2, 4)


def test_on_postgresql_the_kept_connection_goes_back_to_the_pool_transactional(pg_url):
    # The writer's one statement commits itself; other users of the pool need transactions.
    s = Store(pg_url)
    s.create_schema()
    try:
        w = writer(s)
        kept = w._conn.driver_connection
        assert kept.autocommit is True
        w.close()
        assert kept.autocommit is False
        assert isinstance(ingest(s, "after-close"), int)  # the writer takes a connection again
        assert counts(s) == (2, 4)
    finally:
        s.close()


def test_the_commit_delay_comes_from_config_and_a_bad_one_names_the_key(tmp_path, make_runtime):
    rt = make_runtime(store={"url": f"sqlite:///{tmp_path / 'c.db'}", "commit_delay": 0.004})
    assert rt.store.inbox_writer._window == 0.004
    rt.in_flight = 3
    assert rt.store.inbox_writer._others() == 2  # the requests being answered besides the writer
    with pytest.raises(ConfigError) as exc:
        load_config(data=base_config(tmp_path, store={"commit_delay": 1}))
    assert any(e.startswith("store.commit_delay: Input should be less than or equal to 0.05")
               for e in exc.value.errors), exc.value.errors


def test_one_log_line_per_transaction_names_every_event_stored(store, caplog):
    w = writer(store)
    ingest(store, "before")  # a first event of its own: the duplicate below is one
    caplog.clear()
    with caplog.at_level("INFO", logger="connector.webhooks"):
        results, errors = queued_while_locked(store, [("l1", "aircall"), ("before", "aircall"), ("l2", "aircall")])
        ingest(store, "alone")
    assert not errors and results["before"] is None
    batch, alone = [r.getMessage() for r in caplog.records if r.name == "connector.webhooks"]
    head, _, events = batch.partition(": ")
    assert head == "stored 2 events"  # the duplicate is not among them
    assert sorted(events.split("; ")) == [f"aircall message.received message {m} as event {results[m]}"
                                          for m in ("l1", "l2")]
    assert alone == f"stored aircall message.received message alone as event {max(results['l1'], results['l2']) + 1}"
    assert w._queue == []


def _slot(key: str, targets: tuple[str, ...]) -> _Slot:
    return _Slot((key, "aircall", key, "message.received", "received", "inbound", "+15550000001",
                  1.0, 1.0, "{}"), targets)


def test_each_event_gets_the_deliveries_of_its_own_targets_within_and_across_batches(store):
    """SQLite queues deliveries through a trigger on the writer's connection, remade when
    the targets change; a batch that mixes targets (a process whose config changed) is
    still one transaction, each event with its own."""
    w = writer(store)
    both, hub, none = ("hubspot", "salesforce"), ("hubspot",), ()
    first = [_slot("a1", hub), _slot("a2", hub), _slot("a1", hub)]
    mixed = [_slot("b1", both), _slot("b2", none), _slot("a2", both), _slot("b3", hub), _slot("b4", hub)]
    w._commit(first)
    w._commit(mixed)
    w._commit([_slot("c1", both)])
    assert first[2].inbox_id is None and mixed[2].inbox_id is None  # duplicates: no row, no delivery
    with store.read() as conn:
        made = conn.execute(select(deliveries.c.inbox_id, deliveries.c.target, deliveries.c.message_id,
                                   deliveries.c.state, deliveries.c.attempts)).all()
        rows = dict(conn.execute(select(inbox.c.message_id, inbox.c.id)).all())
    by_message = {}
    for inbox_id, target, message_id, state, attempts in made:
        assert rows[message_id] == inbox_id and (state, attempts) == ("pending", 0)
        by_message.setdefault(message_id, set()).add(target)
    assert by_message == {"warm-up": set(both), "a1": {"hubspot"}, "a2": {"hubspot"}, "b1": set(both),
                          "b3": {"hubspot"}, "b4": {"hubspot"}, "c1": set(both)}
    assert {s.row[0]: s.inbox_id for s in first[:2] + mixed if s.inbox_id} == {
        k: rows[k] for k in ("a1", "a2", "b1", "b2", "b3", "b4")}


def test_a_failed_mixed_batch_leaves_nothing_and_the_next_write_queues_deliveries(tmp_path):
    s = Store(f"sqlite:///{tmp_path / 'store.db'}")
    s.create_schema()
    try:
        w = writer(s)
        bad = _Slot(("x2", None, "x2", "message.received", "received", "inbound", "+1", 1.0, 1.0, "{}"), ())
        with pytest.raises(Exception, match="provider"):
            w._commit([_slot("x1", ("hubspot",)), bad])  # the second run fails: the first is undone
        assert counts(s) == (1, 2)  # the warm-up only
        w._commit([_slot("x3", ("hubspot", "salesforce"))])
        assert counts(s) == (2, 4)
    finally:
        s.close()


def test_the_sqlite_writers_connection_is_closed_with_its_trigger_not_pooled(tmp_path):
    s = Store(f"sqlite:///{tmp_path / 'store.db'}")
    s.create_schema()
    try:
        w = writer(s)
        kept = w._conn.driver_connection
        assert kept.execute("SELECT name FROM sqlite_temp_master WHERE type = 'trigger'").fetchall() == [
            ("queue_deliveries",)]
        w.close()
        with pytest.raises(Exception, match="closed"):
            kept.execute("SELECT 1")
        # Whatever the pool hands out next has no trigger: a plain insert queues nothing.
        with s.engine.begin() as conn:
            conn.execute(inbox.insert().values(
                dedup_key="plain", provider="aircall", message_id="plain", event="message.received",
                status="received", direction="inbound", external="+1", received_at=1.0, occurred_at=1.0,
                payload="{}"))
        assert counts(s) == (2, 2)
    finally:
        s.close()


def test_after_a_fork_the_parents_connection_never_serves_the_child(tmp_path):
    """A writer's connection made before a fork (with its SQLite trigger) is kept aside in
    the child: not returned to the child's pool, where an outbound send's own insert would
    get the trigger's deliveries on top of its own (a UNIQUE failure), and not closed."""
    import os

    s = Store(f"sqlite:///{tmp_path / 'store.db'}")
    s.create_schema()
    try:
        ingest(s, "parent")
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: report, never return into pytest
            code = 1
            try:
                ingest(s, "child")
                import gc
                gc.collect()
                held = [s.engine.raw_connection() for _ in range(6)]  # every idle one, and more
                triggers = [c.driver_connection.execute(
                    "SELECT name FROM sqlite_temp_master WHERE type = 'trigger'").fetchall() for c in held]
                for c in held:
                    c.close()
                assert triggers == [[]] * 6, triggers
                for i in range(3):
                    with s.write() as conn:
                        s._ingest(conn, dedup_key=f"out{i}", provider="aircall", message_id=f"out{i}",
                                  event_name="message.sent", status="sent", direction="outbound",
                                  external="+1", occurred_at=1.0, payload="{}", targets=("hubspot",))
                os.write(write_end, b"ok")
                code = 0
            except BaseException as exc:
                os.write(write_end, repr(exc).encode()[:500])
            finally:
                os._exit(code)
        os.close(write_end)
        _, status = os.waitpid(pid, 0)
        said = os.read(read_end, 1000).decode()
        assert (said, status) == ("ok", 0)
        with s.read() as conn:
            made = conn.execute(select(deliveries.c.message_id, func.count()).group_by(
                deliveries.c.message_id)).all()
        assert dict(made) == {"parent": 2, "child": 2, "out0": 1, "out1": 1, "out2": 1}
        assert ingest(s, "parent-again") is not None  # the parent's writer still works
    finally:
        s.close()
