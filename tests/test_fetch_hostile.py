"""Fetching from hostile servers and URLs: slow drips cut at total_timeout, URLs that
parsers read differently refused unsent, DNS rebinding never reaching the second answer."""
from __future__ import annotations

import ipaddress
import socket
import ssl
import threading
import time

import pytest

from connector.fetch import FetchError, FetchPolicy, fetch
from connector.web import create_app
from tests.outbound_support import API_TOKEN, LINE, TO, ort  # noqa: F401

LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"),)
CHECKED = (ipaddress.ip_network("127.0.0.2/32"),)  # stands in for a public address


@pytest.fixture
def serve():
    """serve(handler, host) -> (port, requests): a raw TCP server; ``requests`` holds the
    first bytes of every request it received."""
    listeners = []

    def start(handler, host="127.0.0.1", port=0):
        lst = socket.socket()
        lst.bind((host, port))
        lst.listen(8)
        listeners.append(lst)
        got: list[bytes] = []

        def loop():
            while True:
                try:
                    conn, _ = lst.accept()
                except OSError:
                    return
                threading.Thread(target=_handle, args=(handler, conn, got), daemon=True).start()
        threading.Thread(target=loop, daemon=True).start()
        return lst.getsockname()[1], got

    yield start
    for lst in listeners:
        lst.close()


def _handle(handler, conn, got):
    with conn:
        try:
            request = conn.recv(65536)
            if request:
                got.append(request)
                handler(conn, request)
        except OSError:  # the client hung up: what these tests want
            pass


def drip(head: bytes, byte: bytes = b"x", every: float = 0.2, times: int = 100):
    def handler(conn, request):
        conn.sendall(head)
        for _ in range(times):
            conn.sendall(byte)
            time.sleep(every)
    return handler


def reply(body: bytes, extra: bytes = b""):
    def handler(conn, request):
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: %d\r\n%s\r\n%s"
                     % (len(body), extra, body))
    return handler


@pytest.fixture
def resolver(monkeypatch):
    """resolver({name: [answer, ...]}): each lookup of a name gets its next answer (the last
    one repeats); other names resolve as usual. Returns the lookups made, by name."""
    real = socket.getaddrinfo
    calls: dict[str, int] = {}

    def install(answers: dict[str, list[str]]):
        def fake(host, port, *args, **kwargs):
            if host not in answers:
                return real(host, port, *args, **kwargs)
            calls[host] = calls.get(host, 0) + 1
            ip = answers[host][min(calls[host], len(answers[host])) - 1]
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, port))]
        monkeypatch.setattr(socket, "getaddrinfo", fake)
        return calls
    return install


# -- total_timeout ---------------------------------------------------------------------------

@pytest.mark.parametrize("server", [
    drip(b"HTTP/1.1 200 OK\r\nContent-Length: 40\r\n\r\n"),        # body, one byte at a time
    drip(b"HTTP/1.0 200 OK\r\n\r\n"),                              # body ending at close
    drip(b"HTTP/1.1 200 OK\r\nX-Slow: ", byte=b"a"),               # headers that never end
], ids=["content-length", "close-delimited", "headers"])
def test_total_timeout_cuts_a_slow_drip(serve, server):
    # Every byte comes well within read_timeout; only total_timeout can stop it.
    port, _ = serve(server)
    policy = FetchPolicy(allow_http=True, allow_networks=LOOPBACK, read_timeout=1, total_timeout=1)
    started = time.monotonic()
    with pytest.raises(FetchError) as exc:
        fetch(f"http://127.0.0.1:{port}/a.png?sig=secret", policy)
    assert time.monotonic() - started < 1 + 1.5
    assert exc.value.kind == "timeout"
    assert str(exc.value) == f"download of http://127.0.0.1:{port}/a.png took too long"


def test_read_timeout_still_applies_within_total_timeout(serve):
    port, _ = serve(drip(b"HTTP/1.1 200 OK\r\nContent-Length: 40\r\n\r\n", every=1))
    policy = FetchPolicy(allow_http=True, allow_networks=LOOPBACK, read_timeout=0.3, total_timeout=5)
    started = time.monotonic()
    with pytest.raises(FetchError) as exc:
        fetch(f"http://127.0.0.1:{port}/a.png", policy)
    assert time.monotonic() - started < 1.5
    assert exc.value.kind == "timeout"
    assert str(exc.value) == f"reading http://127.0.0.1:{port}/a.png failed: ReadTimeoutError"


# -- URLs read differently by different parsers ----------------------------------------------

@pytest.mark.parametrize("url, what", [
    ("https://127.0.0.1:{port}\\@example.com/a.png", "a backslash"),
    ("http://127.0.0.1:{port}\\@example.com/a.png", "a backslash"),
    ("http://example.com\\.127.0.0.1:{port}/a.png", "a backslash"),
    ("http://127.0.0.1:{port}\t@example.com/a.png", "the character U+0009"),
    ("http://example.com/a.png\r\nHost: 127.0.0.1:{port}", "the character U+000D"),
    ("http://example.com/a b.png", "a space"),
    ("http://example.com/a\x00.png", "the character U+0000"),
])
def test_url_with_a_backslash_or_control_character_is_refused_unsent(serve, resolver, url, what):
    resolver({"example.com": ["93.184.215.14"]})  # public; no DNS here
    port, internal = serve(reply(b"secret"))
    for policy in (FetchPolicy(allow_http=True), FetchPolicy(allow_http=True, allow_networks=LOOPBACK)):
        with pytest.raises(FetchError) as exc:
            fetch(url.format(port=port), policy)
        assert exc.value.kind == "refused"
        assert str(exc.value) == f"not a valid URL: it contains {what}"
    time.sleep(0.1)
    assert internal == []


def test_whitespace_around_a_url_is_ignored(serve):
    port, _ = serve(reply(b"\x89PNG"))
    policy = FetchPolicy(allow_http=True, allow_networks=LOOPBACK)
    assert fetch(f"  http://127.0.0.1:{port}/a.png\n", policy).content == b"\x89PNG"


def test_redirect_to_a_backslash_url_is_refused(serve):
    # The first hop is allowed by name; the redirect would land on 127.0.0.1.
    def handler(conn, request):
        if request.startswith(b"GET /start "):
            conn.sendall(b"HTTP/1.1 302 Found\r\nContent-Length: 0\r\nLocation: "
                         b"http://127.0.0.1:%d\\@example.com/secret\r\n\r\n" % port)
        else:
            reply(b"secret")(conn, request)
    port, got = serve(handler)
    policy = FetchPolicy(allow_http=True, allow_hosts=frozenset({"localhost"}))
    with pytest.raises(FetchError, match="it contains a backslash") as exc:
        fetch(f"http://localhost:{port}/start", policy)
    assert exc.value.kind == "refused"
    assert [r.split(b" ")[1] for r in got] == [b"/start"]


# -- DNS rebinding ---------------------------------------------------------------------------

def _same_port_on(serve, checked_handler, internal_handler):
    """A server on 127.0.0.2 (the checked answer) and one on 127.0.0.1, the same port."""
    for _ in range(20):
        port, checked = serve(checked_handler, "127.0.0.2")
        try:
            _, internal = serve(internal_handler, "127.0.0.1", port)
        except OSError:
            continue
        return port, checked, internal
    pytest.skip("no port free on both 127.0.0.1 and 127.0.0.2")


def test_dns_rebinding_never_reaches_the_second_answer(serve, resolver):
    # The name first resolves to an allowed address, then to loopback: fetch connects to
    # the address it checked, and never asks the name again.
    port, checked, internal = _same_port_on(serve, reply(b"public"), reply(b"secret"))
    lookups = resolver({"media.example": ["127.0.0.2", "127.0.0.1"]})
    policy = FetchPolicy(allow_http=True, allow_networks=CHECKED)
    got = fetch(f"http://media.example:{port}/admin/purge", policy)
    assert got.content == b"public"
    assert lookups == {"media.example": 1}
    assert internal == []
    assert f"\r\nHost: media.example:{port}\r\n".encode() in checked[0]


def test_https_to_the_checked_address_verifies_the_name(resolver, tmp_path, monkeypatch):
    # Connected by address, yet SNI and the certificate check use the URL's host name.
    cert, key = _self_signed(tmp_path, "media.example")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    names = []
    context.sni_callback = lambda sock, name, ctx: names.append(name)

    lst = socket.socket()
    lst.bind(("127.0.0.2", 0))
    lst.listen(4)
    port = lst.getsockname()[1]

    def tls_server():
        with lst:
            for _ in range(2):
                try:
                    raw, _ = lst.accept()
                    with context.wrap_socket(raw, server_side=True) as conn:
                        conn.recv(65536)
                        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                except (OSError, ssl.SSLError):
                    pass
    threading.Thread(target=tls_server, daemon=True).start()
    resolver({"media.example": ["127.0.0.2"], "other.example": ["127.0.0.2"]})
    monkeypatch.setattr("requests.utils.DEFAULT_CA_BUNDLE_PATH", str(cert))
    policy = FetchPolicy(allow_networks=CHECKED)
    assert fetch(f"https://media.example:{port}/a.png", policy).content == b"ok"
    assert names == ["media.example"]
    with pytest.raises(FetchError) as exc:  # the same server, under a name it has no cert for
        fetch(f"https://other.example:{port}/a.png", policy)
    assert exc.value.kind == "network" and "SSLError" in str(exc.value)


def _self_signed(tmp_path, name):
    x509 = pytest.importorskip("cryptography.x509")
    from datetime import datetime, timedelta, timezone

    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.now(timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(hours=1)).not_valid_after(now + timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def test_send_api_holds_its_thread_no_longer_than_total_timeout(serve, ort):
    # The REST send API fetches attachments inside the web request.
    port, _ = serve(drip(b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: 60\r\n\r\n"
                         b"\x89PNG\r\n\x1a\n", byte=b"\0"))
    rt = ort.make(fetch={"read_timeout": 1, "total_timeout": 1})
    client = create_app(rt.config, rt).test_client()
    started = time.monotonic()
    r = client.post("/api/v1/messages", headers={"Authorization": f"Bearer {API_TOKEN}"},
                    json={"from": LINE, "to": TO, "media": [f"http://127.0.0.1:{port}/a.png"]})
    assert time.monotonic() - started < 1 + 1.5
    assert r.status_code == 422
    assert r.get_json()["validation"]["attachments"][0]["detail"] == (
        f"timeout: download of http://127.0.0.1:{port}/a.png took too long")


@pytest.mark.parametrize("address, public", [
    ("2002:7f00:1::1", False),  # 6to4 carrying 127.0.0.1
    ("2002:a00:1::1", False),  # 6to4 carrying 10.0.0.1
    ("fec0::1", False),  # site-local, deprecated but still routed by some networks
    ("2002:808:808::1", True),  # 6to4 carrying 8.8.8.8
    ("2606:4700:4700::1111", True),
])
def test_ipv6_addresses_carrying_a_private_ipv4_one_are_not_public(address, public):
    from connector.fetch import is_public
    assert is_public(ipaddress.ip_address(address)) is public
