"""One Salesforce org's session: login, re-login, limits and retries around simple-salesforce.

Every REST call goes through ``SalesforceClient.call``, which
- logs in lazily (password + security token, OAuth 2 JWT bearer, or a given token) and
  logs in again once when Salesforce answers ``INVALID_SESSION_ID``;
- retries 5xx, timeouts and connection errors a few times in-call with jittered
  backoff (tenacity), then raises ``TransientError`` for the pipeline's slower backoff;
- turns ``REQUEST_LIMIT_EXCEEDED`` into ``RateLimited`` and stops calling the org
  altogether until a growing cool-down has passed (no hammering);
- reads ``Sforce-Limit-Info`` and reports when usage is near the allocation;
- turns validation errors into ``PermanentError`` carrying Salesforce's own message.
"""
from __future__ import annotations

import logging
import random
import threading
import time
from typing import Any

import requests
from simple_salesforce import Salesforce, SalesforceLogin
from simple_salesforce.exceptions import (
    SalesforceAuthenticationFailed, SalesforceError, SalesforceExpiredSession,
    SalesforceGeneralError, SalesforceRefusedRequest,
)
from tenacity import (Retrying, retry_if_exception, stop_after_attempt, wait_exponential,
                      wait_random)

from ..config import SalesforceConfig
from ..ratelimit import TokenBucket, Unlimited
from .base import Meter, PermanentError, RateLimited, TransientError, WriteError

log = logging.getLogger("connector.salesforce")

# Errors Salesforce returns with a 4xx that go away on their own.
TRANSIENT_CODES = {"UNABLE_TO_LOCK_ROW", "SERVER_UNAVAILABLE", "REQUEST_RUNNING_TOO_LONG",
                   "QUERY_TIMEOUT"}
LIMIT_CODE = "REQUEST_LIMIT_EXCEEDED"


def error_items(content: Any) -> list[dict]:
    """Salesforce error bodies are ``[{"errorCode", "message", "fields"}]``; be lenient."""
    if isinstance(content, dict):
        content = [content]
    if isinstance(content, list):
        items = [c for c in content if isinstance(c, dict)]
        rest = [str(c) for c in content if not isinstance(c, dict)]  # 300: the records' URLs
        return items + ([{"errorCode": "", "message": ", ".join(rest)[:500]}] if rest else [])
    return [{"errorCode": "", "message": str(content or "")[:500]}]


def describe_errors(content: Any) -> str:
    parts = []
    for e in error_items(content):
        code = e.get("errorCode") or e.get("statusCode") or ""
        text = f"{code}: {e.get('message', '')}" if code else str(e.get("message", ""))
        if e.get("fields"):
            text += f" (fields: {', '.join(map(str, e['fields']))})"
        parts.append(text)
    return "; ".join(parts) or "no error details"


def error_codes(content: Any) -> set[str]:
    return {str(e.get("errorCode") or e.get("statusCode") or "") for e in error_items(content)}


def record_error(errors: Any) -> TransientError | PermanentError:
    """One record's failure in an sObject Collections answer."""
    detail = describe_errors(errors)
    if error_codes(errors) & TRANSIENT_CODES:
        return TransientError(f"Salesforce: {detail}")
    return PermanentError(f"Salesforce refused the record: {detail}")


class _Retryable(Exception):
    """Internal: a failure worth a quick in-call retry."""

    def __init__(self, message: str, sent: bool = True):
        super().__init__(message)
        self.sent = sent  # the request may have reached Salesforce


class Refused(PermanentError):
    """Salesforce refused the request; ``codes`` are its error codes."""

    def __init__(self, message: str, codes: set[str]):
        super().__init__(message)
        self.codes = codes


class _Session(requests.Session):
    """A session-wide timeout (simple-salesforce's logins pass none), and logins sent to
    ``salesforce.login_url`` when set (simple-salesforce always builds
    https://<domain>.salesforce.com/...)."""

    def __init__(self, timeout: float, domain: str = "login", login_url: str = ""):
        super().__init__()
        self.default_timeout = timeout
        self.login_prefix = f"https://{domain}.salesforce.com/services/"
        self.login_url = login_url.rstrip("/")

    def request(self, method, url, **kwargs):  # noqa: D401 - requests' signature
        kwargs.setdefault("timeout", self.default_timeout)
        if self.login_url and isinstance(url, str) and url.startswith(self.login_prefix):
            url = f"{self.login_url}/services/{url[len(self.login_prefix):]}"
        return super().request(method, url, **kwargs)


class SalesforceClient:
    def __init__(self, cfg: SalesforceConfig, *, resolve=lambda p: p, bucket=None,
                 clock=time.time, session: requests.Session | None = None):
        self.cfg = cfg
        self.resolve = resolve
        self.clock = clock
        self.session = session or _Session(cfg.timeout, cfg.domain, cfg.login_url)
        self.bucket = bucket or (TokenBucket(cfg.requests_per_second) if cfg.requests_per_second
                                 else Unlimited())
        self._sf: Salesforce | None = None
        self._lock = threading.Lock()
        self.limited_until = 0.0  # REQUEST_LIMIT_EXCEEDED cool-down
        self.limit_hits = 0
        self.usage: tuple[int, int] | None = None  # (used, allocation) from Sforce-Limit-Info
        self.usage_at = 0.0  # when it was read
        self.calls = 0  # REST calls made (logins excluded), for benchmarks and logs
        self.meter = Meter("salesforce")
        # In-call backoff between quick retries (tests swap in tenacity.wait_none()).
        self.retry_wait = wait_exponential(multiplier=0.2, max=2) + wait_random(0, 0.3)

    # -- session ---------------------------------------------------------------------
    def _login(self) -> Salesforce:
        c = self.cfg
        try:
            if c.auth == "token":
                session_id, instance = c.access_token, ""
            elif c.auth == "password":
                session_id, instance = SalesforceLogin(
                    username=c.username, password=c.password, security_token=c.security_token,
                    domain=c.domain, sf_version=c.api_version, session=self.session)
            else:
                key_file = str(self.resolve(c.private_key_file)) if c.private_key_file else None
                session_id, instance = SalesforceLogin(
                    username=c.username, consumer_key=c.consumer_key, privatekey_file=key_file,
                    privatekey=c.private_key or None, domain=c.domain, session=self.session)
        except SalesforceAuthenticationFailed as exc:
            detail = exc.content.decode("utf-8", "replace") if isinstance(exc.content, bytes) else exc.content
            raise TransientError(f"Salesforce login failed ({c.auth}): {exc.code}: {detail}")
        except requests.RequestException as exc:
            raise TransientError(f"Salesforce login failed ({c.auth}): {type(exc).__name__}: {exc}")
        except (OSError, ValueError) as exc:  # unreadable or malformed private key
            raise PermanentError(f"Salesforce login cannot start ({c.auth}): {exc}")
        base = (c.instance_url or f"https://{instance}").rstrip("/")
        sf = Salesforce(session_id=session_id, instance_url=base, version=c.api_version,
                        session=self.session)
        # simple-salesforce forces https; keep an overridden http:// URL (local fakes) as given.
        sf.base_url = f"{base}/services/data/v{c.api_version}/"
        log.info("salesforce: logged in (%s) to %s", c.auth, base)
        return sf

    def salesforce(self) -> Salesforce:
        with self._lock:
            if self._sf is None:
                self._sf = self._login()
            return self._sf

    def _relogin(self, stale: Salesforce) -> Salesforce:
        with self._lock:
            if self._sf is stale:  # another thread may have logged in already
                if self.cfg.auth == "token":
                    raise PermanentError("Salesforce: INVALID_SESSION_ID: the configured "
                                         "salesforce.access_token expired; it cannot be refreshed")
                self._sf = self._login()
            return self._sf

    # -- calls -----------------------------------------------------------------------
    def near_allocation(self) -> bool:
        """Usage reached ``usage_pause_fraction`` of the org's daily (rolling 24 h)
        allocation. A figure older than ``usage_pause_seconds`` is read again first
        (``GET /limits``): held-back updates make no call that would bring a new one, and
        usage falls as the day rolls on."""
        if self.usage and self.clock() - self.usage_at > self.cfg.usage_pause_seconds:
            self._read_usage()
        return bool(self.usage and self.usage[1]
                    and self.usage[0] >= self.cfg.usage_pause_fraction * self.usage[1])

    def _read_usage(self) -> None:
        self.usage = None  # unknown unless the answer tells
        try:
            limits = self.call("limits/")
        except WriteError as exc:
            log.warning("salesforce: could not read API usage (%s); status updates go on", exc)
            return
        daily = limits.get("DailyApiRequests") if isinstance(limits, dict) else None
        if isinstance(daily, dict) and daily.get("Max"):
            self.usage = (int(daily["Max"]) - int(daily.get("Remaining", 0)), int(daily["Max"]))
            self.usage_at = self.clock()

    def check_limited(self) -> None:
        wait = self.limited_until - self.clock()
        if wait > 0:
            raise RateLimited(f"Salesforce REQUEST_LIMIT_EXCEEDED; paused for {wait:.0f}s more",
                              retry_after=wait)

    def call(self, path: str, method: str = "GET", idempotent: bool | None = None, **kwargs) -> Any:
        """One REST call (``path`` relative to /services/data/vXX.X/); parsed JSON or None.

        A non-idempotent call (POST: a create) is repeated in-call only when it surely never
        reached Salesforce; otherwise the caller's own duplicate check runs first."""
        self.check_limited()
        if idempotent is None:
            idempotent = method != "POST"
        retrying = Retrying(
            retry=retry_if_exception(lambda e: isinstance(e, _Retryable) and (idempotent or not e.sent)),
            stop=stop_after_attempt(self.cfg.call_retries),
            wait=self.retry_wait,
            reraise=True)
        try:
            for attempt in retrying:
                with attempt:
                    return self._call_once(path, method, **kwargs)
        except _Retryable as exc:
            raise TransientError(f"Salesforce {method} {path.split('?')[0]}: {exc}") from None

    def _call_once(self, path: str, method: str, **kwargs) -> Any:
        sf = self.salesforce()
        relogged = False
        while True:
            self.meter.waited(self.bucket.acquire() or 0.0)
            self.calls += 1
            sf.api_usage = {}  # simple-salesforce keeps the last answer's figure: only a new one counts
            try:
                result = sf.restful(path, method=method, **kwargs)
            except SalesforceExpiredSession as exc:
                self.meter.request("error")
                if relogged:
                    raise TransientError(f"Salesforce: session refused right after login: "
                                         f"{describe_errors(exc.content)}")
                sf = self._relogin(sf)
                relogged = True
                continue
            except SalesforceError as exc:
                self.meter.request("rate_limited" if LIMIT_CODE in error_codes(exc.content) else "error")
                self._note_usage(sf)
                self._raise_for(exc)
            except (requests.Timeout, requests.ConnectionError) as exc:
                self.meter.request("error")
                raise _Retryable(f"{type(exc).__name__}: {exc}",
                                 sent=not isinstance(exc, requests.ConnectTimeout))
            self.meter.request("ok")
            self._note_usage(sf)
            self.limit_hits = 0
            return result

    def _note_usage(self, sf: Salesforce) -> None:
        usage = sf.api_usage.get("api-usage") if sf.api_usage else None
        if usage:
            self.usage = (usage.used, usage.total)
            self.usage_at = self.clock()
            self.meter.usage(usage.used, usage.total)

    def _raise_for(self, exc: SalesforceError) -> None:
        codes = error_codes(exc.content)
        detail = describe_errors(exc.content)
        if isinstance(exc, SalesforceRefusedRequest) and LIMIT_CODE in codes:
            self.limit_hits += 1
            wait = min(self.cfg.limit_backoff_max,
                       self.cfg.limit_backoff_initial * 2 ** (self.limit_hits - 1))
            wait *= 1 + random.random() * 0.2  # workers must not all come back at once
            self.limited_until = max(self.limited_until, self.clock() + wait)
            log.warning("salesforce: %s; pausing all calls for %.0fs", detail, wait)
            raise RateLimited(f"Salesforce {detail}", retry_after=wait)
        if (isinstance(exc, SalesforceGeneralError) and exc.status >= 500) or codes & TRANSIENT_CODES:
            raise _Retryable(f"HTTP {exc.status}: {detail}")
        if exc.status == 300:  # an upsert whose external id is on several records
            raise Refused(f"Salesforce refused the request (HTTP 300): several records carry this "
                          f"external id (mark the field Unique in Setup, then remove the copies): {detail}", codes)
        raise Refused(f"Salesforce refused the request (HTTP {exc.status}): {detail}", codes)
