"""The sender: claims queued outbound messages, validates what is not validated yet,
sends through Aircall, and logs each sent message to the CRMs like any other message.

Never twice: the row turns ``sending`` before the call; Aircall errors that prove the
message was not taken (no connection, 429, 503) put it back in ``queued`` with a wait;
a 4xx makes it ``failed``; anything ambiguous (read timeout, other 5xx, a crash) makes it
``unknown``. Unknown sends are linked later to the Aircall ``message.sent`` webhook with
the same line, recipient and text (``reconcile``), or resolved by an operator.

The CRM log: after a send, the Aircall Message object is stored in the inbox as a
``message.sent`` event (same transaction as the ``sent`` state). Its dedup key and CRM
record key are Aircall's message id, so Aircall's own ``message.sent`` webhook for it is a
duplicate, and ``message.status_updated`` updates the same CRM entry.
"""
from __future__ import annotations

import json
import logging
import time

from .. import mms
from ..config import Config
from ..fetch import FetchPolicy
from ..crm.base import PermanentError
from ..outbox import (CALLBACK_DONE, CALLBACK_DUE, CALLBACK_FAILED, OUT_FAILED, OUT_QUEUED, OUT_REJECTED, OUT_SENT,
                      OUT_UNKNOWN, OutboundMessage, Outbox)
from ..phones import region_of
from ..providers import aircall
from ..store import Store
from ..text import writable
from .worker import backoff_seconds

log = logging.getLogger("connector.outbound")


def media_to_send(validation: dict | None, requested: list[str]) -> list[str]:
    if not validation:
        return requested
    return [a["source"] for a in validation.get("attachments", []) if a.get("ok")]


def hubspot_outputs(m: OutboundMessage) -> dict:
    """A HubSpot workflow action's outputFields for the send's state: SUCCESS, FAIL_CONTINUE
    (rejected or failed, with the reasons), or BLOCK while a completion is owed."""
    errors = (m.validation or {}).get("errors") or ([m.error] if m.error else [])
    removed = [f"{a['source']}: {a['error']}" for a in (m.validation or {}).get("attachments", [])
               if not a.get("ok")]
    if m.state in (OUT_REJECTED, OUT_FAILED):
        execution = "FAIL_CONTINUE"
    elif m.callback == CALLBACK_DUE and m.state != OUT_SENT:
        execution = "BLOCK"
    else:
        execution = "SUCCESS"
    return {"hs_execution_state": execution, "message_id": m.public_id, "state": m.state,
            "error": "; ".join(errors), "removed_attachments": "; ".join(removed)}


def log_event(m: OutboundMessage, response: dict, media: list[str], config: Config) -> dict:
    """The inbox row (Store.ingest kwargs) that logs a sent message to the CRMs."""
    data = dict(response)
    data.setdefault("direction", "outbound")
    data.setdefault("body", m.text)
    data["external_number"] = data.get("external_number") or m.recipient
    number = dict(data["number"]) if isinstance(data.get("number"), dict) else {}
    number.setdefault("digits", m.line)
    number.setdefault("country", region_of(m.line) or "")
    data["number"] = number
    if not data.get("media_url") and not data.get("media_details"):
        data["media_url"] = media
    now_ms = int(time.time() * 1000)
    data.setdefault("created_at", now_ms)
    envelope = {"resource": "message", "event": "message.sent", "timestamp": now_ms,
                "origin": "mms-connector outbox", "outbox_id": m.public_id, "data": data}
    ev = aircall.parse(envelope)
    return dict(dedup_key=ev.dedup_key, provider=ev.provider, message_id=ev.message_id,
                event_name=ev.event, status=ev.status, direction=ev.direction, external=ev.external,
                occurred_at=ev.occurred_at.timestamp(), payload=json.dumps(envelope),
                targets=config.targets())


class OutboundSender:
    def __init__(self, config: Config, store: Store, client: aircall.SendClient | None = None,
                 fetch_policy: FetchPolicy | None = None, hubspot_api=lambda: None):
        self.config = config
        self.store = store
        self.outbox = Outbox(store)
        self.client = client or aircall.SendClient(config.aircall)
        self.fetch_policy = fetch_policy or FetchPolicy.from_config(config.fetch)
        self.actions = None  # connector.crm.hubspot_actions.WorkflowActions, made when first needed
        # The HubSpot writer's client, when this process has one: completions then draw on
        # its rate-limit budget and respect its daily-limit stop (one portal, one budget).
        self.hubspot_api = hubspot_api

    def run_once(self, owner: str | None = None) -> int:
        from ..store import new_owner_id
        owner = owner or new_owner_id()
        done = 0
        while True:
            batch = self.outbox.claim(owner, self.config.worker.lease_seconds, limit=1)
            if not batch:
                if done:
                    self.complete_actions()  # the workflows waiting on these sends go on now
                return done
            for m in batch:
                self.process(m)
                done += 1

    def sweep(self) -> int:
        n = self.outbox.sweep(stale_after=self.config.worker.lease_seconds)
        linked = self.outbox.reconcile(aircall.parse, self.config.outbound.reconcile_window_seconds)
        for out_id, msg_id in linked:
            log.info("outbound out_%s: unknown send linked to Aircall message %s", out_id, msg_id)
        # Completions that failed before, and sends an operator or the reconciler settled.
        return n + len(linked) + self.complete_actions()

    def complete_actions(self) -> int:
        """Complete the HubSpot workflow actions answered BLOCK whose send has an outcome.
        A completion HubSpot could not take now is tried again at the next sweep."""
        done = 0
        for m in self.outbox.callbacks_due():
            if not self.outbox.take_callback(m):
                continue  # another worker is completing it
            if self.actions is None:
                from ..crm.hubspot_actions import WorkflowActions
                self.actions = WorkflowActions(self.config, self.hubspot_api())
            outputs = hubspot_outputs(m)
            try:
                self.actions.complete(m.idem_key.removeprefix("hubspot:"), outputs)
            except PermanentError as exc:
                self.outbox.callback_finished(m, CALLBACK_FAILED)
                log.warning("outbound %s: HubSpot refused to complete its workflow action: %s", m.public_id, exc)
                continue
            except Exception as exc:  # WriteError, or a bug: the completion stays owed
                self.outbox.callback_finished(m, CALLBACK_DUE)
                log.warning("outbound %s: workflow action not completed yet (%s); next sweep", m.public_id, exc)
                break  # HubSpot is unwell or busy: the others wait for the next sweep too
            self.outbox.callback_finished(m, CALLBACK_DONE)
            log.info("outbound %s: workflow action completed (%s)", m.public_id, outputs["hs_execution_state"])
            done += 1
        return done

    def process(self, m: OutboundMessage) -> str:
        validation = m.validation
        if not m.validated:  # queued without fetching (Salesforce): check the bytes now
            profile = mms.profile_for(self.config.outbound, m.line)
            loaded = mms.load(m.media, profile, self.fetch_policy)
            flaky = [a for a in loaded if a.flaky]
            if flaky and m.attempts + 1 < self.config.worker.max_attempts:
                # The media host may recover: fetch again later rather than send without
                # the file (partial) or refuse the send (strict) over one hiccup.
                attempts, w = m.attempts + 1, self.config.worker
                wait = backoff_seconds(attempts, w.backoff_initial, w.backoff_max)
                error = f"attachment not fetched yet: {flaky[0].load_error}"
                self.outbox.update(m, state=OUT_QUEUED, attempts=attempts, next_at=time.time() + wait,
                                   error=error, lease_until=None, lease_owner=None)
                log.info("outbound %s: %s; again in %.1fs", m.public_id, error, wait)
                return OUT_QUEUED
            v = mms.validate(self.config.outbound, m.line, m.recipient, m.text, loaded, m.policy)
            validation = v.to_dict()
            if not v.ok:
                # Refused by the rules: rejected. Still unfetchable after every attempt:
                # failed, which an operator can send again (outbox resolve --resend).
                state = OUT_FAILED if flaky else OUT_REJECTED
                self.outbox.finish(m, state, validation=validation, validated=not flaky,
                                   error="; ".join(v.errors))
                log.info("outbound %s: %s: %s", m.public_id, state, "; ".join(v.errors))
                return state
            self.outbox.update(m, validation=validation, validated=True)
        media = media_to_send(validation, m.media)
        if not self.outbox.begin_send(m):
            return "lost"
        try:
            response = self.client.send(m.line_id, m.recipient, m.text, media)
        except aircall.SendError as exc:
            return self._failed_send(m, exc)
        except Exception as exc:  # a bug after the request may have gone out: do not resend
            log.exception("outbound %s: unexpected error while sending", m.public_id)
            self.outbox.finish(m, OUT_UNKNOWN, error=f"{type(exc).__name__}: {exc}")
            return OUT_UNKNOWN
        try:
            entry = log_event(m, response, media, self.config)
        except Exception:  # sent is sent: record it even if Aircall's answer cannot be logged
            log.exception("outbound %s: Aircall's answer cannot be logged to the CRMs", m.public_id)
            entry = None
        self.outbox.mark_sent(m, str(response["id"]), response, entry)
        log.info("outbound %s: sent as Aircall message %s", m.public_id, response["id"])
        if self.client.blocked_until > time.time():
            # X-AircallApi-Remaining: 0 — the company's allowance is spent until the reset,
            # for every process: hold the queued sends in the store, not just in this client.
            self.outbox.hold_queued(self.client.blocked_until)
        return "sent"

    def _failed_send(self, m: OutboundMessage, exc: aircall.SendError) -> str:
        if exc.kind == aircall.RETRY:
            attempts = m.attempts + 1
            if attempts >= self.config.worker.max_attempts:
                self.outbox.finish(m, OUT_FAILED, error=f"gave up after {attempts} attempts: {exc}")
                return OUT_FAILED
            w = self.config.worker
            wait = max(exc.retry_after or 0, backoff_seconds(attempts, w.backoff_initial, w.backoff_max))
            self.outbox.park(m, time.time() + wait, str(exc))
            if exc.status == 429 and exc.retry_after:
                # The limit is per company: hold every queued send, in every process.
                self.outbox.hold_queued(time.time() + exc.retry_after)
            log.info("outbound %s: not accepted (%s), retry in %.1fs", m.public_id, exc, wait)
            return "queued"
        state = OUT_FAILED if exc.kind == aircall.REJECTED else OUT_UNKNOWN
        self.outbox.finish(m, state, error=str(exc))
        log.warning("outbound %s: %s: %s", m.public_id, state, exc)
        return state


# -- the entry points' side: turn a request into an outbox row ----------------------------

def split_media(value) -> list[str]:
    """A list of URLs, or one string of URLs separated by spaces, commas or new lines."""
    if value is None or value == "":
        return []
    if isinstance(value, str):
        return [u for u in value.replace(",", " ").split() if u]
    if isinstance(value, list) and all(isinstance(u, str) for u in value):
        return [u.strip() for u in value if u.strip()]
    raise ValueError("media must be a list of URLs or a string of URLs")


def prepare(config: Config, *, source: str, idem_key: str, line: str, to: str, text: str,
            media: list[str], policy: str | None, check_bytes: bool, fetch_policy: FetchPolicy,
            request_hash: str) -> tuple[dict, dict]:
    """Validate a send request; returns (outbox item, validation dict). With
    ``check_bytes`` the attachments are fetched and checked now; without, only the rules
    that need no bytes are checked and the sender checks the bytes before sending."""
    from ..outbox import OUT_QUEUED
    from ..phones import to_e164

    cfg = config.outbound
    # What a caller's JSON may carry but no store takes (a lone surrogate, a NUL).
    line, to, text = writable(line or ""), writable(to or ""), writable(text or "")
    line = (to_e164(line) or line) if line else cfg.default_line
    policy = policy or cfg.policy
    recipient = mms.recipient_e164(to, line) or (to or "")
    if check_bytes:
        loaded = mms.load(media, mms.profile_for(cfg, line), fetch_policy)
        v = mms.validate(cfg, line, to, text, loaded, policy)
        validation = v.to_dict()
    else:
        errors = mms.message_errors(cfg, line, to, text, bool(media))
        validation = {"ok": not errors, "policy": policy, "errors": errors, "attachments": [],
                      "removed": [], "pending": "attachments are checked before sending"}
    ln = cfg.line(line)
    # A number too long for its column (40) is no number: the request is rejected, its
    # error quotes it whole, and the row keeps the start (PostgreSQL refuses longer ones).
    item = dict(idem_key=idem_key, request_hash=request_hash, source=source, line=line[:40],
                line_id=ln.id if ln else "", recipient=recipient[:40], text=text, media=media,
                policy=policy, validated=check_bytes, validation=validation,
                state=OUT_QUEUED if validation["ok"] else OUT_REJECTED,
                error=None if validation["ok"] else "; ".join(validation["errors"]))
    return item, validation
