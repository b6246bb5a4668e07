"""The commands as a user runs them: serve (killed and restarted), events, check."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests
import yaml

from tests.conftest import ROOT, aircall_payload

TOKEN = "e2e-token"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_config(tmp_path: Path, port: int) -> Path:
    cfg = yaml.safe_load((ROOT / "config.example.yaml").read_text())
    cfg["server"]["port"] = port
    cfg["worker"]["poll_interval"] = 0.1
    cfg["hubspot"]["mapping"] = str(ROOT / "mappings" / "hubspot.yaml")
    cfg["salesforce"]["mapping"] = str(ROOT / "mappings" / "salesforce.yaml")
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def cli(*args, cwd, env=None, **kw):
    return subprocess.run([sys.executable, "-m", "connector.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=60, **kw)


def env_with_token():
    env = dict(os.environ, AIRCALL_WEBHOOK_TOKEN=TOKEN, PYTHONPATH=str(ROOT))
    return env


def start_serve(config: Path, port: int, *extra):
    proc = subprocess.Popen([sys.executable, "-m", "connector.cli", "serve", "--config", str(config), *extra],
                            cwd=config.parent, env=env_with_token(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 20
    while time.time() < deadline:
        try:
            if requests.get(f"http://127.0.0.1:{port}/healthz", timeout=0.5).status_code == 200:
                return proc
        except requests.ConnectionError:
            time.sleep(0.1)
    proc.kill()
    raise AssertionError(proc.stdout.read().decode())


def events(config: Path) -> list[dict]:
    r = cli("events", "--config", str(config), "--json", cwd=config.parent, env=env_with_token())
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_event_acknowledged_then_server_killed_is_processed_after_restart(tmp_path):
    port = free_port()
    config = write_config(tmp_path, port)
    # No worker in the first process: the only thing between the 200 and the CRM is the store.
    proc = start_serve(config, port, "--no-worker")
    try:
        resp = requests.post(f"http://127.0.0.1:{port}/webhooks/aircall",
                             json=aircall_payload("mms_received", token=TOKEN), timeout=5)
        assert resp.status_code == 200 and resp.json()["status"] == "stored"
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        [ev] = events(config)
        assert {t: v["state"] for t, v in ev["targets"].items()} == {"hubspot": "pending", "salesforce": "pending"}
        proc = start_serve(config, port)
        deadline = time.time() + 15
        while time.time() < deadline:
            [ev] = events(config)
            if all(v["state"] == "dry-run" for v in ev["targets"].values()):
                break
            time.sleep(0.2)
        assert ev["message_id"] == "abdcSM77mms0001"
        assert {t: v["state"] for t, v in ev["targets"].items()} == {"hubspot": "dry-run", "salesforce": "dry-run"}
        assert ev["targets"]["hubspot"]["rendered"]["body"]["properties"]["hs_communication_channel_type"] == "SMS"
        # a redelivery after restart is still recognised
        again = requests.post(f"http://127.0.0.1:{port}/webhooks/aircall",
                              json=aircall_payload("mms_received", token=TOKEN), timeout=5)
        assert again.json()["status"] == "duplicate"
        assert len(events(config)) == 1
    finally:
        proc.kill()
        proc.wait(10)


def test_check_accepts_the_example_config():
    r = cli("check", "--config", "config.example.yaml", cwd=ROOT, env=env_with_token())
    assert r.returncode == 0, r.stderr
    assert "config.example.yaml: OK" in r.stdout


def test_check_names_the_key_path_of_each_error(tmp_path):
    bad = tmp_path / "config.yaml"
    bad.write_text(yaml.safe_dump({
        "server": {"port": 99999, "colour": "blue"},
        "aircall": {"webhook_tokens": ["${NOT_SET_ANYWHERE_XYZ}"]},
        "hubspot": {"mode": "sometimes"},
        "worker": {"threads": "many"},
    }))
    env = {k: v for k, v in env_with_token().items() if k != "NOT_SET_ANYWHERE_XYZ"}
    r = cli("check", "--config", str(bad), cwd=tmp_path, env=env)
    assert r.returncode == 2
    lines = [line.strip() for line in r.stderr.splitlines()]
    assert "aircall.webhook_tokens[0]: environment variable NOT_SET_ANYWHERE_XYZ is not set" in lines
    assert "server.port: Input should be less than or equal to 65535" in lines
    assert "server.colour: unknown key" in lines
    assert "hubspot.mode: Input should be 'live', 'dry-run' or 'off'" in lines
    assert "worker.threads: Input should be a valid integer, unable to parse string as an integer" in lines


def test_check_refuses_values_that_would_only_fail_later(tmp_path):
    # Each was accepted before and broke at run time: every Australian MMS refused, every
    # CRM link and HubSpot signature wrong, every Outbound Message answered 403.
    bad = tmp_path / "config.yaml"
    bad.write_text(yaml.safe_dump({
        "aircall": {"webhook_tokens": ["t"]},
        "server": {"public_base_url": "connector.example.com"},
        "outbound": {"mms_countries": ["US", "CA", "AUS"],
                     "salesforce": {"organization_ids": ["00D5e000000AbC"]}},
    }))
    r = cli("check", "--config", str(bad), cwd=tmp_path, env=env_with_token())
    assert r.returncode == 2
    lines = [line.strip() for line in r.stderr.splitlines()]
    assert ("server.public_base_url: must be the address CRM users' browsers reach, such as "
            "https://mms.example.com (optionally with a path), without a query") in lines
    assert ("outbound.mms_countries: AUS: is not an ISO 3166 country code (two letters: US, CA, AU; "
            "the United Kingdom is GB)") in lines
    assert ("outbound.salesforce.organization_ids: '00D5e000000AbC' is not a Salesforce organization id "
            "(15 or 18 letters and digits starting 00D: Setup > Company Information)") in lines


def test_check_warns_of_valid_settings_that_are_likely_mistakes(tmp_path):
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump({
        "aircall": {"webhook_tokens": ["t"]},
        "hubspot": {"mode": "dry-run", "mapping": str(ROOT / "mappings/hubspot.yaml"), "attachments": "crm-files"},
        "salesforce": {"mode": "off"},
        "outbound": {"mms_countries": ["US", "GB"], "salesforce": {"organization_ids": ["00D5e000000AbCd"]}},
    }))
    r = cli("check", "--config", str(cfg), cwd=tmp_path, env=env_with_token())
    assert r.returncode == 0, r.stderr
    assert r.stderr.splitlines() == [
        "warning: outbound.salesforce.token: empty, so anyone who knows an accepted organization id can "
        "queue sends from your lines; set it and add ?token=... to the Outbound Message endpoint URL",
        "warning: hubspot.attachments: crm-files uploads nothing in dry-run mode; the recorded entries "
        "show the connector's links",
        "warning: outbound.mms_countries: GB: Aircall's MMS article names the US, Canada and Australia only"]


def test_check_reports_invalid_yaml_with_line_and_column(tmp_path):
    bad = tmp_path / "config.yaml"
    bad.write_text("server:\n  port: 8080\n  host: [unclosed\n")
    r = cli("check", "--config", str(bad), cwd=tmp_path, env=env_with_token())
    assert r.returncode == 2
    assert f"{bad}:4:1: invalid YAML" in r.stderr


def test_missing_config_file_is_a_clear_error(tmp_path):
    r = cli("check", "--config", "nope.yaml", cwd=tmp_path, env=env_with_token())
    assert r.returncode == 2
    assert "nope.yaml: cannot read config file (No such file or directory)" in r.stderr


def test_serve_on_a_port_in_use_says_so_without_a_traceback(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        config = write_config(tmp_path, port)
        r = cli("serve", "--config", str(config), cwd=tmp_path, env=env_with_token())
    assert r.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}: Address already in use" in r.stderr
    assert "--port" in r.stderr
    assert "Traceback" not in r.stderr + r.stdout
    assert "listening on" not in r.stdout


def test_serve_start_up_log_has_no_alembic_plugin_lines(tmp_path):
    port = free_port()
    config = write_config(tmp_path, port)
    proc = start_serve(config, port)
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=20)[0].decode()
    assert "Running upgrade" in out  # the migration lines stay
    assert "setup plugin" not in out
