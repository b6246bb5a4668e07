"""Fetch media by URL without letting the URL reach places it must not (SSRF).

Usage::

    from connector.fetch import FetchError, FetchPolicy, fetch
    policy = FetchPolicy.from_config(config.fetch)            # or FetchPolicy(max_bytes=...)
    got = fetch("https://cdn.example.com/a.png", policy, max_bytes=5_000_000)
    got.content, got.content_type, got.size, got.url        # bytes, 'image/png', n, final URL

Every failure is a ``FetchError`` whose ``kind`` is one of ``refused`` (scheme, host or
address not allowed, too many redirects), ``too_large``, ``timeout``, ``http_error``
(``status`` set) or ``network`` (DNS failure, connection refused, TLS error).

Rules: https only unless ``allow_http``; a URL with a backslash, whitespace or control
character inside is refused (parsers disagree on where its host ends), and the host
checked is the one of the URL as it will be sent; the host's every resolved address must
be a public unicast address (no loopback, private, link-local, multicast, reserved,
shared or unspecified) unless the host is in ``allow_hosts`` or the address in
``allow_networks``; the connection then goes to those checked addresses, never to a
second lookup of the name (DNS rebinding); redirects are followed by hand, each hop
checked again, at most ``max_redirects``; ``total_timeout`` bounds the whole fetch, a
server dripping bytes included; the size cap is enforced while streaming, and the body is
asked for uncompressed so a small gzip cannot expand past it; no environment proxies.
"""
from __future__ import annotations

import ipaddress
import socket
import threading
import time
from dataclasses import dataclass
from typing import Iterable
from urllib.parse import unquote, urljoin, urlsplit

import requests
import urllib3
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError
from urllib3.util.connection import create_connection

REDIRECT_CODES = (301, 302, 303, 307, 308)
HEAD_BYTES = 4096  # kept of a file over the size cap: its type shows in the first bytes
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class FetchError(Exception):
    """A URL could not be fetched; ``kind`` says why, ``status`` for http_error."""

    def __init__(self, kind: str, message: str, *, url: str = "", status: int | None = None,
                 head: bytes = b""):
        self.kind = kind
        self.url = url
        self.status = status
        self.head = head  # too_large: the file's first bytes, enough to tell its type
        super().__init__(message)


@dataclass(frozen=True)
class Fetched:
    content: bytes
    content_type: str  # media type of the final response, lower case, no parameters
    size: int
    url: str  # final URL after redirects


@dataclass(frozen=True)
class FetchPolicy:
    max_bytes: int = 10 * 1024 * 1024
    allow_http: bool = False
    allow_hosts: frozenset[str] = frozenset()
    allow_networks: tuple[IPNetwork, ...] = ()
    connect_timeout: float = 3.0
    read_timeout: float = 10.0
    total_timeout: float = 30.0  # whole download, all hops
    max_redirects: int = 3
    user_agent: str = "mms-crm-connector"

    @classmethod
    def from_config(cls, cfg, **overrides) -> "FetchPolicy":
        """From a ``FetchConfig`` section (connector.config)."""
        values = dict(
            max_bytes=cfg.max_bytes, allow_http=cfg.allow_http,
            allow_hosts=frozenset(h.lower().rstrip(".") for h in cfg.allow_hosts),
            allow_networks=tuple(ipaddress.ip_network(n, strict=False) for n in cfg.allow_networks),
            connect_timeout=cfg.connect_timeout, read_timeout=cfg.read_timeout,
            total_timeout=cfg.total_timeout, max_redirects=cfg.max_redirects)
        values.update(overrides)
        return cls(**values)

    def address_allowed(self, ip: IPAddress) -> bool:
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        if any(ip in net for net in self.allow_networks):
            return True
        return is_public(ip)


def is_public(ip: IPAddress) -> bool:
    """A globally routable unicast address; an IPv6 one that carries an IPv4 address
    (6to4 2002::/16, Teredo, mapped) only if that one is too, and never a site-local one
    (fec0::/10, deprecated but still routed by some networks)."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.is_site_local:
            return False
        inner = ip.sixtofour or ip.ipv4_mapped or (ip.teredo[1] if ip.teredo else None)
        if inner is not None and not is_public(inner):
            return False
    return not (ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_multicast
                or ip.is_reserved or ip.is_unspecified or not ip.is_global)


def _resolve(host: str, port: int) -> list[IPAddress]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise FetchError("network", f"cannot resolve host {host!r}: {exc}") from exc
    out = []
    for info in infos:
        addr = info[4][0].split("%", 1)[0]  # drop an IPv6 zone id
        out.append(ipaddress.ip_address(addr))
    return out


@dataclass(frozen=True)
class Target:
    """A checked URL: what to send, and the addresses it may be sent to."""
    url: str  # as requests would send it: IDNA host, percent-encoded path
    scheme: str
    host: str
    port: int
    addresses: tuple[IPAddress, ...]


def check_url(url: str, policy: FetchPolicy) -> Target:
    """Raise FetchError(refused) unless ``url`` may be fetched under ``policy``; return what
    to fetch: the URL as it will be sent, and the checked addresses to connect to."""
    url = url.strip()  # whitespace around a URL is not part of it (RFC 3986, appendix C)
    odd = next((c for c in url if c == "\\" or c.isspace() or not c.isprintable()), None)
    if odd is not None:
        what = {"\\": "a backslash", " ": "a space"}.get(odd, f"the character U+{ord(odd):04X}")
        raise FetchError("refused", f"not a valid URL: it contains {what}", url=url)
    try:
        scheme = urlsplit(url).scheme.lower()
    except ValueError as exc:
        raise FetchError("refused", f"not a valid URL: {exc}", url=url) from exc
    allowed_schemes = ("https", "http") if policy.allow_http else ("https",)
    if scheme not in allowed_schemes:
        raise FetchError("refused", f"URL scheme {scheme or '(none)'!r} is not allowed "
                         f"(allowed: {', '.join(allowed_schemes)})", url=url)
    # Check the host of the URL as it is sent, not as urlsplit reads the input.
    try:
        sent = requests.Request("GET", url).prepare().url
        parts = urlsplit(sent)
        port = parts.port or (443 if scheme == "https" else 80)
    except (requests.RequestException, ValueError) as exc:
        if "No host supplied" in str(exc):
            raise FetchError("refused", "URL has no host", url=url) from exc
        raise FetchError("refused", f"not a valid URL: {exc}", url=url) from exc
    host = (parts.hostname or "").lower().rstrip(".")
    if not host:
        raise FetchError("refused", "URL has no host", url=url)
    addresses = tuple(_resolve(host, port))
    if host not in policy.allow_hosts:
        for ip in addresses:
            if not policy.address_allowed(ip):
                raise FetchError("refused", f"host {host!r} resolves to a non-public address ({ip})",
                                 url=url)
    return Target(url=sent, scheme=scheme, host=host, port=port, addresses=addresses)


class _Deadline:
    """``total_timeout``, enforced by shutting the fetch's sockets down when it passes: the
    read timeout bounds each read, not their sum, so a server dripping a byte at a time
    (headers or body) would otherwise hold the caller's thread far longer."""

    def __init__(self, seconds: float):
        self.at = time.monotonic() + seconds
        self._socks: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._cut)
        self._timer.daemon = True
        self._timer.start()

    def passed(self) -> bool:
        return time.monotonic() >= self.at

    def left(self, at_most: float) -> float:
        return max(min(at_most, self.at - time.monotonic()), 0.001)

    def watch(self, sock: socket.socket) -> None:
        # A duplicate: its descriptor cannot be closed and reused under the timer.
        with self._lock:
            self._socks.append(sock.dup())
            if self.passed():
                self._cut_locked()

    def _cut(self) -> None:
        with self._lock:
            self._cut_locked()

    def _cut_locked(self) -> None:
        for s in self._socks:
            try:
                s.shutdown(socket.SHUT_RDWR)  # wakes a blocked read; close() would not
            except OSError:
                pass

    def release(self) -> None:
        with self._lock:
            for s in self._socks:
                s.close()
            self._socks.clear()

    def close(self) -> None:
        self._timer.cancel()
        self.release()


class _PinnedConnection:
    """Connects to the addresses check_url() resolved and checked, in turn, instead of
    letting urllib3 look the name up again: a second answer may point inside (DNS
    rebinding). The connection's host stays the URL's, so the Host header, TLS SNI and
    certificate check use the name. Overrides urllib3's one connect step, ``_new_conn``."""

    def __init__(self, *args, addresses: tuple[IPAddress, ...], deadline: _Deadline, **kwargs):
        super().__init__(*args, **kwargs)
        self._addresses = addresses
        self._deadline = deadline

    def _new_conn(self) -> socket.socket:
        error: Exception = NewConnectionError(self, f"no address for {self.host}")
        for ip in self._addresses:
            try:
                sock = create_connection((str(ip), self.port), self._deadline.left(self.timeout),
                                         socket_options=self.socket_options)
            except socket.timeout as exc:
                error = ConnectTimeoutError(self, f"connecting to {ip} timed out")
                error.__cause__ = exc
                continue
            except OSError as exc:
                error = NewConnectionError(self, f"cannot connect to {ip}: {exc}")
                error.__cause__ = exc
                continue
            self._deadline.watch(sock)
            return sock
        raise error


class _HTTPConnection(_PinnedConnection, urllib3.connection.HTTPConnection):
    pass


class _HTTPSConnection(_PinnedConnection, urllib3.connection.HTTPSConnection):
    pass


class _HTTPPool(urllib3.HTTPConnectionPool):
    ConnectionCls = _HTTPConnection


class _HTTPSPool(urllib3.HTTPSConnectionPool):
    ConnectionCls = _HTTPSConnection


def fetch(url: str, policy: FetchPolicy, *, max_bytes: int | None = None) -> Fetched:
    """GET ``url`` under ``policy``; at most ``max_bytes`` (default: the policy's)."""
    cap = policy.max_bytes if max_bytes is None else max_bytes
    deadline = _Deadline(policy.total_timeout)
    try:
        current = url
        for _ in range(policy.max_redirects + 1):
            if deadline.passed():
                raise _too_long(current)
            target = check_url(current, policy)
            with _pool(target, policy, deadline) as pool:
                resp = _get(pool, target, policy, deadline)
                try:
                    if resp.status in REDIRECT_CODES:
                        location = resp.headers.get("Location")
                        if not location:
                            raise FetchError("http_error", f"HTTP {resp.status} without Location",
                                             url=target.url, status=resp.status)
                        current = urljoin(target.url, location)
                        continue
                    if resp.status >= 400 or resp.status < 200:
                        raise FetchError("http_error", f"HTTP {resp.status} from {_safe(target.url)}",
                                         url=target.url, status=resp.status)
                    content = _read_capped(resp, target.url, cap, deadline)
                    ctype = resp.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()
                    return Fetched(content=content, content_type=ctype, size=len(content),
                                   url=target.url)
                finally:
                    resp.close()
                    deadline.release()
        raise FetchError("refused", f"more than {policy.max_redirects} redirects", url=url)
    finally:
        deadline.close()


def _pool(target: Target, policy: FetchPolicy, deadline: _Deadline) -> urllib3.HTTPConnectionPool:
    # One pool per hop, used once; no proxy (an environment proxy would bypass the checks).
    kwargs = dict(timeout=urllib3.Timeout(connect=policy.connect_timeout, read=policy.read_timeout),
                  maxsize=1, retries=False, addresses=target.addresses, deadline=deadline)
    if target.scheme == "https":
        return _HTTPSPool(target.host, target.port, cert_reqs="CERT_REQUIRED",
                          ca_certs=requests.utils.DEFAULT_CA_BUNDLE_PATH, **kwargs)
    return _HTTPPool(target.host, target.port, **kwargs)


def _get(pool: urllib3.HTTPConnectionPool, target: Target, policy: FetchPolicy,
         deadline: _Deadline) -> urllib3.BaseHTTPResponse:
    parts = urlsplit(target.url)
    headers = {"Accept-Encoding": "identity", "User-Agent": policy.user_agent, "Accept": "*/*"}
    if parts.username is not None:  # user:password@host, as requests would send it
        headers.update(urllib3.make_headers(
            basic_auth=f"{unquote(parts.username)}:{unquote(parts.password or '')}"))
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    try:
        return pool.urlopen("GET", path, headers=headers, redirect=False, retries=False,
                            assert_same_host=False, preload_content=False)
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        if deadline.passed():
            raise _too_long(target.url) from exc
        if _timed_out(exc):
            raise FetchError("timeout", f"timed out fetching {_safe(target.url)}", url=target.url) from exc
        raise FetchError("network", f"cannot fetch {_safe(target.url)}: {type(exc).__name__}",
                         url=target.url) from exc


def _timed_out(exc: BaseException) -> bool:
    # NewConnectionError subclasses ConnectTimeoutError in urllib3, yet is no timeout.
    return (isinstance(exc, (urllib3.exceptions.TimeoutError, socket.timeout))
            and not isinstance(exc, NewConnectionError))


def _read_capped(resp: urllib3.BaseHTTPResponse, url: str, cap: int, deadline: _Deadline) -> bytes:
    declared = resp.headers.get("Content-Length", "")
    if declared.isdigit() and int(declared) > cap:
        try:  # its first bytes still say what it is (the rules' limit depends on the type)
            head = resp.read(HEAD_BYTES)
        except (urllib3.exceptions.HTTPError, OSError):
            head = b""
        raise FetchError("too_large", f"{_safe(url)} is {int(declared)} bytes, more than {cap}", url=url,
                         head=head)
    chunks: list[bytes] = []
    total = 0
    try:
        while chunk := resp.read(min(64 * 1024, cap - total + 1)):
            total += len(chunk)
            if total > cap:
                head = (chunks[0] if chunks else chunk)[:HEAD_BYTES]
                raise FetchError("too_large", f"{_safe(url)} is more than {cap} bytes", url=url, head=head)
            chunks.append(chunk)
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        if deadline.passed():
            raise _too_long(url) from exc
        kind = "timeout" if _timed_out(exc) else "network"
        raise FetchError(kind, f"reading {_safe(url)} failed: {type(exc).__name__}", url=url) from exc
    if deadline.passed():  # the cut connection may have read as the end of the body
        raise _too_long(url)
    return b"".join(chunks)


def _too_long(url: str) -> FetchError:
    return FetchError("timeout", f"download of {_safe(url)} took too long", url=url)


def _safe(url: str) -> str:
    """The URL without its query string (presigned URLs carry credentials there)."""
    p = urlsplit(url)
    return f"{p.scheme}://{p.netloc.rsplit('@', 1)[-1]}{p.path}"


def parse_networks(values: Iterable[str]) -> tuple[IPNetwork, ...]:
    return tuple(ipaddress.ip_network(v, strict=False) for v in values)
