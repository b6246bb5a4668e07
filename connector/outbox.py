"""The outbox: durable, idempotent outbound sends (table ``outbox`` in connector.store).

Every entry point queues here first, keyed by its own idempotency key, and answers only
after the commit. Workers claim queued rows with a lease; the row becomes ``sending``
just before the provider call, so a worker that dies mid-call leaves a ``sending`` row
that the sweep turns into ``unknown``: it is reconciled, never sent again by itself.
"""
from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, or_, select, update

from .store import (
    OUT_FAILED, OUT_QUEUED, OUT_REJECTED, OUT_SENDING, OUT_SENT, OUT_UNKNOWN, Store, _insert,
    inbox, outbox,
)


CALLBACK_DUE, CALLBACK_CALLING, CALLBACK_DONE, CALLBACK_FAILED = "due", "calling", "done", "failed"


def request_hash(payload: Any) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


@dataclass
class OutboundMessage:
    id: int
    idem_key: str
    request_hash: str
    source: str
    line: str
    line_id: str
    recipient: str
    text: str
    media: list[str]
    policy: str
    validated: bool
    validation: dict | None
    state: str
    attempts: int
    provider_message_id: str | None
    error: str | None
    result: dict | None
    created_at: float
    lease_owner: str | None = None
    callback: str | None = None  # a HubSpot workflow action's completion: due, calling, done, failed

    @property
    def public_id(self) -> str:
        return f"out_{self.id}"

    @staticmethod
    def row_id(public_id: str) -> int | None:
        """``out_12`` -> 12; None for anything else (ASCII digits, within the id column's
        INTEGER range: a larger one is no send, not a database error)."""
        m = re.fullmatch(r"out_([0-9]{1,18})", public_id or "")
        return int(m.group(1)) if m and 0 < int(m.group(1)) < 2**31 else None

    def to_dict(self) -> dict:
        return {"id": self.public_id, "state": self.state, "source": self.source,
                "from": self.line, "to": self.recipient, "text": self.text, "media": self.media,
                "provider_message_id": self.provider_message_id, "error": self.error,
                "validation": self.validation, "attempts": self.attempts}


def _row(r) -> OutboundMessage:
    return OutboundMessage(
        id=r.id, idem_key=r.idem_key, request_hash=r.request_hash, source=r.source, line=r.line,
        line_id=r.line_id, recipient=r.recipient, text=r.text, media=json.loads(r.media),
        policy=r.policy, validated=bool(r.validated),
        validation=json.loads(r.validation) if r.validation else None, state=r.state,
        attempts=r.attempts, provider_message_id=r.provider_message_id, error=r.error,
        result=json.loads(r.result) if r.result else None, created_at=r.created_at,
        lease_owner=r.lease_owner, callback=r.callback)


class Outbox:
    def __init__(self, store: Store):
        self.store = store
        self.engine = store.engine

    def enqueue(self, items: list[dict]) -> list[tuple[OutboundMessage, bool]]:
        """Insert each item (keys: idem_key, request_hash, source, line, line_id, recipient,
        text, media, policy, validated, validation, state) unless its key exists; all in one
        transaction. Returns (row, created) per item, in order."""
        now = time.time()
        out: dict[int, tuple[OutboundMessage, bool]] = {}
        # In key order: two requests carrying the same keys in other orders (a redelivered
        # Outbound Message) take their unique-index locks in one order, so on PostgreSQL
        # they queue instead of deadlocking.
        order = sorted(range(len(items)), key=lambda n: items[n]["idem_key"])
        with self.store.write() as conn:
            for n in order:
                item = items[n]
                values = dict(item, media=json.dumps(item.get("media", [])),
                              validation=json.dumps(item["validation"]) if item.get("validation") else None,
                              validated=int(bool(item.get("validated"))), attempts=0, next_at=now,
                              created_at=now, updated_at=now, error=item.get("error"))
                stmt = (_insert(outbox, self.store.dialect).values(**values)
                        .on_conflict_do_nothing(index_elements=["idem_key"]).returning(outbox.c.id))
                new_id = conn.execute(stmt).scalar()
                row = conn.execute(select(outbox).where(outbox.c.idem_key == item["idem_key"])).first()
                out[n] = (_row(row), new_id is not None)
        return [out[n] for n in range(len(items))]

    def get(self, id_: int) -> OutboundMessage | None:
        with self.store.read() as conn:
            r = conn.execute(select(outbox).where(outbox.c.id == id_)).first()
        return _row(r) if r else None

    def get_by_key(self, idem_key: str) -> OutboundMessage | None:
        with self.store.read() as conn:
            r = conn.execute(select(outbox).where(outbox.c.idem_key == idem_key)).first()
        return _row(r) if r else None

    def list(self, state: str | None = None, limit: int = 100) -> list[OutboundMessage]:
        q = select(outbox).order_by(outbox.c.id.desc()).limit(limit)
        if state:
            q = q.where(outbox.c.state == state)
        with self.store.read() as conn:
            return [_row(r) for r in conn.execute(q)]

    # -- HubSpot workflow actions answered BLOCK --------------------------------------
    def callbacks_due(self, limit: int = 50) -> list[OutboundMessage]:
        """Rows whose workflow action is still waiting and whose send has an outcome."""
        q = (select(outbox).where(outbox.c.callback == CALLBACK_DUE,
                                  outbox.c.state.in_((OUT_SENT, OUT_FAILED, OUT_REJECTED)))
             .order_by(outbox.c.id).limit(limit))
        with self.store.read() as conn:
            return [_row(r) for r in conn.execute(q)]

    def take_callback(self, m: OutboundMessage) -> bool:
        """Claim a due completion, so that one process makes the call (every worker's
        sender and sweep look for them). False: another process has it."""
        with self.store.write() as conn:
            return conn.execute(update(outbox).where(outbox.c.id == m.id, outbox.c.callback == CALLBACK_DUE)
                                .values(callback=CALLBACK_CALLING, updated_at=time.time())).rowcount == 1

    def callback_finished(self, m: OutboundMessage, outcome: str) -> None:
        """``done`` (HubSpot took the completion), ``failed`` (it never will) or ``due``
        again (try later)."""
        with self.store.write() as conn:
            conn.execute(update(outbox).where(outbox.c.id == m.id, outbox.c.callback == CALLBACK_CALLING)
                         .values(callback=outcome, updated_at=time.time()))

    # -- worker side -----------------------------------------------------------------
    def claim(self, owner: str, lease_seconds: float, limit: int = 5,
              now: float | None = None) -> list[OutboundMessage]:
        now = now or time.time()
        due = and_(outbox.c.state == OUT_QUEUED, outbox.c.next_at <= now,
                   or_(outbox.c.lease_until.is_(None), outbox.c.lease_until <= now))
        with self.store.write() as conn:
            ids = [r.id for r in conn.execute(select(outbox.c.id).where(due)
                                              .order_by(outbox.c.next_at, outbox.c.id).limit(limit))]
            claimed = []
            for id_ in ids:  # conditional update: another claimer may have won this row
                res = conn.execute(update(outbox).where(outbox.c.id == id_, due).values(
                    lease_until=now + lease_seconds, lease_owner=owner, updated_at=now))
                if res.rowcount == 1:
                    claimed.append(id_)
            rows = conn.execute(select(outbox).where(outbox.c.id.in_(claimed)).order_by(outbox.c.id))
            return [_row(r) for r in rows]

    def update(self, m: OutboundMessage, *, expect: str | None = None, **values) -> bool:
        """Change a claimed row; False when the lease (or the expected state) was lost."""
        values = {k: (json.dumps(v) if k in ("validation", "result", "media") and v is not None else v)
                  for k, v in values.items()}
        if "validated" in values:
            values["validated"] = int(bool(values["validated"]))
        values["updated_at"] = time.time()
        conds = [outbox.c.id == m.id, outbox.c.lease_owner == m.lease_owner]
        if expect:
            conds.append(outbox.c.state == expect)
        with self.store.write() as conn:
            return conn.execute(update(outbox).where(*conds).values(**values)).rowcount == 1

    def begin_send(self, m: OutboundMessage) -> bool:
        """queued -> sending, right before the provider call; False if the lease was lost."""
        return self.update(m, expect=OUT_QUEUED, state=OUT_SENDING, attempts=m.attempts + 1)

    def park(self, m: OutboundMessage, next_at: float, error: str) -> None:
        """sending -> queued: the provider surely did not take it; try again at ``next_at``."""
        self.update(m, state=OUT_QUEUED, next_at=next_at, error=error, lease_until=None, lease_owner=None)

    def hold_queued(self, until: float) -> int:
        """Aircall said "wait until ``until``" (429): no process sends before then."""
        with self.store.write() as conn:
            return conn.execute(update(outbox).where(
                outbox.c.state == OUT_QUEUED, outbox.c.next_at < until).values(
                    next_at=until, updated_at=time.time())).rowcount

    def finish(self, m: OutboundMessage, state: str, **values) -> None:
        self.update(m, state=state, lease_until=None, lease_owner=None, **values)

    def mark_sent(self, m: OutboundMessage, provider_message_id: str, result: dict,
                  log_event: dict | None) -> None:
        """sending -> sent and (same transaction) the CRM log event into the inbox."""
        now = time.time()
        with self.store.write() as conn:
            conn.execute(update(outbox).where(outbox.c.id == m.id).values(
                state=OUT_SENT, provider_message_id=provider_message_id, result=json.dumps(result),
                error=None, lease_until=None, lease_owner=None, updated_at=now))
            if log_event:
                self.store._ingest(conn, **log_event)

    def sweep(self, now: float | None = None, stale_after: float = 300) -> int:
        """``sending`` rows whose worker vanished become ``unknown`` (maybe sent, maybe not);
        completions claimed ``stale_after`` seconds ago by a process that vanished are due
        again (completing twice is harmless: HubSpot keeps the first)."""
        now = now or time.time()
        with self.store.write() as conn:
            res = conn.execute(update(outbox).where(
                outbox.c.state == OUT_SENDING, outbox.c.lease_until.is_not(None),
                outbox.c.lease_until <= now).values(
                    state=OUT_UNKNOWN, lease_until=None, lease_owner=None, updated_at=now,
                    error="the worker stopped during the send: it may or may not have gone out"))
            conn.execute(update(outbox).where(outbox.c.callback == CALLBACK_CALLING,
                                              outbox.c.updated_at <= now - stale_after)
                         .values(callback=CALLBACK_DUE, updated_at=now))
        return res.rowcount

    # -- reconciling unknown sends -----------------------------------------------------
    def reconcile(self, parse, window: float, now: float | None = None) -> list[tuple[int, str]]:
        """Link ``unknown`` sends to the provider's outbound message events with the same
        line, recipient and text, sent within ``window`` seconds of the last attempt;
        returns (outbox id, provider message id) for each link made.

        Only when the match cannot be another send's: while another send of the same line,
        recipient and text is unknown, queued or being sent (its message may be the one
        seen), the row stays unknown for an operator (`outbox resolve`)."""
        now = now or time.time()
        linked = []
        with self.store.write() as conn:
            unknown = conn.execute(select(outbox).where(
                outbox.c.state == OUT_UNKNOWN, outbox.c.created_at >= now - 7 * 86400).order_by(outbox.c.id)).fetchall()
            for u in unknown:
                # "Same text" as the match below takes it: the message seen may be a twin's
                # whose text differs only by a trailing newline.
                others = conn.execute(select(outbox.c.text).where(
                    outbox.c.id != u.id, outbox.c.line == u.line, outbox.c.recipient == u.recipient,
                    outbox.c.state.in_((OUT_UNKNOWN, OUT_QUEUED, OUT_SENDING)))).scalars()
                if any(t.strip() == u.text.strip() for t in others):
                    continue
                taken = select(outbox.c.provider_message_id).where(outbox.c.provider_message_id.is_not(None))
                # Around the last attempt (updated_at: when it was found unknown), which may
                # come long after the row was queued (backoff, holds, a backlog).
                since = max(u.created_at - 60, u.updated_at - window)
                candidates = conn.execute(select(inbox).where(
                    inbox.c.direction == "outbound", inbox.c.external == u.recipient,
                    inbox.c.occurred_at >= since, inbox.c.occurred_at <= u.updated_at + window,
                    inbox.c.message_id.not_in(taken)).order_by(inbox.c.occurred_at, inbox.c.id)).fetchall()
                for c in candidates:
                    try:
                        ev = parse(json.loads(c.payload))
                    except Exception:
                        continue
                    if ev.text.strip() == u.text.strip() and ev.line in ("", u.line):
                        conn.execute(update(outbox).where(outbox.c.id == u.id, outbox.c.state == OUT_UNKNOWN)
                                     .values(state=OUT_SENT, provider_message_id=c.message_id,
                                             error=None, updated_at=now))
                        linked.append((u.id, c.message_id))
                        break
        return linked

    def resolve(self, id_: int, state: str, provider_message_id: str | None = None) -> bool:
        """Operator decision on an ``unknown`` (or ``failed``) send: sent, failed, or queued
        (send it again: only when the operator knows it did not go out)."""
        assert state in (OUT_SENT, OUT_FAILED, OUT_QUEUED)
        values: dict[str, Any] = dict(state=state, updated_at=time.time(), lease_until=None, lease_owner=None)
        if provider_message_id:
            values["provider_message_id"] = provider_message_id
        if state == OUT_SENT:  # the operator knows it went out: its old error no longer holds
            values["error"] = None
        if state == OUT_QUEUED:  # a new send: its own attempts, not the spent ones
            values.update(next_at=time.time(), attempts=0, error=None)
        with self.store.write() as conn:
            return conn.execute(update(outbox).where(
                outbox.c.id == id_, outbox.c.state.in_((OUT_UNKNOWN, OUT_FAILED)))
                .values(**values)).rowcount == 1


__all__ = ["Outbox", "OutboundMessage", "request_hash", "OUT_QUEUED", "OUT_SENDING", "OUT_SENT",
           "OUT_UNKNOWN", "OUT_FAILED", "OUT_REJECTED"]
