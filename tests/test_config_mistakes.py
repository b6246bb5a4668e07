"""Config mistakes an operator makes: each is refused at start naming its key, never a
traceback later and never a setting quietly dropped."""
from __future__ import annotations

import pytest
import yaml
from click.testing import CliRunner

from connector.cli import main as cli
from connector.config import ConfigError, load_config
from tests.conftest import base_config


def errors(tmp_path, **sections) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(data=base_config(tmp_path, **sections))
    return info.value.errors


def test_a_config_file_that_is_not_utf8_is_named_as_such(tmp_path):
    p = tmp_path / "config.yaml"
    p.write_bytes(b"aircall: {webhook_tokens: [caf\xe9]}\n")
    with pytest.raises(ConfigError) as info:
        load_config(p)
    assert info.value.errors == [f"{p}: not UTF-8 text (byte 0xe9 at offset 30); save the file as UTF-8"]
    assert CliRunner().invoke(cli, ["check", "--config", str(p)]).exit_code == 2


@pytest.mark.parametrize("section, value, key", [
    ({}, "Mars/Base", "time_zone"),
    ({"hubspot": {"time_zone": "Mars/Base"}}, None, "hubspot.time_zone"),
])
def test_an_unknown_time_zone_names_its_key(tmp_path, section, value, key):
    extra = dict(section)
    if value:
        extra["time_zone"] = value
    [error] = errors(tmp_path, **extra)
    assert error == f"{key}: unknown time zone 'Mars/Base' (use an IANA name such as America/New_York)"


def test_webhook_tokens_are_required(tmp_path):
    data = base_config(tmp_path)
    data["aircall"] = {}  # every webhook would be refused 401
    with pytest.raises(ConfigError) as info:
        load_config(data=data)
    assert info.value.errors == ["aircall.webhook_tokens: at least one webhook token is required"]


@pytest.mark.parametrize("url", ["nonsense", "mysql://root@localhost/db", ""])
def test_a_store_url_the_connector_cannot_use_is_refused(tmp_path, url):
    assert errors(tmp_path, store={"url": url}) == [
        "store.url: must be sqlite:///path/to/file.db or postgresql+psycopg://user@host/db"]


@pytest.mark.parametrize("limit", [0, -1])
def test_salesforce_field_limits_are_positive(tmp_path, limit):
    [error] = errors(tmp_path, salesforce={"field_limits": {"Subject": limit}})
    assert error.startswith("salesforce.field_limits.Subject: Input should be greater than or equal to 1")


def test_a_section_given_twice_is_an_error_not_the_last_one_winning(tmp_path):
    p = tmp_path / "config.yaml"
    p.write_text(yaml.safe_dump(base_config(tmp_path)) + "hubspot: {mode: live, access_token: x}\n"
                 "hubspot: {mode: dry-run}\n")
    with pytest.raises(ConfigError) as info:
        load_config(p)
    [error] = info.value.errors
    assert error.startswith(f"{p}:") and "`hubspot` is given twice in one section; keep one" in error


def write(tmp_path, **sections) -> str:
    p = tmp_path / "config.yaml"
    p.write_text(yaml.safe_dump(base_config(tmp_path, **sections)))
    return str(p)


def test_preview_of_a_payload_that_is_not_utf8_is_a_usage_error(tmp_path):
    event = tmp_path / "event.json"
    event.write_bytes(b'{"a": "\xe9"}')
    out = CliRunner().invoke(cli, ["preview", "--config", write(tmp_path), "--crm", "hubspot", str(event)])
    assert out.exit_code == 2 and "not UTF-8 text (byte 0xe9 at offset 7)" in out.output


@pytest.mark.parametrize("args", [("serve", "--no-worker", "--port", "99999"), ("serve", "--port", "-1"),
                                  ("worker", "--metrics-port", "99999"), ("worker", "--metrics-port", "0")])
def test_ports_outside_their_range_are_usage_errors(tmp_path, args):
    out = CliRunner().invoke(cli, [*args, "--config", write(tmp_path)])
    assert out.exit_code == 2 and "is not in the range" in out.output


def test_serve_on_an_address_that_is_no_address_says_so(tmp_path):
    out = CliRunner().invoke(cli, ["serve", "--no-worker", "--host", "999.1.1.1", "--config", write(tmp_path)])
    assert out.exit_code == 1 and "cannot listen on 999.1.1.1:" in out.output


def test_a_worker_s_metrics_port_in_use_says_so(tmp_path):
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    port = s.getsockname()[1]
    try:
        out = CliRunner().invoke(cli, ["worker", "--metrics-port", str(port), "--config", write(tmp_path)])
    finally:
        s.close()
    assert out.exit_code == 1 and f"cannot listen on 127.0.0.1:{port}" in out.output
