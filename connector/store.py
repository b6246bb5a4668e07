"""The durable store: inbox of webhook events, per-CRM deliveries, record map.

The inbox, not a queue, is the source of truth. A webhook commits one inbox row and
its delivery rows in one transaction; workers claim due deliveries with a lease, and
a delivery whose lease ran out (its worker died) is simply claimable again.
"""
from __future__ import annotations

import contextlib
import json
import time
import uuid
from pathlib import Path
from dataclasses import dataclass
from typing import Any, Iterable

from sqlalchemy import (
    Column, Float, Index, Integer, MetaData, String, Table, Text, UniqueConstraint,
    and_, create_engine, event, func, inspect, or_, select, text, update,
)
from sqlalchemy.engine import Engine, make_url

from .sqlite_writes import BACKSTOP_PAGES, Checkpointer, WriteLock

metadata = MetaData()

inbox = Table(
    "inbox", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("dedup_key", String(300), nullable=False, unique=True),
    Column("provider", String(40), nullable=False),
    Column("message_id", String(200), nullable=False),
    Column("event", String(60), nullable=False),
    Column("status", String(20), nullable=False),
    Column("direction", String(10), nullable=False),
    Column("external", String(40), nullable=False),
    Column("received_at", Float, nullable=False),
    Column("occurred_at", Float, nullable=False),
    Column("payload", Text, nullable=False),
    Index("ix_inbox_message", "provider", "message_id"),
    Index("ix_inbox_received", "received_at"),
)

# States a delivery moves through.
PENDING, RETRYING, DELIVERED, DRY_RUN, DEAD, SKIPPED = (
    "pending", "retrying", "delivered", "dry-run", "dead", "skipped")
OPEN_STATES = (PENDING, RETRYING)

deliveries = Table(
    "deliveries", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("inbox_id", Integer, nullable=False),
    Column("target", String(20), nullable=False),
    Column("message_id", String(200), nullable=False),
    Column("state", String(20), nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("next_at", Float, nullable=False),
    Column("lease_until", Float, nullable=True),
    Column("lease_owner", String(64), nullable=True),
    Column("last_error", Text, nullable=True),
    Column("rendered", Text, nullable=True),
    Column("result", Text, nullable=True),
    Column("updated_at", Float, nullable=False),
    UniqueConstraint("inbox_id", "target", name="uq_delivery_inbox_target"),
    Index("ix_deliveries_due", "state", "next_at"),
    Index("ix_deliveries_message", "target", "message_id"),
)

# Our message id -> the CRM record that shows it: written with the outcome, so a
# retry updates the record instead of creating a second one.
crm_records = Table(
    "crm_records", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("target", String(20), nullable=False),
    Column("message_id", String(200), nullable=False),
    Column("object_type", String(80), nullable=False, default=""),
    Column("object_id", String(80), nullable=True),
    Column("status", String(20), nullable=True),
    Column("data", Text, nullable=True),
    Column("updated_at", Float, nullable=False),
    UniqueConstraint("target", "message_id", name="uq_crm_record"),
)

# Contacts the connector matched or created, per number: CRM search indexes lag
# behind creates, so a burst from a new number must not create duplicates.
contacts = Table(
    "contacts", metadata,
    Column("target", String(20), primary_key=True),
    Column("phone", String(40), primary_key=True),
    Column("record_type", String(40), nullable=False),
    Column("record_id", String(80), nullable=True),
    Column("expires_at", Float, nullable=False),
)

# Inbound attachments, fetched once per message and kept (connector.media). One row per
# (message, position); a "fetching" row is a lease, so two workers never fetch one twice.
MEDIA_FETCHING, MEDIA_AVAILABLE, MEDIA_UNSUPPORTED, MEDIA_TOO_LARGE, MEDIA_UNAVAILABLE, MEDIA_EXPIRED = (
    "fetching", "available", "unsupported", "too_large", "unavailable", "expired")

media = Table(
    "media", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("message_id", String(200), nullable=False),
    Column("idx", Integer, nullable=False),
    Column("name", String(300), nullable=False, default=""),
    Column("declared_type", String(120), nullable=False, default=""),
    Column("detected_type", String(120), nullable=True),
    Column("size", Integer, nullable=True),
    Column("sha256", String(64), nullable=True),
    Column("path", String(400), nullable=True),
    Column("state", String(20), nullable=False),
    Column("reason", Text, nullable=True),
    Column("lease_owner", String(64), nullable=True),
    Column("lease_until", Float, nullable=True),
    Column("fetched_at", Float, nullable=True),
    Column("expires_at", Float, nullable=True),
    UniqueConstraint("message_id", "idx", name="uq_media_message_idx"),
    Index("ix_media_expires", "state", "expires_at"),
)


# A CRM's own rate-limit wait (HubSpot 429, Salesforce REQUEST_LIMIT_EXCEEDED): no delivery
# of that CRM is claimed before ``until``, in any process, also one stored meanwhile.
parks = Table(
    "parks", metadata,
    Column("target", String(20), primary_key=True),
    Column("until", Float, nullable=False),
)

# Attachments copied into a CRM (``attachments: crm-files``): one row per (CRM, message,
# position), written as soon as the CRM has the file, so a retry never uploads it again.
# ``document_id`` and ``linked_to``: the Salesforce ContentDocument and the record it is
# linked to (NULL until linked).
crm_files = Table(
    "crm_files", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("target", String(20), nullable=False),
    Column("message_id", String(200), nullable=False),
    Column("idx", Integer, nullable=False),
    Column("file_id", String(100), nullable=False),
    Column("document_id", String(100), nullable=True),
    Column("url", Text, nullable=False),
    Column("linked_to", String(100), nullable=True),
    Column("created_at", Float, nullable=False),
    UniqueConstraint("target", "message_id", "idx", name="uq_crm_files_target_message_idx"),
)


# Outbound sends. ``idem_key`` makes every entry point idempotent (API Idempotency-Key,
# HubSpot callbackId, Salesforce Notification Id). States: queued -> sending -> sent |
# failed | unknown; rejected = failed validation, never queued. A send is only retried
# from ``queued``; ``sending`` whose worker vanished becomes ``unknown``, never re-sent.
OUT_QUEUED, OUT_SENDING, OUT_SENT, OUT_UNKNOWN, OUT_FAILED, OUT_REJECTED = (
    "queued", "sending", "sent", "unknown", "failed", "rejected")
OUT_STATES = (OUT_QUEUED, OUT_SENDING, OUT_SENT, OUT_UNKNOWN, OUT_FAILED, OUT_REJECTED)

outbox = Table(
    "outbox", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("idem_key", String(300), nullable=False, unique=True),
    Column("request_hash", String(64), nullable=False),
    Column("source", String(20), nullable=False),
    Column("line", String(40), nullable=False),
    Column("line_id", String(40), nullable=False, default=""),
    Column("recipient", String(40), nullable=False),
    Column("text", Text, nullable=False, default=""),
    Column("media", Text, nullable=False, default="[]"),  # URLs as requested
    Column("policy", String(10), nullable=False),
    Column("validated", Integer, nullable=False, default=0),  # bytes checked already?
    Column("validation", Text, nullable=True),
    Column("state", String(20), nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("next_at", Float, nullable=False),
    Column("lease_until", Float, nullable=True),
    Column("lease_owner", String(64), nullable=True),
    Column("provider_message_id", String(200), nullable=True),
    Column("error", Text, nullable=True),
    Column("result", Text, nullable=True),
    # A HubSpot workflow action answered BLOCK: "due" until its completion call succeeds
    # ("done") or HubSpot refuses it for good ("failed"), "calling" while one worker makes
    # the call; NULL when nothing is owed.
    Column("callback", String(10), nullable=True),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Index("ix_outbox_due", "state", "next_at"),
    Index("ix_outbox_callback", "callback"),
    Index("ix_outbox_provider_id", "provider_message_id"),
)


@dataclass
class Delivery:
    id: int
    inbox_id: int
    target: str
    message_id: str
    state: str
    attempts: int
    payload: dict
    lease_owner: str
    provider: str = "aircall"


def _sqlite_pragmas(engine: Engine, writer: bool) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):
        # Driver autocommit off-switch, so BEGIN below is ours (SQLAlchemy's pysqlite recipe).
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA busy_timeout=10000")
        cur.execute("PRAGMA foreign_keys=ON")
        # Checkpoints run off the commit path (connector/sqlite_writes.py); this is the backstop.
        cur.execute(f"PRAGMA wal_autocheckpoint={BACKSTOP_PAGES}")
        cur.close()

    if writer:
        @event.listens_for(engine, "begin")
        def _on_begin(conn):
            # IMMEDIATE: take the write lock up front, so two writers never deadlock upgrading.
            conn.exec_driver_sql("BEGIN IMMEDIATE")


def make_engine(url: str, writer: bool = True) -> Engine:
    if url.startswith("sqlite"):
        path = _sqlite_path(url)
        if path:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 10},
                               pool_size=16, max_overflow=16)
        _sqlite_pragmas(engine, writer)
        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=10)


def _sqlite_path(url: str) -> str | None:
    path = make_url(url).database  # without ?query parameters
    return None if not path or path == ":memory:" else path


def _sqlite_lock_path(url: str) -> str | None:
    path = _sqlite_path(url)
    return path and path + ".lock"


def _insert(table: Table, dialect: str):
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    return insert(table)


class Store:
    def __init__(self, url: str):
        self.url = url
        self.engine = make_engine(url)
        self.dialect = self.engine.dialect.name
        if self.dialect == "sqlite":
            # WAL readers never block the writer; keep them off the write lock entirely.
            self.read_engine = make_engine(url, writer=False)
            # Writers queue on a mutex and a file lock, not on SQLite's busy handler;
            # WAL checkpoints run on a thread of their own (connector/sqlite_writes.py).
            self._write_lock = WriteLock(_sqlite_lock_path(url))
            self.checkpointer = Checkpointer(_sqlite_path(url))
        else:
            self.read_engine = self.engine
            self._write_lock = contextlib.nullcontext()
            self.checkpointer = None
        self._insert_inbox = (_insert(inbox, self.dialect)
                              .on_conflict_do_nothing(index_elements=["dedup_key"]).returning(inbox.c.id))
        self._insert_deliveries = deliveries.insert()
        from .inbox_writer import InboxWriter
        self.inbox_writer = InboxWriter(self)  # holds no connection until the first webhook

    @contextlib.contextmanager
    def write(self):
        """A write transaction (committed on exit)."""
        if self.checkpointer is not None:
            self.checkpointer.ensure_running()
        with self._write_lock, self.engine.begin() as conn:
            yield conn

    def read(self):
        return self.read_engine.connect()

    def close(self) -> None:
        """Close the webhook writer's connection and every pooled one."""
        self.inbox_writer.close()
        self.engine.dispose()
        self.read_engine.dispose()

    def create_schema(self) -> None:
        """Upgrade the schema to the newest migration (creating it on a new database)."""
        from . import migrations
        migrations.upgrade(self.engine)
        with self.engine.connect() as conn:
            missing = sorted(set(metadata.tables) - set(inspect(conn).get_table_names()))
        if missing:
            raise RuntimeError(
                f"table(s) {', '.join(missing)} are defined in connector/store.py but no migration "
                "creates them: run `mms-connector db revision -m \"what changed\"` (README, "
                "\"Schema migrations\") and commit the file it writes")

    def ping(self) -> None:
        with self.read() as conn:
            conn.execute(text("SELECT 1"))

    # -- the webhook's one durable write -------------------------------------------
    def ingest(self, *, dedup_key: str, provider: str, message_id: str, event_name: str,
               status: str, direction: str, external: str, occurred_at: float,
               payload: str, targets: Iterable[str]) -> int | None:
        """Store an event and its deliveries; None when it was already stored.

        Committed before it returns, grouped with concurrent callers' events into one
        transaction (connector/inbox_writer.py)."""
        return self.inbox_writer.ingest(
            dedup_key=dedup_key, provider=provider, message_id=message_id, event_name=event_name,
            status=status, direction=direction, external=external, occurred_at=occurred_at,
            payload=payload, targets=targets)

    def _ingest(self, conn, *, dedup_key: str, provider: str, message_id: str, event_name: str,
                status: str, direction: str, external: str, occurred_at: float,
                payload: str, targets: Iterable[str], now: float | None = None) -> int | None:
        # Inside the caller's transaction (the outbox logs a send with its state change);
        # webhooks go through the group-committing InboxWriter instead.
        now = now or time.time()
        inbox_id = conn.execute(self._insert_inbox, dict(
            dedup_key=dedup_key, provider=provider, message_id=message_id, event=event_name,
            status=status, direction=direction, external=external, received_at=now,
            occurred_at=occurred_at, payload=payload)).scalar()
        if inbox_id is None:
            return None
        rows = [dict(inbox_id=inbox_id, target=t, message_id=message_id, state=PENDING,
                     attempts=0, next_at=now, updated_at=now) for t in targets]
        if rows:
            conn.execute(self._insert_deliveries, rows)
        return inbox_id

    # -- worker side ---------------------------------------------------------------
    def claim(self, owner: str, lease_seconds: float, limit: int = 10,
              target: str | None = None, now: float | None = None,
              exclude: Iterable[str] = ()) -> list[Delivery]:
        """Lease up to ``limit`` due deliveries (of ``target``, or of any target not in
        ``exclude``). Never two of one CRM record at once."""
        now = now or time.time()
        d2 = deliveries.alias("d2")
        busy = select(d2.c.id).where(
            d2.c.target == deliveries.c.target, d2.c.message_id == deliveries.c.message_id,
            d2.c.id != deliveries.c.id, d2.c.lease_until > now,
            d2.c.state.in_(OPEN_STATES)).exists()
        parked = select(parks.c.target).where(parks.c.target == deliveries.c.target, parks.c.until > now).exists()
        conds = [deliveries.c.state.in_(OPEN_STATES), deliveries.c.next_at <= now,
                 or_(deliveries.c.lease_until.is_(None), deliveries.c.lease_until <= now), ~busy, ~parked]
        if target:
            conds.append(deliveries.c.target == target)
        if exclude:
            conds.append(deliveries.c.target.not_in(list(exclude)))
        q = (select(deliveries.c.id, deliveries.c.target, deliveries.c.message_id)
             .where(and_(*conds)).order_by(deliveries.c.next_at, deliveries.c.id).limit(limit * 4))
        claimed: list[Delivery] = []
        with self.write() as conn:
            if self.dialect == "postgresql":
                # Serialize claimers briefly so the per-record check above holds across them.
                conn.execute(text("SELECT pg_advisory_xact_lock(7261001)"))
            seen: set[tuple[str, str]] = set()
            ids = []
            for row in conn.execute(q):
                key = (row.target, row.message_id)
                if key in seen:
                    continue
                seen.add(key)
                ids.append(row.id)
                if len(ids) >= limit:
                    break
            if not ids:
                return []
            # Checked again as the rows are taken: on PostgreSQL a worker whose lease ran out
            # may have renewed it or finished the delivery since the SELECT (neither takes the
            # claimers' lock), and its row must stay its own.
            ids = [r.id for r in conn.execute(update(deliveries).where(
                deliveries.c.id.in_(ids), deliveries.c.state.in_(OPEN_STATES),
                or_(deliveries.c.lease_until.is_(None), deliveries.c.lease_until <= now)).values(
                lease_until=now + lease_seconds, lease_owner=owner, updated_at=now).returning(deliveries.c.id))]
            if not ids:
                return []
            rows = conn.execute(
                select(deliveries, inbox.c.payload, inbox.c.provider).join(inbox, inbox.c.id == deliveries.c.inbox_id)
                .where(deliveries.c.id.in_(ids)).order_by(deliveries.c.id))
            for r in rows:
                claimed.append(Delivery(id=r.id, inbox_id=r.inbox_id, target=r.target,
                                        message_id=r.message_id, state=r.state, attempts=r.attempts,
                                        payload=json.loads(r.payload), lease_owner=owner,
                                        provider=r.provider))
        return claimed

    def renew_leases(self, ds: list[Delivery], lease_seconds: float, now: float | None = None) -> set[int]:
        """Extend the leases this claimer still holds (nobody swept or took them over);
        the ids of those it still holds."""
        if not ds:
            return set()
        now = now or time.time()
        with self.write() as conn:
            rows = conn.execute(update(deliveries).where(
                deliveries.c.id.in_([d.id for d in ds]),
                deliveries.c.lease_owner == ds[0].lease_owner,
                deliveries.c.state.in_(OPEN_STATES)).values(lease_until=now + lease_seconds)
                .returning(deliveries.c.id))
            return {r.id for r in rows}

    def finish(self, d: Delivery, state: str, **outcome) -> bool:
        """Record a delivery's outcome; False if the lease was lost meanwhile.
        ``outcome``: rendered, result, error, next_at, count_attempt (see _finish_stmt)."""
        return self.finish_many([(d, state, outcome)])[0]

    def finish_many(self, outcomes: list[tuple[Delivery, str, dict]]) -> list[bool]:
        """finish() for several deliveries in one transaction (a batch: one commit)."""
        if not outcomes:
            return []
        with self.write() as conn:
            return [conn.execute(self._finish_stmt(d, state, **kw)).rowcount == 1
                    for d, state, kw in outcomes]

    @staticmethod
    def _finish_stmt(d: Delivery, state: str, *, rendered: Any = None, result: Any = None,
                     error: str | None = None, next_at: float | None = None,
                     count_attempt: bool = True):
        values: dict[str, Any] = dict(state=state, lease_until=None, lease_owner=None,
                                      updated_at=time.time(), last_error=error)
        if count_attempt:
            values["attempts"] = deliveries.c.attempts + 1
        if rendered is not None:
            values["rendered"] = json.dumps(rendered)
        if result is not None:
            values["result"] = json.dumps(result)
        if next_at is not None:
            values["next_at"] = next_at
        return update(deliveries).where(
            deliveries.c.id == d.id, deliveries.c.lease_owner == d.lease_owner).values(**values)

    def sweep(self, now: float | None = None) -> int:
        """Release leases that ran out (their worker died); returns how many."""
        now = now or time.time()
        with self.write() as conn:
            res = conn.execute(update(deliveries).where(
                deliveries.c.state.in_(OPEN_STATES), deliveries.c.lease_until.is_not(None),
                deliveries.c.lease_until <= now).values(lease_until=None, lease_owner=None,
                                                        updated_at=now))
        return res.rowcount

    def release(self, d: Delivery) -> None:
        """Give a claimed delivery back untouched (its lease only)."""
        with self.write() as conn:
            conn.execute(update(deliveries).where(
                deliveries.c.id == d.id, deliveries.c.lease_owner == d.lease_owner).values(
                lease_until=None, lease_owner=None))

    def park_target(self, target: str, until: float) -> None:
        """Claim no delivery of ``target`` before ``until`` (a CRM's rate-limit wait); an
        earlier end never shortens a park. One row, whatever the backlog."""
        stmt = _insert(parks, self.dialect).values(target=target, until=until)
        stmt = stmt.on_conflict_do_update(index_elements=["target"], set_={"until": until},
                                          where=parks.c.until < until)
        with self.write() as conn:
            conn.execute(stmt)

    def parked_until(self, target: str) -> float | None:
        with self.read() as conn:
            return conn.execute(select(parks.c.until).where(parks.c.target == target)).scalar()

    def pending_count(self) -> int:
        with self.read() as conn:
            return conn.execute(select(func.count()).select_from(deliveries)
                                .where(deliveries.c.state.in_(OPEN_STATES))).scalar() or 0

    # -- CRM record map ------------------------------------------------------------
    def get_record(self, target: str, message_id: str) -> dict | None:
        with self.read() as conn:
            r = conn.execute(select(crm_records).where(
                crm_records.c.target == target, crm_records.c.message_id == message_id)).first()
        if r is None:
            return None
        return dict(object_type=r.object_type, object_id=r.object_id, status=r.status,
                    data=json.loads(r.data) if r.data else {})

    def save_record(self, target: str, message_id: str, *, object_type: str,
                    object_id: str | None, status: str | None, data: dict | None = None) -> None:
        now = time.time()
        values = dict(object_type=object_type, object_id=object_id, status=status,
                      data=json.dumps(data or {}), updated_at=now)
        stmt = _insert(crm_records, self.dialect).values(target=target, message_id=message_id, **values)
        stmt = stmt.on_conflict_do_update(index_elements=["target", "message_id"], set_=values)
        with self.write() as conn:
            conn.execute(stmt)

    def save_records(self, target: str, records: list[dict]) -> None:
        """``save_record`` for many messages in one transaction (a batch's outcomes).
        Each dict has message_id, object_type, object_id, status and optionally data."""
        if not records:
            return
        now = time.time()
        rows = [dict(target=target, message_id=r["message_id"], object_type=r["object_type"],
                     object_id=r["object_id"], status=r["status"], data=json.dumps(r.get("data") or {}),
                     updated_at=now) for r in records]
        stmt = _insert(crm_records, self.dialect)
        stmt = stmt.on_conflict_do_update(index_elements=["target", "message_id"], set_={
            k: stmt.excluded[k] for k in ("object_type", "object_id", "status", "data", "updated_at")})
        with self.write() as conn:
            conn.execute(stmt, rows)

    # -- contact cache -------------------------------------------------------------
    def get_contact(self, target: str, phone: str, now: float | None = None) -> dict | None:
        now = now or time.time()
        with self.read() as conn:
            r = conn.execute(select(contacts).where(
                contacts.c.target == target, contacts.c.phone == phone,
                contacts.c.expires_at > now)).first()
        return None if r is None else dict(record_type=r.record_type, record_id=r.record_id)

    def put_contact(self, target: str, phone: str, record_type: str, record_id: str | None,
                    ttl: float) -> None:
        values = dict(record_type=record_type, record_id=record_id, expires_at=time.time() + ttl)
        stmt = _insert(contacts, self.dialect).values(target=target, phone=phone, **values)
        stmt = stmt.on_conflict_do_update(index_elements=["target", "phone"], set_=values)
        with self.write() as conn:
            conn.execute(stmt)

    def reserve_contact(self, target: str, phone: str, record_type: str, ttl: float,
                        now: float | None = None, replaces: tuple[str, ...] = ()) -> bool:
        """Insert a marker row unless a live row exists (atomic across workers); True if ours.
        A live row whose record_type is in ``replaces`` (e.g. a cached "no contact") is taken over."""
        now = now or time.time()
        values = dict(record_type=record_type, record_id=None, expires_at=now + ttl)
        stmt = _insert(contacts, self.dialect).values(target=target, phone=phone, **values)
        free = contacts.c.expires_at <= now
        if replaces:
            free = or_(free, contacts.c.record_type.in_(replaces))
        # RETURNING, not rowcount: PostgreSQL's driver reports no rowcount for an upsert.
        stmt = stmt.on_conflict_do_update(index_elements=["target", "phone"], set_=values,
                                          where=free).returning(contacts.c.phone)
        with self.write() as conn:
            return conn.execute(stmt).first() is not None

    def drop_contact(self, target: str, phone: str) -> None:
        with self.write() as conn:
            conn.execute(contacts.delete().where(contacts.c.target == target, contacts.c.phone == phone))

    def mapped_object_ids(self, target: str, object_ids: Iterable[str]) -> set[str]:
        """Which of these CRM record ids already show one of our messages."""
        ids = list(object_ids)
        if not ids:
            return set()
        with self.engine.connect() as conn:
            rows = conn.execute(select(crm_records.c.object_id).where(
                crm_records.c.target == target, crm_records.c.object_id.in_(ids)))
            return {r.object_id for r in rows}

    # -- media (connector.media) ---------------------------------------------------
    def media_rows(self, message_id: str) -> list[dict]:
        with self.read() as conn:
            rows = conn.execute(select(media).where(media.c.message_id == message_id)
                                .order_by(media.c.idx)).fetchall()
        return [dict(r._mapping) for r in rows]

    def media_row(self, message_id: str, idx: int) -> dict | None:
        with self.read() as conn:
            r = conn.execute(select(media).where(media.c.message_id == message_id,
                                                 media.c.idx == idx)).first()
        return None if r is None else dict(r._mapping)

    def media_claim(self, message_id: str, idx: int, *, name: str, declared_type: str,
                    owner: str, lease_seconds: float, now: float | None = None) -> bool:
        """Reserve one attachment for fetching; False if it is done or another worker has it."""
        now = now or time.time()
        stmt = _insert(media, self.dialect).values(
            message_id=message_id, idx=idx, name=name, declared_type=declared_type,
            state=MEDIA_FETCHING, lease_owner=owner, lease_until=now + lease_seconds,
        ).on_conflict_do_nothing(index_elements=["message_id", "idx"]).returning(media.c.id)
        with self.write() as conn:
            if conn.execute(stmt).scalar() is not None:
                return True
            # A fetch whose worker died: take it over once its lease ran out.
            res = conn.execute(update(media).where(
                media.c.message_id == message_id, media.c.idx == idx,
                media.c.state == MEDIA_FETCHING, media.c.lease_until <= now,
            ).values(lease_owner=owner, lease_until=now + lease_seconds))
            return res.rowcount == 1

    def media_finish(self, message_id: str, idx: int, owner: str, **values: Any) -> bool:
        """Record a fetch's outcome (state, type, size, path, ...); False if the lease was lost."""
        values.update(lease_owner=None, lease_until=None)
        with self.write() as conn:
            res = conn.execute(update(media).where(
                media.c.message_id == message_id, media.c.idx == idx,
                media.c.state == MEDIA_FETCHING, media.c.lease_owner == owner).values(**values))
        return res.rowcount == 1

    def media_release(self, message_id: str, idx: int, owner: str) -> None:
        """Give up a fetch lease early (the fetch failed unexpectedly; let a retry take it)."""
        with self.write() as conn:
            conn.execute(update(media).where(
                media.c.message_id == message_id, media.c.idx == idx,
                media.c.state == MEDIA_FETCHING, media.c.lease_owner == owner).values(lease_until=0))

    def media_expired(self, now: float | None = None, limit: int = 500,
                      retention: float | None = None, exclude: Iterable[int] = ()) -> list[dict]:
        """Stored files whose retention ran out: the one they were fetched under, or
        ``retention`` seconds, if that is shorter now (rows in ``exclude`` left out)."""
        now = now or time.time()
        due = media.c.expires_at <= now
        if retention is not None:
            due = or_(due, media.c.fetched_at <= now - retention)
        if exclude:
            due = and_(due, media.c.id.not_in(list(exclude)))
        with self.read() as conn:
            rows = conn.execute(select(media).where(media.c.state == MEDIA_AVAILABLE, due)
                                .order_by(media.c.expires_at).limit(limit)).fetchall()
        return [dict(r._mapping) for r in rows]

    def media_mark_expired(self, row_id: int) -> None:
        with self.write() as conn:
            conn.execute(update(media).where(media.c.id == row_id, media.c.state == MEDIA_AVAILABLE)
                         .values(state=MEDIA_EXPIRED, path=None))

    # -- listing for operators -----------------------------------------------------
    def list_events(self, limit: int = 100, state: str | None = None, target: str | None = None,
                    since: float | None = None, number: str | None = None) -> list[dict]:
        q = select(inbox).order_by(inbox.c.received_at.desc(), inbox.c.id.desc()).limit(limit)
        if since is not None:
            q = q.where(inbox.c.received_at >= since)
        if number:
            q = q.where(inbox.c.external == number)
        if state or target:
            sub = select(deliveries.c.inbox_id)
            if state:
                sub = sub.where(deliveries.c.state == state)
            if target:
                sub = sub.where(deliveries.c.target == target)
            q = q.where(inbox.c.id.in_(sub))
        with self.read() as conn:
            rows = conn.execute(q).fetchall()
            ids = [r.id for r in rows]
            dels = conn.execute(select(deliveries).where(deliveries.c.inbox_id.in_(ids))).fetchall() if ids else []
        by_inbox: dict[int, dict] = {}
        for d in dels:
            by_inbox.setdefault(d.inbox_id, {})[d.target] = {
                "state": d.state,
                "attempts": d.attempts,
                "error": d.last_error,
                "rendered": json.loads(d.rendered) if d.rendered else None,
                "result": json.loads(d.result) if d.result else None,
                "delivery_id": d.id,
            }
        return [{
            "id": r.id,
            "message_id": r.message_id,
            "provider": r.provider,
            "event": r.event,
            "direction": r.direction,
            "status": r.status,
            "external_number": r.external,
            "received_at": _iso(r.received_at),
            "occurred_at": _iso(r.occurred_at),
            "targets": by_inbox.get(r.id, {}),
        } for r in rows]


    # -- dead letters and queue figures, for operators and /metrics ------------------
    def dead_letters(self, limit: int = 100, target: str | None = None) -> list[dict]:
        q = (select(deliveries, inbox.c.event, inbox.c.external, inbox.c.received_at)
             .join(inbox, inbox.c.id == deliveries.c.inbox_id)
             .where(deliveries.c.state == DEAD).order_by(deliveries.c.id).limit(limit))
        if target:
            q = q.where(deliveries.c.target == target)
        with self.engine.connect() as conn:
            return [_delivery_row(r) for r in conn.execute(q)]

    def get_delivery(self, delivery_id: int) -> dict | None:
        """One delivery with its stored event (payload included)."""
        q = (select(deliveries, inbox.c.event, inbox.c.external, inbox.c.received_at, inbox.c.payload)
             .join(inbox, inbox.c.id == deliveries.c.inbox_id).where(deliveries.c.id == delivery_id))
        with self.engine.connect() as conn:
            r = conn.execute(q).first()
        if r is None:
            return None
        row = _delivery_row(r)
        row["payload"] = json.loads(r.payload)
        row["rendered"] = json.loads(r.rendered) if r.rendered else None
        row["result"] = json.loads(r.result) if r.result else None
        return row

    def replay(self, delivery_id: int, now: float | None = None) -> str | None:
        """Make a dead letter due again (attempts 0, error cleared).

        Returns "replayed", the delivery's current state when it is not dead (nothing
        is changed: replay is idempotent), or None when there is no such delivery.
        """
        now = now or time.time()
        with self.write() as conn:
            res = conn.execute(update(deliveries).where(
                deliveries.c.id == delivery_id, deliveries.c.state == DEAD).values(
                state=PENDING, attempts=0, last_error=None, next_at=now, lease_until=None,
                lease_owner=None, updated_at=now))
            if res.rowcount == 1:
                return "replayed"
            return conn.execute(select(deliveries.c.state).where(deliveries.c.id == delivery_id)).scalar()

    def dead_letter_ids(self, target: str | None = None) -> list[int]:
        q = select(deliveries.c.id).where(deliveries.c.state == DEAD).order_by(deliveries.c.id)
        if target:
            q = q.where(deliveries.c.target == target)
        with self.engine.connect() as conn:
            return list(conn.execute(q).scalars())

    def queue_figures(self, now: float | None = None) -> dict:
        """Deliveries per (target, state), and per target the age of the oldest open one."""
        now = now or time.time()
        with self.engine.connect() as conn:
            counts = conn.execute(select(deliveries.c.target, deliveries.c.state, func.count())
                                  .group_by(deliveries.c.target, deliveries.c.state)).fetchall()
            oldest = conn.execute(
                select(deliveries.c.target, func.min(inbox.c.received_at))
                .join(inbox, inbox.c.id == deliveries.c.inbox_id)
                .where(deliveries.c.state.in_(OPEN_STATES)).group_by(deliveries.c.target)).fetchall()
        return {"counts": {(t, s): n for t, s, n in counts},
                "oldest_open_age": {t: max(0.0, now - ts) for t, ts in oldest if ts is not None}}


def _iso(ts: float) -> str:
    from datetime import datetime, timezone
    return datetime.fromtimestamp(ts, tz=timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _delivery_row(r) -> dict:
    return {"id": r.id, "event_id": r.inbox_id, "target": r.target, "message_id": r.message_id,
            "event": r.event, "external_number": r.external, "state": r.state,
            "attempts": r.attempts, "error": r.last_error, "received_at": _iso(r.received_at),
            "updated_at": _iso(r.updated_at)}


def new_owner_id() -> str:
    return uuid.uuid4().hex[:16]
