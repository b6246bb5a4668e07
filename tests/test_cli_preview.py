"""`mms-connector preview`: the exact requests the CRM would receive for a raw payload,
identical to what the dry-run writer records, and clear errors for a bad EVENT.json."""
from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from connector.cli import main
from connector.render import preview_media_views
from connector.web import create_app
from conftest import FIXTURES, ROOT, aircall_payload, base_config


@pytest.fixture
def config_file(tmp_path) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(base_config(tmp_path)))
    return path


def preview(config_file, *args):
    return CliRunner().invoke(main, ["preview", "--config", str(config_file), *args])


@pytest.mark.parametrize("crm", ["hubspot", "salesforce"])
def test_preview_equals_what_the_dry_run_writer_records(tmp_path, config_file, make_runtime, crm):
    rt = make_runtime()
    # Same media views as preview (which does not fetch): the rest must match exactly.
    rt.pipeline.media = lambda ev, _d: preview_media_views(ev, rt.config.server.public_base_url)
    client = create_app(rt.config, rt).test_client()
    worker = rt.worker()
    recorded = {}
    for name in ("mms_received", "message_sent", "status_delivered"):
        assert client.post("/webhooks/aircall", json=aircall_payload(name)).status_code == 200
        worker.run_once()
        event = next(e for e in rt.store.list_events() if e["event"] == aircall_payload(name)["event"])
        recorded[name] = event["targets"][crm]["rendered"]
    for name in ("mms_received", "message_sent", "status_delivered"):
        run = preview(config_file, "--crm", crm, str(FIXTURES / "aircall" / f"{name}.json"))
        assert run.exit_code == 0, run.output
        assert json.loads(run.output) == [recorded[name]]


def test_preview_hubspot_shows_the_placeholder_and_escaped_body(config_file):
    run = preview(config_file, "--crm", "hubspot", str(FIXTURES / "aircall" / "mms_received.json"))
    [request] = json.loads(run.output)
    assert request["method"] == "POST" and request["path"] == "/crm/v3/objects/communications"
    assert request["body"]["associations"][0]["to"] == {"id": "{contact_id}"}
    props = request["body"]["properties"]
    assert props["hs_timestamp"] == "1795187044000"
    assert "<p>Photos of the damage &lt;b&gt;attached&lt;/b&gt; &amp; a quote</p>" in props["hs_communication_body"]


def test_preview_links_have_the_shape_of_signed_media_links(config_file):
    run = preview(config_file, "--crm", "salesforce", str(FIXTURES / "aircall" / "mms_received.json"))
    [request] = json.loads(run.output)
    desc = request["body"]["Description"]
    assert "- front.jpg: http://127.0.0.1:8080/media/{media_token_0}" in desc
    assert "- quote.pdf: http://127.0.0.1:8080/media/{media_token_3}" in desc
    assert "- clip.mp4: cannot be received" in desc
    assert "Download all: http://127.0.0.1:8080/media/{media_token_all}" in desc
    assert "media.aircall.example" not in desc


def test_preview_status_event_updates_and_operation_can_be_forced(config_file):
    path = str(FIXTURES / "aircall" / "status_delivered.json")
    [update] = json.loads(preview(config_file, "--crm", "salesforce", path).output)
    assert update["method"] == "PATCH" and update["path"].endswith("/sobjects/Task/{record_id}")
    assert set(update["body"]) == {"Description"}
    [create] = json.loads(preview(config_file, "--crm", "salesforce", "--operation", "create", path).output)
    assert create["method"] == "POST" and create["body"]["WhoId"] == "{who_id}"


def test_preview_a_draft_mapping(config_file, tmp_path):
    draft = tmp_path / "draft.yaml"
    draft.write_text((ROOT / "mappings" / "salesforce.yaml").read_text().replace("Priority: Normal", "Priority: High", 1))
    run = preview(config_file, "--crm", "salesforce", "--mapping", str(draft),
                  str(FIXTURES / "aircall" / "sms_received.json"))
    assert json.loads(run.output)[0]["body"]["Priority"] == "High"
    draft.write_text("object: Task\nentries:\n  inbound:\n    Subject: \"{{ mesage }}\"\n  outbound: {}\n  status: {}\n")
    run = preview(config_file, "--crm", "salesforce", "--mapping", str(draft),
                  str(FIXTURES / "aircall" / "sms_received.json"))
    assert run.exit_code == 1
    assert run.output == f"{draft}:4:18: unknown variable `mesage`; did you mean `message`?\n"


def test_bad_event_files(config_file, tmp_path):
    broken = tmp_path / "broken.json"
    broken.write_text('{\n  "event": "message.received",\n  "data": {"id": "1",}\n}\n')
    run = preview(config_file, "--crm", "hubspot", str(broken))
    assert run.exit_code == 2
    assert run.output == f"{broken}:3:22: invalid JSON: Expecting property name enclosed in double quotes\n"

    payload = copy.deepcopy(aircall_payload("sms_received"))
    payload["data"].pop("raw_digits", None)
    payload["data"].pop("external_number", None)
    missing = tmp_path / "missing.json"
    missing.write_text(json.dumps(payload))
    run = preview(config_file, "--crm", "hubspot", str(missing))
    assert run.exit_code == 2
    assert run.output == f"{missing}: data.raw_digits: is required (the external party's number)\n"

    run = preview(config_file, "--crm", "hubspot", str(FIXTURES / "aircall" / "call_created.json"))
    assert run.exit_code == 0
    assert run.stdout == "[]\n"
    assert "call.created: event not logged by this connector; the CRM receives nothing" in run.stderr


def test_preview_runs_as_a_command_without_a_token(config_file):
    run = subprocess.run([sys.executable, "-m", "connector.cli", "preview", "--config", str(config_file),
                          "--crm", "salesforce", str(FIXTURES / "aircall" / "sms_received.json")],
                         cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    [request] = json.loads(run.stdout)
    assert request["path"] == "/services/data/v59.0/sobjects/Task/"
