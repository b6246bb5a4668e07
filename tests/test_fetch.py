"""Safe media fetching: SSRF targets refused (also via redirects), caps, timeouts."""
from __future__ import annotations

import ipaddress
import time

import pytest
from werkzeug import Response

from connector.config import ConfigError, load_config
from connector.fetch import FetchError, FetchPolicy, check_url, fetch

LOCAL = FetchPolicy(allow_http=True, allow_networks=(ipaddress.ip_network("127.0.0.0/8"),),
                    connect_timeout=1, read_timeout=1)
HTTP_ONLY = FetchPolicy(allow_http=True, connect_timeout=1, read_timeout=1)


@pytest.mark.parametrize("url", [
    "http://127.0.0.1/x", "https://127.0.0.1/x", "http://localhost/x",
    "http://10.1.2.3/x", "http://192.168.0.10/x", "http://172.16.5.5/x",
    "http://169.254.169.254/latest/meta-data/", "http://[::1]/x", "http://[::ffff:127.0.0.1]/x",
    "http://0.0.0.0/x", "http://224.0.0.1/x", "http://100.64.0.1/x", "http://[fe80::1]/x",
    "http://2130706433/x",  # 127.0.0.1 as one integer
])
def test_non_public_targets_are_refused(url):
    with pytest.raises(FetchError) as exc:
        fetch(url, HTTP_ONLY)
    assert exc.value.kind == "refused"
    assert "non-public address" in str(exc.value)


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://example.com/a.png",
                                 "gopher://example.com/", "data:image/png;base64,AAAA", "/relative"])
def test_other_schemes_are_refused(url):
    with pytest.raises(FetchError) as exc:
        fetch(url, HTTP_ONLY)
    assert exc.value.kind == "refused"
    assert "scheme" in str(exc.value)


def test_http_is_refused_unless_allowed(httpserver):
    httpserver.expect_request("/a.png").respond_with_data(b"x")
    url = httpserver.url_for("/a.png")
    with pytest.raises(FetchError, match="scheme 'http' is not allowed"):
        fetch(url, FetchPolicy(allow_networks=LOCAL.allow_networks))
    assert httpserver.log == []


def test_allowed_network_fetch_returns_bytes_type_and_size(httpserver):
    httpserver.expect_request("/a.png").respond_with_data(b"\x89PNG data", content_type="image/png; x=1")
    got = fetch(httpserver.url_for("/a.png"), LOCAL)
    assert (got.content, got.content_type, got.size) == (b"\x89PNG data", "image/png", 9)
    assert got.url == httpserver.url_for("/a.png")


def test_allowed_host_name_skips_address_check(httpserver):
    httpserver.expect_request("/a").respond_with_data(b"ok")
    policy = FetchPolicy(allow_http=True, allow_hosts=frozenset({"localhost"}))
    url = f"http://localhost:{httpserver.port}/a"
    assert fetch(url, policy).content == b"ok"


def test_redirect_to_loopback_is_refused(httpserver):
    # The first hop is allowed by name; the redirect target (127.0.0.1) is not.
    httpserver.expect_request("/start").respond_with_response(
        Response(status=302, headers={"Location": f"http://127.0.0.1:{httpserver.port}/secret"}))
    httpserver.expect_request("/secret").respond_with_data(b"secret")
    policy = FetchPolicy(allow_http=True, allow_hosts=frozenset({"localhost"}))
    with pytest.raises(FetchError) as exc:
        fetch(f"http://localhost:{httpserver.port}/start", policy)
    assert exc.value.kind == "refused"
    assert [r.path for r, _ in httpserver.log] == ["/start"]


def test_redirect_to_metadata_address_is_refused(httpserver):
    httpserver.expect_request("/start").respond_with_response(
        Response(status=301, headers={"Location": "http://169.254.169.254/latest/meta-data/"}))
    with pytest.raises(FetchError, match="non-public"):
        fetch(httpserver.url_for("/start"), LOCAL)


def test_redirects_are_followed_up_to_the_limit(httpserver):
    httpserver.expect_request("/r1").respond_with_response(Response(status=302, headers={"Location": "/r2"}))
    httpserver.expect_request("/r2").respond_with_response(Response(status=307, headers={"Location": "/a"}))
    httpserver.expect_request("/a").respond_with_data(b"done", content_type="image/gif")
    got = fetch(httpserver.url_for("/r1"), LOCAL)
    assert got.content == b"done" and got.url.endswith("/a")
    with pytest.raises(FetchError, match="more than 1 redirects") as exc:
        fetch(httpserver.url_for("/r1"), FetchPolicy(**{**LOCAL.__dict__, "max_redirects": 1}))
    assert exc.value.kind == "refused"


def test_size_cap_from_content_length(httpserver):
    httpserver.expect_request("/big").respond_with_data(b"x" * 2048)
    with pytest.raises(FetchError) as exc:
        fetch(httpserver.url_for("/big"), LOCAL, max_bytes=1024)
    assert exc.value.kind == "too_large"


def test_size_cap_enforced_while_streaming(httpserver):
    sent = []

    def chunks():
        for _ in range(64):
            sent.append(1)
            yield b"y" * 1024

    # A generator body goes out chunked, with no Content-Length to trust.
    httpserver.expect_request("/stream").respond_with_handler(lambda req: Response(chunks()))
    with pytest.raises(FetchError) as exc:
        fetch(httpserver.url_for("/stream"), LOCAL, max_bytes=4096)
    assert exc.value.kind == "too_large"


def test_http_error_carries_status(httpserver):
    httpserver.expect_request("/gone").respond_with_data(b"", status=404)
    with pytest.raises(FetchError) as exc:
        fetch(httpserver.url_for("/gone"), LOCAL)
    assert (exc.value.kind, exc.value.status) == ("http_error", 404)


def test_read_timeout(httpserver):
    def slow(req):
        time.sleep(0.6)
        return Response(b"late")
    httpserver.expect_request("/slow").respond_with_handler(slow)
    policy = FetchPolicy(**{**LOCAL.__dict__, "read_timeout": 0.1})
    with pytest.raises(FetchError) as exc:
        fetch(httpserver.url_for("/slow"), policy)
    assert exc.value.kind == "timeout"


def test_check_url_without_network():
    with pytest.raises(FetchError, match="no host"):
        check_url("https:///x", FetchPolicy())
    with pytest.raises(FetchError, match="cannot resolve"):
        check_url("https://no-such-host.invalid/x", FetchPolicy())


def test_policy_from_config(tmp_path):
    from tests.conftest import base_config
    cfg = load_config(data=base_config(tmp_path, fetch={
        "allow_http": True, "allow_hosts": ["Media.Local."], "allow_networks": ["10.0.0.0/8"],
        "max_bytes": 100}))
    policy = FetchPolicy.from_config(cfg.fetch)
    assert policy.allow_hosts == {"media.local"} and policy.max_bytes == 100
    assert policy.address_allowed(ipaddress.ip_address("10.2.3.4"))
    assert not policy.address_allowed(ipaddress.ip_address("127.0.0.1"))
    with pytest.raises(ConfigError, match="fetch.allow_networks"):
        load_config(data=base_config(tmp_path, fetch={"allow_networks": ["10.0.0.0/33"]}))
