"""The store pieces the Salesforce writer relies on, on SQLite and on a real PostgreSQL:
one "being created" marker per number however many workers race for it."""
from __future__ import annotations

import threading
import time


def test_one_worker_wins_the_create_marker(store):
    wins: list[bool] = []
    barrier = threading.Barrier(8)

    def race():
        barrier.wait()
        wins.append(store.reserve_contact("salesforce", "+14155550142", "creating", 120))

    threads = [threading.Thread(target=race) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(wins) == [False] * 7 + [True]
    assert store.get_contact("salesforce", "+14155550142") == {"record_type": "creating", "record_id": None}


def test_marker_is_free_again_once_expired_or_released(store):
    now = time.time()
    assert store.reserve_contact("salesforce", "+1", "creating", 120, now=now)
    assert not store.reserve_contact("salesforce", "+1", "creating", 120, now=now + 60)
    assert store.reserve_contact("salesforce", "+1", "creating", 120, now=now + 121)  # its worker died
    store.put_contact("salesforce", "+1", "creating", None, -1)  # released after a failed create
    assert store.reserve_contact("salesforce", "+1", "creating", 120)
    store.put_contact("salesforce", "+1", "Lead", "00Q1", 3600)  # created: the marker is gone
    assert not store.reserve_contact("salesforce", "+1", "creating", 120)
    assert store.get_contact("salesforce", "+1") == {"record_type": "Lead", "record_id": "00Q1"}


def test_mapped_object_ids(store):
    store.save_record("salesforce", "m1", object_type="Task", object_id="00T1", status="received")
    store.save_record("hubspot", "m2", object_type="communications", object_id="00T2", status="received")
    assert store.mapped_object_ids("salesforce", ["00T1", "00T2", "00T3"]) == {"00T1"}
    assert store.mapped_object_ids("salesforce", []) == set()
