"""Group commit for the webhook's one durable write.

Each webhook thread queues its event, then takes the process's ingest lock. Whoever
holds it writes every queued event (inbox row plus one delivery row per CRM) in one
transaction and wakes the others, whose events are then already committed. So every
event is still committed before its 200, but under a burst N requests share one commit
(one WAL flush on PostgreSQL, one WAL append on SQLite) instead of paying for N; a lone
request writes at once, with no waiting for company.

The statements are compiled once from the table definitions and run on a DB-API
connection the writer keeps: on this path SQLAlchemy's per-execution bookkeeping cost
more than the insert itself.
"""
from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from typing import Any, Iterable

from . import store as st

INBOX_COLUMNS = ("dedup_key", "provider", "message_id", "event", "status", "direction",
                 "external", "received_at", "occurred_at", "payload")
DELIVERY_COLUMNS = ("inbox_id", "target", "message_id", "state", "attempts", "next_at", "updated_at")


NOT_WRITTEN = RuntimeError("the event was not stored: its transaction did not complete")


@dataclass
class _Slot:
    row: tuple
    targets: tuple[str, ...]
    done: bool = False
    inbox_id: int | None = None
    # Until its transaction commits, a slot carries the error its request would raise.
    error: BaseException | None = None


def _compiled(stmt, dialect, columns: tuple[str, ...]) -> tuple[str, bool]:
    """(SQL text, whether the driver takes a tuple) for ``stmt`` with these columns bound."""
    compiled = stmt.compile(dialect=dialect, column_keys=list(columns))
    if compiled.positional:
        assert tuple(compiled.positiontup) == columns, compiled.positiontup
        return compiled.string, True
    return compiled.string, False


class InboxWriter:
    def __init__(self, store: "st.Store"):
        self.store = store
        self.sqlite = store.dialect == "sqlite"
        dialect = store.engine.dialect
        self._inbox_sql, self._positional = _compiled(store._insert_inbox, dialect, INBOX_COLUMNS)
        self._delivery_sql, _ = _compiled(st.deliveries.insert(), dialect, DELIVERY_COLUMNS)
        # SQLite: the store's own write lock, so ingest queues with every other writer.
        self._lock = store._write_lock if self.sqlite else threading.Lock()
        self._queue: list[_Slot] = []
        self._queue_lock = threading.Lock()
        self._conn = None  # the pooled DB-API connection this writer keeps checked out
        self._conn_pid = 0

    def ingest(self, *, dedup_key: str, provider: str, message_id: str, event_name: str,
               status: str, direction: str, external: str, occurred_at: float,
               payload: str, targets: Iterable[str]) -> int | None:
        """Commit the event and its deliveries; its inbox id, or None for a duplicate."""
        slot = _Slot((dedup_key, provider, message_id, event_name, status, direction, external,
                      time.time(), occurred_at, payload), tuple(targets), error=NOT_WRITTEN)
        with self._queue_lock:
            self._queue.append(slot)
        with self._lock:
            if not slot.done:
                with self._queue_lock:
                    batch, self._queue = self._queue, []
                self._write(batch)
        if slot.error is not None:
            raise slot.error
        return slot.inbox_id

    # -- the leader's side ---------------------------------------------------------------
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
            if len(batch) == 1:
                batch[0].error = exc
            else:
                # One bad event must not fail the others: each alone, in its own transaction.
                for slot in batch:
                    try:
                        self._commit([slot])
                    except Exception as one:
                        slot.error = one
        finally:
            for slot in batch:
                slot.done = True

    def _commit(self, batch: list[_Slot]) -> None:
        conn = self._connection()
        now = time.time()
        cur = conn.cursor()
        try:
            if self.sqlite:
                cur.execute("BEGIN IMMEDIATE")
            deliveries = []
            for slot in batch:
                cur.execute(self._inbox_sql, slot.row if self._positional
                            else dict(zip(INBOX_COLUMNS, slot.row)))
                found = cur.fetchone()
                slot.inbox_id = found[0] if found else None
                if slot.inbox_id is not None:
                    deliveries += [(slot.inbox_id, t, slot.row[2], st.PENDING, 0, now, now)
                                   for t in slot.targets]
            if deliveries:
                cur.executemany(self._delivery_sql, deliveries if self._positional
                                else [dict(zip(DELIVERY_COLUMNS, d)) for d in deliveries])
            conn.commit()
            for slot in batch:
                slot.error = None
        except BaseException as exc:
            self._discard(conn, exc)
            for slot in batch:
                slot.inbox_id = None
            raise
        finally:
            cur.close()

    # -- the kept connection ------------------------------------------------------------
    def _connection(self):
        # After a fork the parent's connection is the parent's: never share a socket.
        if self._conn is None or self._conn_pid != os.getpid():
            self._conn = self.store.engine.raw_connection()
            self._conn_pid = os.getpid()
        return self._conn

    def _discard(self, conn, exc: BaseException | None) -> None:
        """Roll back; a connection that broke goes back to the pool invalidated."""
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
        with self._lock:
            if self._conn is not None and self._conn_pid == os.getpid():
                self._conn.close()
            self._conn = None
