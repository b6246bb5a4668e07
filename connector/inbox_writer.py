"""Group commit for the webhook's one durable write.

Each webhook thread queues its event; if no thread of the process is writing, it
becomes the writer: it takes every queued event (inbox row plus one delivery row per
CRM), writes them in one transaction and wakes the others, whose events are then
committed; events queued meanwhile go in the next transaction, led by one of theirs.
So every event is still committed before its 200, but under a burst N requests share
one commit (one WAL flush on PostgreSQL, one WAL append on SQLite) instead of paying
for N. A transaction's fixed cost (SQLite writes every page it touches to the WAL,
about ten) is most of an event's, so while other requests of the process are being
answered the writer waits up to ``store.commit_delay`` for them to join (as
PostgreSQL's commit_delay and commit_siblings); a lone request writes at once.

Under gevent (gunicorn ``-k gevent``, README's setting) requests of a process take turns
on one thread and are never in flight together: the writer yields instead, until those
that arrived meanwhile have read their bodies and queued their events (cooperative.py).

The statements are plain SQL run on a DB-API connection the writer keeps: on this path
SQLAlchemy's per-execution bookkeeping cost more than the insert itself. Their column
lists are the tables' (tests/test_inbox_writer.py fails if a column is added without
them).
"""
from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Iterable

from . import cooperative, store as st

log = logging.getLogger("connector.webhooks")

INBOX_COLUMNS = ("dedup_key", "provider", "message_id", "event", "status", "direction",
                 "external", "received_at", "occurred_at", "payload")
DELIVERY_COLUMNS = ("inbox_id", "target", "message_id", "state", "attempts", "next_at", "updated_at")


class NotWritten(RuntimeError):
    """The request's event was not stored: its transaction did not complete."""


@dataclass
class _Slot:
    row: tuple
    targets: tuple[str, ...]
    done: bool = False
    inbox_id: int | None = None
    # Until its transaction commits, a slot carries the error its request would raise.
    error: BaseException | None = None
    # Held until the slot's request may go on: its event is written, or it is to lead
    # the next write. One wake-up per waiting request, never a herd.
    wake: threading.Lock = field(default_factory=threading.Lock)


# SQLite: a batch is one multi-row INSERT (rows appended per batch size), its own
# transaction; a TEMP trigger, which only the writer's connection has, queues each new
# row's deliveries inside it. One statement instead of four (BEGIN, two INSERTs, COMMIT):
# each is a round through the sqlite3 module, and the write lock is held meanwhile.
SQLITE_INBOX = f"INSERT INTO inbox ({', '.join(INBOX_COLUMNS)}) VALUES "
SQLITE_INBOX_ROW = f"({', '.join('?' * len(INBOX_COLUMNS))})"
SQLITE_TRIGGER = "temp.queue_deliveries"
MAX_BATCH = 500  # events per transaction: far below SQLite's 32,766 bound parameters
_INHERITED: list = []  # writers' connections made before a fork (InboxWriter._keep_inherited)


def _sqlite_trigger(targets: tuple[str, ...]) -> str:
    """The TEMP trigger that queues a delivery per target for each inbox row made (not for
    a duplicate: ON CONFLICT DO NOTHING makes no row, so the trigger does not fire)."""
    def literal(text: str) -> str:
        return "'" + text.replace("'", "''") + "'"

    rows = "; ".join(
        f"INSERT INTO deliveries ({', '.join(DELIVERY_COLUMNS)}) VALUES (NEW.id, {literal(target)},"
        f" NEW.message_id, {literal(st.PENDING)}, 0, NEW.received_at, NEW.received_at)" for target in targets)
    return f"CREATE TEMP TRIGGER queue_deliveries AFTER INSERT ON main.inbox BEGIN {rows}; END"

# PostgreSQL: the whole batch in one statement that is its own transaction, its rows as
# one JSON parameter: the driver's per-statement and per-parameter costs (which exceed the
# server's insert) are paid once per batch, and there is no BEGIN or COMMIT to send.
# Inbox rows go in dedup-key order: two processes inserting the same keys take their
# unique-index locks in one order, so they queue instead of deadlocking. Deliveries are
# made for the new rows only. Each key comes once (see _insert_postgresql).
_PG_TYPES = {"received_at": "float8", "occurred_at": "float8"}
PG_INGEST = f"""
WITH batch AS (
    SELECT * FROM json_to_recordset(%s::json)
        AS b({", ".join(f"{c} {_PG_TYPES.get(c, 'text')}" for c in INBOX_COLUMNS)}, targets text[])
), new AS (
    INSERT INTO inbox ({", ".join(INBOX_COLUMNS)})
    SELECT {", ".join(INBOX_COLUMNS)} FROM batch ORDER BY dedup_key
    ON CONFLICT (dedup_key) DO NOTHING RETURNING id, dedup_key, message_id
), queued AS (
    INSERT INTO deliveries ({", ".join(DELIVERY_COLUMNS)})
    SELECT new.id, target, new.message_id, '{st.PENDING}', 0, %s, %s
    FROM new JOIN batch USING (dedup_key), unnest(batch.targets) AS target
)
SELECT id, dedup_key FROM new"""


class InboxWriter:
    def __init__(self, store: "st.Store"):
        self.store = store
        self.sqlite = store.dialect == "sqlite"
        # SQLite: the store's own write lock, so ingest queues with every other writer.
        self._lock = store._write_lock if self.sqlite else contextlib.nullcontext()
        self._checkpointer = store.checkpointer
        self._queue: list[_Slot] = []
        self._mutex = threading.Lock()  # guards the queue and whether a write is under way
        self._writing = False
        self._conn = None  # the pooled DB-API connection this writer keeps checked out
        self._conn_pid = 0
        self._trigger_targets = None  # SQLite: the targets the kept connection's trigger queues
        self._window = 0.0
        self._others = lambda: 0  # requests of this process being answered besides the caller
        self._joined = threading.Event()  # set when as many events are queued as were awaited
        self._awaited = 0

    def join_window(self, seconds: float, others) -> None:
        """Wait up to ``seconds`` for company while ``others()`` says requests are in flight."""
        self._window, self._others = seconds, others

    def ingest(self, *, dedup_key: str, provider: str, message_id: str, event_name: str,
               status: str, direction: str, external: str, occurred_at: float,
               payload: str, targets: Iterable[str]) -> int | None:
        """Commit the event and its deliveries; its inbox id, or None for a duplicate."""
        slot = _Slot((dedup_key, provider, message_id, event_name, status, direction, external,
                      time.time(), occurred_at, payload), tuple(targets),
                     error=NotWritten("the event was not stored: its transaction did not complete"))
        slot.wake.acquire()
        with self._mutex:
            self._queue.append(slot)
            lead = not self._writing
            self._writing = True
            if len(self._queue) == self._awaited:
                self._joined.set()
        if not lead:
            slot.wake.acquire()  # released by the writer of this event, or to lead the next
        if not slot.done:
            # Lead: give the requests in flight a moment to join, then take everything
            # queued so far and write it in one transaction.
            self._await_company()
            with self._mutex:
                batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
            try:
                with self._lock:
                    self._write(batch)
            finally:
                for other in batch:
                    other.done = True  # written, or failed with the error it carries
                    if other is not slot:
                        other.wake.release()
                with self._mutex:
                    if self._queue:
                        self._queue[0].wake.release()  # queued meanwhile: it leads the next write
                    else:
                        self._writing = False
            self._log_stored(batch)
        if slot.error is not None:
            raise slot.error
        return slot.inbox_id

    # -- the leader's side ---------------------------------------------------------------
    @staticmethod
    def _log_stored(batch: list[_Slot]) -> None:
        """One line per transaction, naming each event stored: under a burst a line per
        event was a fifth of a web process's work (bench/throughput.py)."""
        if not log.isEnabledFor(logging.INFO):
            return
        stored = [f"{s.row[1]} {s.row[3]} message {s.row[2]} as event {s.inbox_id}"
                  for s in batch if s.error is None and s.inbox_id is not None]
        if stored:
            log.info("stored %s", stored[0] if len(stored) == 1 else f"{len(stored)} events: " + "; ".join(stored))

    def _await_company(self) -> None:
        if self._window <= 0:
            return
        if cooperative.active():
            # Greenlets: the requests that arrived meanwhile run when this one yields, and
            # each queues its event before it waits; yield until no more come.
            seen = -1
            while len(self._queue) != seen and len(self._queue) < MAX_BATCH:
                seen = len(self._queue)
                cooperative.yield_now()
            return
        others = self._others()
        if others <= 0:
            return
        with self._mutex:
            self._awaited = min(1 + others, MAX_BATCH)  # every request in flight, queued
            if len(self._queue) >= self._awaited:
                return
            self._joined.clear()
        self._joined.wait(self._window)
        with self._mutex:
            self._awaited = 0

    def _write(self, batch: list[_Slot]) -> None:
        try:
            try:
                self._commit(batch)
            except Exception:
                if self._conn is not None:
                    raise
                # The kept connection had broken (database restarted, idle connection
                # dropped): once more on a fresh one. Safe: a repeated event is a duplicate.
                self._commit(batch)
        except Exception as exc:
            if len(batch) == 1 or self._conn is None:
                # One event, or no database to talk to even after reconnecting: retrying
                # each event alone would only make every waiting request wait longer.
                for slot in batch:
                    slot.error = exc
            else:
                # One bad event must not fail the others: each alone, in its own transaction.
                for slot in batch:
                    try:
                        self._commit([slot])
                    except Exception as one:
                        slot.error = one

    def _commit(self, batch: list[_Slot]) -> None:
        conn = self._connection()
        try:
            ids = self._insert_sqlite(conn, batch) if self.sqlite else self._insert_postgresql(conn, batch)
        except BaseException as exc:
            self._discard(conn, exc)
            raise
        for slot, inbox_id in zip(batch, ids):
            slot.inbox_id, slot.error = inbox_id, None

    def _insert_sqlite(self, conn, batch: list[_Slot]) -> list[int | None]:
        self._checkpointer.ensure_running()
        # Every event of a process names the same targets (they come from its config); should
        # a batch mix them, each run is one statement and the batch one explicit transaction.
        runs = [list(run) for _, run in itertools.groupby(batch, key=lambda slot: slot.targets)]
        cur = conn.cursor()
        try:
            if len(runs) > 1:
                cur.execute("BEGIN IMMEDIATE")
            ids = []
            for run in runs:
                self._queue_deliveries_for(cur, run[0].targets)
                cur.execute(SQLITE_INBOX + ", ".join([SQLITE_INBOX_ROW] * len(run))
                            + " ON CONFLICT (dedup_key) DO NOTHING", [v for slot in run for v in slot.row])
                new = self._new_ids(cur, run)
                ids += [new.pop(slot.row[0], None) for slot in run]  # a key twice: the first wins
            if len(runs) > 1:
                conn.commit()
            return ids
        finally:
            cur.close()

    def _queue_deliveries_for(self, cur, targets: tuple[str, ...]) -> None:
        """Make the kept connection's trigger queue deliveries for ``targets``."""
        if self._trigger_targets == targets:
            return
        cur.execute(f"DROP TRIGGER IF EXISTS {SQLITE_TRIGGER}")
        self._trigger_targets = ()
        if targets:
            cur.execute(_sqlite_trigger(targets))
            self._trigger_targets = targets

    @staticmethod
    def _new_ids(cur, batch: list[_Slot]) -> dict[str, int]:
        """Dedup key -> id of the rows the INSERT just made (not RETURNING: each returned
        row is one more sqlite3 step, each step lets go of the GIL, and the write lock is
        held until it comes back). Each new row's id is one above the table's largest, in
        VALUES order, and no one else writes meanwhile: the k rows made are last-k+1..last."""
        made, last = cur.rowcount, cur.lastrowid
        if made == len(batch):  # no duplicate: the ids follow the batch's order
            return {slot.row[0]: last - made + 1 + i for i, slot in enumerate(batch)}
        if made <= 0:
            return {}
        return dict(cur.execute("SELECT dedup_key, id FROM inbox WHERE id BETWEEN ? AND ?",
                                (last - made + 1, last)).fetchall())

    def _insert_postgresql(self, conn, batch: list[_Slot]) -> list[int | None]:
        now = time.time()
        pg = conn.driver_connection
        if not pg.autocommit:
            pg.autocommit = True  # the statement commits itself (see PG_INGEST)
        # A key twice in one batch: the first is written, as on SQLite; the others are
        # duplicates (the statement alone would keep either).
        first = {}
        for slot in batch:
            first.setdefault(slot.row[0], slot)
        rows = json.dumps([dict(zip(INBOX_COLUMNS, slot.row), targets=slot.targets) for slot in first.values()],
                          ensure_ascii=False)  # UTF-8 as sent: shorter than \u escapes
        new = {key: inbox_id for inbox_id, key in pg.execute(PG_INGEST, (rows, now, now)).fetchall()}
        return [new.pop(slot.row[0], None) for slot in batch]

    # -- the kept connection ------------------------------------------------------------
    def _connection(self):
        # After a fork the parent's connection is the parent's: never share a socket.
        if self._conn is None or self._conn_pid != os.getpid():
            self._keep_inherited()
            self._conn = self.store.engine.raw_connection()
            self._conn_pid = os.getpid()
            self._trigger_targets = None
        return self._conn

    def _keep_inherited(self) -> None:
        """A connection made before a fork is kept, unused, for the life of this process:
        dropped, it would go back to this process's pool (with its SQLite trigger, which
        would queue deliveries for any other insert), and closed, it would let go of
        SQLite's locks, which belong to the process, not to one connection."""
        if self._conn is not None and self._conn_pid != os.getpid():
            _INHERITED.append(self._conn)
            self._conn = None

    def _discard(self, conn, exc: BaseException | None) -> None:
        """Roll back; a connection that broke goes back to the pool invalidated."""
        self._trigger_targets = None  # a rollback may have taken its trigger with it
        try:
            conn.rollback()
            return
        except Exception:
            pass
        try:
            conn.invalidate(exc)
        finally:
            self._conn = None

    def close(self) -> None:
        deadline = time.monotonic() + 10
        while self._writing and time.monotonic() < deadline:
            time.sleep(0.01)  # a write under way finishes on the connection first
        with self._mutex:
            self._keep_inherited()
            if self._conn is not None:
                if self.sqlite:
                    self._conn.invalidate()  # closed: its trigger must not serve the pool's other users
                else:
                    try:  # back to the pool as the pool's other users expect it: transactional
                        self._conn.driver_connection.autocommit = False
                    except Exception as exc:
                        self._conn.invalidate(exc)
                self._conn.close()
            self._conn = None
