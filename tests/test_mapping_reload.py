"""A mapping edited under a running service: good edits take effect, bad ones are refused
with the errors logged, and the last good mapping keeps working."""
from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from connector.mapping import MappingError
from connector.mapping.reload import LiveMapping
from connector.web import create_app

from conftest import ROOT, aircall_payload

GOOD = (ROOT / "mappings" / "hubspot.yaml").read_text()


def edit(path: Path, text: str, tick: list[int] = [0]) -> None:
    path.write_text(text)
    tick[0] += 1  # a distinct mtime even on filesystems with coarse timestamps
    os.utime(path, ns=(10**18 + tick[0] * 10**9, 10**18 + tick[0] * 10**9))


def test_good_edit_is_picked_up_bad_edit_keeps_last_good(tmp_path, caplog):
    path = tmp_path / "hubspot.yaml"
    edit(path, GOOD)
    live = LiveMapping(path, "hubspot")
    first = live()
    assert live() is first  # unchanged file: the same object, no reload

    edit(path, GOOD.replace("  inbound:\n", "  inbound:\n    hubspot_owner_id: \"42\"\n", 1))
    second = live()
    assert second is not first and second.entries["inbound"]["hubspot_owner_id"].constant == "42"

    caplog.set_level(logging.INFO, logger="connector.mapping")
    edit(path, GOOD.replace("{{ body_html }}", "{{ body_htm }}", 1))
    assert live() is second
    refused = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    line = GOOD.splitlines().index('    hs_communication_body: "{{ body_html }}"        '
                                   '# text, previews, links, "Download all", alerts') + 1
    assert refused == [f"mapping {path}: edit refused, still using the last good mapping:\n"
                       f"  {path}:{line}:32: unknown variable `body_htm`; did you mean `body_html`?"]
    assert isinstance(live.last_error, MappingError)
    caplog.clear()
    assert live() is second  # refused once, not logged again on every message
    assert not caplog.records

    edit(path, GOOD)
    assert "hubspot_owner_id" not in live().entries["inbound"]
    assert live.last_error is None


def test_bad_file_at_start_up_is_an_error(tmp_path):
    path = tmp_path / "hubspot.yaml"
    path.write_text("entries: [")
    with pytest.raises(MappingError):
        LiveMapping(path, "hubspot")


def test_running_pipeline_renders_with_the_edited_mapping(tmp_path, make_runtime, caplog):
    path = tmp_path / "hubspot.yaml"
    edit(path, GOOD)
    rt = make_runtime(hubspot={"mode": "dry-run", "mapping": str(path)}, salesforce={"mode": "off"})
    client = create_app(rt.config, rt).test_client()
    worker = rt.worker()

    def post_and_run(name, message_id):
        body = aircall_payload(name)
        body["data"]["id"] = message_id
        assert client.post("/webhooks/aircall", json=body).status_code == 200
        worker.run_once()
        [row] = [e for e in rt.store.list_events() if e["message_id"] == message_id]
        return row["targets"]["hubspot"]

    before = post_and_run("sms_received", "m-1")
    assert "hubspot_owner_id" not in before["rendered"]["body"]["properties"]

    edit(path, GOOD.replace("  inbound:\n", "  inbound:\n    hubspot_owner_id: \"{{ line.name }}\"\n", 1))
    after = post_and_run("sms_received", "m-2")
    assert after["state"] == "dry-run"
    assert after["rendered"]["body"]["properties"]["hubspot_owner_id"] == "Sales US"

    edit(path, GOOD.replace("{{ body_html }}", "{{ body_html ", 1))
    kept = post_and_run("sms_received", "m-3")
    assert kept["state"] == "dry-run"
    assert kept["rendered"]["body"]["properties"]["hubspot_owner_id"] == "Sales US"


SALESFORCE = (ROOT / "mappings" / "salesforce.yaml").read_text()


@pytest.mark.parametrize("bad,error", [
    (SALESFORCE.replace('"{{ message.date }}"', "2026-02-30", 1),
     "29:19: `ActivityDate` takes a date as YYYY-MM-DD (e.g. 2026-11-20), not `2026-02-30`"),
    (SALESFORCE.replace("    Type: MMS ", "    Type: !MMS x ", 1),
     '32:11: entries.inbound.Type: `!MMS` reads as a YAML tag; quote the value to keep it as text: Type: "!MMS x"'),
    (("# Soci\xe9t\xe9\n" + SALESFORCE).encode("latin-1", "replace"),
     "1:7: not UTF-8 text (byte 0xe9); save the file as UTF-8"),
])
def test_edits_yaml_cannot_read_keep_the_last_good_mapping(tmp_path, caplog, bad, error):
    path = tmp_path / "salesforce.yaml"
    edit(path, SALESFORCE)
    live = LiveMapping(path, "salesforce")
    good = live()
    edit(path, "")  # a fresh mtime, then the bytes as an editor saved them
    mtime = path.stat().st_mtime_ns
    path.write_bytes(bad if isinstance(bad, bytes) else bad.encode())
    os.utime(path, ns=(mtime, mtime))
    assert live() is good
    assert live.last_error.errors == [f"{path}:{error}"]


def test_an_unexpected_failure_keeps_the_last_good_mapping_until_the_file_changes(tmp_path, caplog, monkeypatch):
    path = tmp_path / "hubspot.yaml"
    edit(path, GOOD)
    live = LiveMapping(path, "hubspot")
    good = live()
    calls = []

    def broken(*args):
        calls.append(args)
        raise RuntimeError("boom")

    monkeypatch.setattr("connector.mapping.reload.Mapping.load", broken)
    edit(path, GOOD + "\n")
    assert live() is good and live() is good
    assert len(calls) == 1  # not re-read on every message
    assert live.last_error.errors == [f"{path}: RuntimeError: boom"]
    assert "edit refused (unexpected error)" in caplog.text and "Traceback" in caplog.text
    monkeypatch.undo()
    edit(path, GOOD.replace("  inbound:\n", "  inbound:\n    hubspot_owner_id: \"42\"\n", 1))
    assert live() is not good and live.last_error is None


def test_a_file_still_being_saved_is_not_taken_until_it_settles(tmp_path):
    from connector.mapping import reload as reload_module
    path = tmp_path / "hubspot.yaml"
    edit(path, GOOD)
    live = LiveMapping(path, "hubspot")
    good = live()
    new = GOOD.replace("hs_communication_logged_from: CRM", 'hs_communication_logged_from: "CRM"')
    cut = new.index("  outbound:")
    with open(path, "w") as f:  # an editor saving in pieces: the first part is a valid mapping alone
        f.write(new[:cut])
        f.flush()
        os.fsync(f.fileno())
        assert live() is good  # not the half without outbound and status entries
        f.write(new[cut:])
    assert live() is good  # just written: not yet
    old = path.stat().st_mtime_ns - int(reload_module.SETTLE_SECONDS * 2e9)
    os.utime(path, ns=(old, old))  # as it is a moment later
    assert live() is not good and set(live().entries) == {"inbound", "outbound", "status"}
