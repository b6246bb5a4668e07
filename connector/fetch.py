"""Fetch media by URL without letting the URL reach places it must not (SSRF).

Usage::

    from connector.fetch import FetchError, FetchPolicy, fetch
    policy = FetchPolicy.from_config(config.fetch)            # or FetchPolicy(max_bytes=...)
    got = fetch("https://cdn.example.com/a.png", policy, max_bytes=5_000_000)
    got.content, got.content_type, got.size, got.url        # bytes, 'image/png', n, final URL

Every failure is a ``FetchError`` whose ``kind`` is one of ``refused`` (scheme, host or
address not allowed, too many redirects), ``too_large``, ``timeout``, ``http_error``
(``status`` set) or ``network`` (DNS failure, connection refused, TLS error).

Rules: https only unless ``allow_http``; the host's every resolved address must be a
public unicast address (no loopback, private, link-local, multicast, reserved, shared or
unspecified) unless the host is in ``allow_hosts`` or the address in ``allow_networks``;
redirects are followed by hand, each hop checked again, at most ``max_redirects``; after
connecting, the socket's peer address is checked too (DNS rebinding between our lookup
and the connection); the size cap is enforced while streaming, and the body is asked for
uncompressed so a small gzip cannot expand past it; no environment proxies.
"""
from __future__ import annotations

import ipaddress
import socket
import time
from dataclasses import dataclass, field
from typing import Iterable
from urllib.parse import urljoin, urlsplit

import requests

REDIRECT_CODES = (301, 302, 303, 307, 308)
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class FetchError(Exception):
    """A URL could not be fetched; ``kind`` says why, ``status`` for http_error."""

    def __init__(self, kind: str, message: str, *, url: str = "", status: int | None = None):
        self.kind = kind
        self.url = url
        self.status = status
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
    """A globally routable unicast address."""
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


def check_url(url: str, policy: FetchPolicy) -> None:
    """Raise FetchError(refused) unless ``url`` may be fetched under ``policy``."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise FetchError("refused", f"not a valid URL: {exc}", url=url) from exc
    scheme = parts.scheme.lower()
    allowed_schemes = ("https", "http") if policy.allow_http else ("https",)
    if scheme not in allowed_schemes:
        raise FetchError("refused", f"URL scheme {scheme or '(none)'!r} is not allowed "
                         f"(allowed: {', '.join(allowed_schemes)})", url=url)
    host = (parts.hostname or "").lower().rstrip(".")
    if not host:
        raise FetchError("refused", "URL has no host", url=url)
    if host in policy.allow_hosts:
        return
    addresses = _resolve(host, port or (443 if scheme == "https" else 80))
    for ip in addresses:
        if not policy.address_allowed(ip):
            raise FetchError("refused", f"host {host!r} resolves to a non-public address ({ip})",
                             url=url)


def _check_peer(resp: requests.Response, url: str, policy: FetchPolicy) -> None:
    host = (urlsplit(url).hostname or "").lower().rstrip(".")
    if host in policy.allow_hosts:
        return
    sock = _peer_socket(resp)
    if sock is None:
        return  # nothing to inspect; the lookup was checked
    try:
        peer = ipaddress.ip_address(sock.getpeername()[0].split("%", 1)[0])
    except (OSError, ValueError):
        return
    if not policy.address_allowed(peer):
        raise FetchError("refused", f"host {host!r} connected to a non-public address ({peer})",
                         url=url)


def _peer_socket(resp: requests.Response):
    # The connection keeps its socket, unless http.client handed it to the response
    # (a "Connection: close" reply): then the response's file object holds it.
    sock = getattr(getattr(resp.raw, "connection", None), "sock", None)
    if sock is None:
        fp = getattr(getattr(resp.raw, "_fp", None), "fp", None)
        sock = getattr(getattr(fp, "raw", None), "_sock", None)
    return sock


def fetch(url: str, policy: FetchPolicy, *, max_bytes: int | None = None,
          session: requests.Session | None = None) -> Fetched:
    """GET ``url`` under ``policy``; at most ``max_bytes`` (default: the policy's)."""
    cap = policy.max_bytes if max_bytes is None else max_bytes
    deadline = time.monotonic() + policy.total_timeout
    own = session is None
    s = session or requests.Session()
    s.trust_env = False  # an environment proxy would bypass the address checks
    try:
        current = url
        for hop in range(policy.max_redirects + 1):
            check_url(current, policy)
            resp = _get(s, current, policy)
            try:
                _check_peer(resp, current, policy)
                if resp.status_code in REDIRECT_CODES:
                    location = resp.headers.get("Location")
                    if not location:
                        raise FetchError("http_error", f"HTTP {resp.status_code} without Location",
                                         url=current, status=resp.status_code)
                    current = urljoin(current, location)
                    continue
                if resp.status_code >= 400 or resp.status_code < 200:
                    raise FetchError("http_error", f"HTTP {resp.status_code} from {_safe(current)}",
                                     url=current, status=resp.status_code)
                content = _read_capped(resp, current, cap, deadline)
                ctype = resp.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()
                return Fetched(content=content, content_type=ctype, size=len(content), url=current)
            finally:
                resp.close()
        raise FetchError("refused", f"more than {policy.max_redirects} redirects", url=url)
    finally:
        if own:
            s.close()


def _get(s: requests.Session, url: str, policy: FetchPolicy) -> requests.Response:
    headers = {"Accept-Encoding": "identity", "User-Agent": policy.user_agent}
    try:
        return s.get(url, headers=headers, stream=True, allow_redirects=False,
                     timeout=(policy.connect_timeout, policy.read_timeout))
    except requests.Timeout as exc:
        raise FetchError("timeout", f"timed out fetching {_safe(url)}", url=url) from exc
    except requests.RequestException as exc:
        raise FetchError("network", f"cannot fetch {_safe(url)}: {type(exc).__name__}", url=url) from exc


def _read_capped(resp: requests.Response, url: str, cap: int, deadline: float) -> bytes:
    declared = resp.headers.get("Content-Length", "")
    if declared.isdigit() and int(declared) > cap:
        raise FetchError("too_large", f"{_safe(url)} is {int(declared)} bytes, more than {cap}", url=url)
    chunks: list[bytes] = []
    total = 0
    try:
        for chunk in resp.iter_content(chunk_size=64 * 1024):
            total += len(chunk)
            if total > cap:
                raise FetchError("too_large", f"{_safe(url)} is more than {cap} bytes", url=url)
            if time.monotonic() > deadline:
                raise FetchError("timeout", f"download of {_safe(url)} took too long", url=url)
            chunks.append(chunk)
    except requests.RequestException as exc:
        kind = "timeout" if isinstance(exc, requests.Timeout) or "timed out" in str(exc) else "network"
        raise FetchError(kind, f"reading {_safe(url)} failed: {type(exc).__name__}", url=url) from exc
    return b"".join(chunks)


def _safe(url: str) -> str:
    """The URL without its query string (presigned URLs carry credentials there)."""
    p = urlsplit(url)
    return f"{p.scheme}://{p.netloc.rsplit('@', 1)[-1]}{p.path}"


def parse_networks(values: Iterable[str]) -> tuple[IPNetwork, ...]:
    return tuple(ipaddress.ip_network(v, strict=False) for v in values)
