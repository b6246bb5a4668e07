"""HubSpot calls: the hubspot-api-client, auth, pacing, retries and error translation.

Every call goes through ``HubSpotApi.call``: it takes a token from the rate-limit
bucket, sends the request with timeouts, and turns HubSpot's answers into the
pipeline's errors:

- 429 ``TEN_SECONDLY_ROLLING`` (or the search API's "secondly" limit): wait
  (``Retry-After`` when sent) and retry in the call; when that runs out, RateLimited.
- 429 ``DAILY``: RateLimited until midnight in the portal's time zone; no further call
  is made from this process until then.
- 5xx, timeouts, dropped connections: short exponential backoff with jitter in the call,
  then TransientError for the pipeline's durable retry. A create is not retried in the
  call after an ambiguous failure (HubSpot may have made the record): the writer's
  intent row and search decide that on the next attempt.
- 401: with OAuth, refresh the access token once and repeat; otherwise PermanentError.
- other 4xx: PermanentError with HubSpot's message and correlationId.
"""
from __future__ import annotations

import json
import threading
import time
from datetime import datetime, timedelta
from typing import Any, Callable
from zoneinfo import ZoneInfo

import urllib3
from hubspot import HubSpot
from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_exponential, wait_random
from urllib3.util.retry import Retry

from ..config import HubSpotConfig
from ..ratelimit import TokenBucket, acquire_together, retry_after_seconds
from .base import Meter, PermanentError, RateLimited, TransientError, WriteError

TOKEN_REFRESH_MARGIN = 120  # seconds before expiry a token is refreshed


class BurstLimited(RateLimited):
    """429 from the 10-second (or search per-second) limit: the request was not run."""


class Unreachable(TransientError):
    """Connection refused or connect timeout: the request never reached HubSpot."""


class Ambiguous(TransientError):
    """5xx, read timeout or dropped connection: HubSpot may or may not have acted."""


class InputRefused(PermanentError):
    """400, 409 or 422: HubSpot refused what was sent (one bad input refuses a whole
    batch), unlike 401/403, which refuse the caller whatever it sends."""


def parse_error_body(exc: Any) -> dict:
    try:
        body = json.loads(getattr(exc, "body", None) or "{}")
    except (TypeError, ValueError):
        return {}
    return body if isinstance(body, dict) else {}


def describe(status: int, body: dict, reason: str = "") -> str:
    """HubSpot's own words: status, category, message and correlationId."""
    parts = [f"HubSpot {status}"]
    if body.get("category"):
        parts.append(str(body["category"]))
    text = " ".join(parts) + ": " + str(body.get("message") or reason or "no message")
    if body.get("correlationId"):
        text += f" (correlationId {body['correlationId']})"
    return text


def seconds_until_midnight(time_zone: str, now: datetime | None = None) -> float:
    tz = ZoneInfo(time_zone)
    now = now.astimezone(tz) if now else datetime.now(tz)
    midnight = datetime.combine(now.date() + timedelta(days=1), datetime.min.time(), tzinfo=tz)
    return max(1.0, (midnight - now).total_seconds())


def _is_api_exception(exc: BaseException) -> bool:
    # Every generated sub-package has its own ApiException class: test the shape.
    return hasattr(exc, "status") and hasattr(exc, "body") and hasattr(exc, "headers")


class HubSpotApi:
    """One portal: the SDK's API objects, built once, and the call wrapper."""

    def __init__(self, cfg: HubSpotConfig, portal_time_zone: str = "UTC", *,
                 bucket=None, search_bucket=None, sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.time):
        self.cfg = cfg
        self.time_zone = cfg.time_zone or portal_time_zone
        self.sleep = sleep
        self.clock = clock
        # HubSpot's limit is a rolling 10 s window: a bucket refilling (limit - burst) per 10 s
        # with a burst of a tenth never lets more than the limit through in any window.
        burst = max(1, cfg.requests_per_10s // 10)
        self.bucket = bucket or TokenBucket(max(1, cfg.requests_per_10s - burst), per=10, capacity=burst)
        self.search_bucket = search_bucket or TokenBucket(cfg.searches_per_second, per=1, capacity=1)
        self.timeout = (cfg.connect_timeout, cfg.read_timeout)
        self.oauth = bool(cfg.refresh_token)
        # urllib3 retries off: retries are decided here, where we know what is safe to repeat.
        self.client = HubSpot(access_token=cfg.access_token or "pending-oauth-refresh",
                              host=cfg.base_url.rstrip("/"), retry=Retry(total=False, redirect=False))
        crm = self.client.crm
        self.contacts_search = crm.contacts.search_api
        self.contacts_basic = crm.contacts.basic_api
        self.contacts_batch = crm.contacts.batch_api
        self.comm_basic = crm.objects.communications.basic_api
        self.comm_batch = crm.objects.communications.batch_api
        self.comm_search = crm.objects.communications.search_api
        self.labels = crm.associations.v4.schema.definitions_api
        self.assoc_batch = crm.associations.v4.batch_api
        self.tokens = self.client.oauth.tokens_api
        self.action_callbacks = self.client.automation.actions.callbacks_api
        self.files = self.client.files.files_api
        self._apis = [self.contacts_search, self.contacts_basic, self.contacts_batch, self.comm_basic, self.comm_batch,
                      self.comm_search, self.labels, self.assoc_batch, self.action_callbacks, self.files]
        self._token_lock = threading.Lock()
        self._token_expires = 0.0
        self._refresh_token = cfg.refresh_token
        self.daily_blocked_until = 0.0
        self.calls = 0  # requests sent, for figures
        self.meter = Meter("hubspot")

    # -- auth ----------------------------------------------------------------------
    def _set_token(self, token: str) -> None:
        for api in self._apis:
            api.api_client.configuration.access_token = token

    def _ensure_token(self, force: bool = False) -> None:
        if not self.oauth:
            return
        with self._token_lock:
            if not force and self.clock() < self._token_expires - TOKEN_REFRESH_MARGIN:
                return
            try:
                self.calls += 1
                res = self.tokens.create(grant_type="refresh_token", client_id=self.cfg.client_id,
                                         client_secret=self.cfg.client_secret,
                                         refresh_token=self._refresh_token, _request_timeout=self.timeout)
                self.meter.request("ok")
            except Exception as exc:
                self.meter.request(_result(exc))
                err = self._translate(exc)
                if isinstance(err, PermanentError):
                    raise PermanentError(f"HubSpot OAuth token refresh failed, re-authorize the app: {err}")
                raise err
            self._set_token(res.access_token)
            self._token_expires = self.clock() + float(res.expires_in or 1800)
            if res.refresh_token:
                self._refresh_token = res.refresh_token

    # -- calls ---------------------------------------------------------------------
    def call(self, fn: Callable, *args, idempotent: bool = True, search: bool = False, **kwargs):
        """One HubSpot request, paced, retried where safe, errors translated."""
        def retryable(exc: BaseException) -> bool:
            return isinstance(exc, (BurstLimited, Unreachable)) or (idempotent and isinstance(exc, Ambiguous))

        retrying = Retrying(stop=stop_after_attempt(self.cfg.retries), wait=self._wait,
                            retry=retry_if_exception(retryable), sleep=self.sleep, reraise=True)
        return retrying(self._once, fn, args, kwargs, search)

    def _wait(self, state) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, TransientError) and exc.retry_after:
            return min(exc.retry_after, 60.0)
        backoff = wait_exponential(multiplier=self.cfg.retry_initial, max=self.cfg.retry_max) \
            + wait_random(0, self.cfg.retry_initial)
        return backoff(state)

    def _once(self, fn: Callable, args: tuple, kwargs: dict, search: bool):
        if self.clock() < self.daily_blocked_until:
            raise RateLimited("HubSpot daily API limit reached; parked until it resets",
                              retry_after=self.daily_blocked_until - self.clock())
        self._ensure_token()
        for refreshed in (False, True):
            # A search takes both tokens for one send time (ratelimit.acquire_together).
            waited = (acquire_together(self.search_bucket, self.bucket) if search
                      else self.bucket.acquire()) or 0.0
            self.meter.waited(waited)
            try:
                self.calls += 1
                result = fn(*args, _request_timeout=self.timeout, **kwargs)
                self.meter.request("ok")
                return result
            except Exception as exc:
                self.meter.request(_result(exc))
                if self.oauth and not refreshed and getattr(exc, "status", None) == 401:
                    self._ensure_token(force=True)  # token revoked or expired early: once more
                    continue
                raise self._translate(exc) from exc

    def _translate(self, exc: BaseException) -> Exception:
        if isinstance(exc, (urllib3.exceptions.ConnectTimeoutError, urllib3.exceptions.NewConnectionError)):
            return Unreachable(f"HubSpot unreachable: {type(exc).__name__}")
        if isinstance(exc, urllib3.exceptions.ReadTimeoutError):
            return Ambiguous(f"HubSpot did not answer within {self.cfg.read_timeout:g}s")
        if isinstance(exc, urllib3.exceptions.HTTPError):
            return Ambiguous(f"HubSpot connection failed: {type(exc).__name__}: {exc}")
        if not _is_api_exception(exc):
            return exc if isinstance(exc, Exception) else RuntimeError(str(exc))
        status = int(getattr(exc, "status", 0) or 0)
        body = parse_error_body(exc)
        text = describe(status, body, getattr(exc, "reason", "") or "")
        if status == 0:  # SSL and other transport failures the SDK wraps
            return Unreachable(f"HubSpot unreachable: {getattr(exc, 'reason', exc)}")
        if status == 429:
            retry_after = _retry_after(exc)
            policy = str(body.get("policyName") or "")
            if policy == "DAILY":
                wait = seconds_until_midnight(self.time_zone)
                self.daily_blocked_until = self.clock() + wait
                return RateLimited(f"{text}; parked until midnight {self.time_zone}", retry_after=wait)
            # The 10 s window frees up within 10 s; the search API's per-second one within 1 s.
            window = 10.0 if policy == "TEN_SECONDLY_ROLLING" else 1.0
            return BurstLimited(text, retry_after=retry_after or window)
        if status >= 500 or status in (408, 423):
            return Ambiguous(text, retry_after=_retry_after(exc))
        if status == 401:
            return PermanentError(f"{text} (check hubspot.access_token)" if not self.oauth else text)
        if status in (400, 409, 422):
            return InputRefused(text)
        return PermanentError(text)


def _result(exc: BaseException) -> str:
    """How a failed request counts in /metrics."""
    return "rate_limited" if getattr(exc, "status", None) == 429 else "error"


def _retry_after(exc: Any) -> float | None:
    headers = getattr(exc, "headers", None) or {}
    return retry_after_seconds(headers.get("Retry-After") if hasattr(headers, "get") else None)


def errors_by_key(errors) -> dict[str, WriteError]:
    """A 207 answer's errors, by every id / objectWriteTraceId named in their context, and
    by the error's own ``id`` (HubSpot's StandardError names a record there too)."""
    out: dict[str, WriteError] = {}
    for err in errors or []:
        body = {"category": err.category, "message": err.message}
        status = str(getattr(err, "status", "") or "")
        text = describe(207, body)
        transient = err.category in ("RATE_LIMITS", "INTERNAL_ERROR", "SERVICE_UNAVAILABLE") \
            or status.startswith("5")
        exc = TransientError(text) if transient else PermanentError(text)
        for values in (err.context or {}).values():
            for key in values or []:
                out[str(key)] = exc
        if getattr(err, "id", None):
            out[str(err.id)] = exc
    return out
