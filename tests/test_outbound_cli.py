"""mms-connector send / outbox: the same validation results, printed; a real send via the fake."""
from __future__ import annotations

import json
import subprocess
import sys
from types import SimpleNamespace

import pytest
import yaml

from tests.conftest import ROOT, base_config
from tests.mms_samples import sample
from tests.outbound_support import LINE, TO, aircall_message, expect_send, outbound_sections, send_requests, serve_media


def run(tmp_path, httpserver, *args, subprocess_run=False, **overrides):
    """The CLI in-process (click's runner); ``subprocess_run`` as a user would start it."""
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump(base_config(tmp_path, **outbound_sections(httpserver, **overrides))))
    if subprocess_run:
        return subprocess.run([sys.executable, "-m", "connector.cli", *args, "--config", str(cfg)],
                              cwd=ROOT, capture_output=True, text=True, timeout=60)
    from click.testing import CliRunner
    from connector.cli import main
    res = CliRunner().invoke(main, [*args, "--config", str(cfg)], catch_exceptions=False)
    return SimpleNamespace(returncode=res.exit_code, stdout=res.output, stderr="")


def test_validate_only_local_files_from_bytes(tmp_path, httpserver):
    (tmp_path / "ok.gif").write_bytes(sample("gif", 500))
    (tmp_path / "photo.jpg").write_bytes(sample("webp"))
    (tmp_path / "huge.png").write_bytes(sample("png", 5 * 1024 * 1024 + 1))
    r = run(tmp_path, httpserver, "send", "--from", LINE, "--to", TO, "--validate-only",
            "--attach", str(tmp_path / "ok.gif"), "--attach", str(tmp_path / "photo.jpg"),
            "--attach", str(tmp_path / "huge.png"))
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [
        "validation (partial): ok",
        f"  attachment 1 {tmp_path / 'ok.gif'}: ok (gif, 500 bytes)",
        f"  attachment 2 {tmp_path / 'photo.jpg'}: removed: Only pdf, jpg, jpeg, png, or gif files are allowed "
        "for MMS (content is image/webp)",
        f"  attachment 3 {tmp_path / 'huge.png'}: removed: Your file size exceeds the limit of 5 MB. "
        f"Please reduce the file size and try again (too_large: {tmp_path / 'huge.png'} is more than 5242880 bytes)",
    ]
    strict = run(tmp_path, httpserver, "send", "--to", TO, "--validate-only", "--policy", "strict",
                 "--attach", str(tmp_path / "photo.jpg"), "--json")
    assert strict.returncode == 1
    out = json.loads(strict.stdout)
    assert out["state"] == "rejected"
    assert out["validation"]["errors"] == ["Only pdf, jpg, jpeg, png, or gif files are allowed for MMS"]


def test_local_file_cannot_be_sent(tmp_path, httpserver):
    (tmp_path / "ok.gif").write_bytes(sample("gif"))
    r = run(tmp_path, httpserver, "send", "--to", TO, "--attach", str(tmp_path / "ok.gif"))
    assert r.returncode == 1 and "Aircall fetches media by URL" in r.stdout
    assert send_requests(httpserver) == []


def test_send_through_aircall_and_list_the_outbox(tmp_path, httpserver):
    url = serve_media(httpserver, "a.png", "png", 300)
    expect_send(httpserver, aircall_message("SMcli"))
    r = run(tmp_path, httpserver, "send", "--to", "(415) 555-0142", "--text", "hi", "--attach", url,
            subprocess_run=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.splitlines()[-1] == "out_1: sent, Aircall message SMcli"
    assert send_requests(httpserver) == [{"to": TO, "body": "hi", "mediaUrl": [url]}]
    listing = run(tmp_path, httpserver, "outbox", "list", "--json")
    [row] = json.loads(listing.stdout)
    assert (row["id"], row["state"], row["provider_message_id"], row["source"]) == ("out_1", "sent", "SMcli", "cli")
    # Sent messages cannot be "resolved" again.
    again = run(tmp_path, httpserver, "outbox", "resolve", "out_1", "--resend")
    assert again.returncode == 1


def test_unknown_send_resolved_by_the_operator(tmp_path, httpserver):
    expect_send(httpserver, {"error": "boom"}, status=500)
    r = run(tmp_path, httpserver, "send", "--to", TO, "--text", "hi")
    assert r.returncode == 1 and "out_1: unknown" in r.stdout
    assert run(tmp_path, httpserver, "outbox", "list", "--state", "unknown").stdout.startswith("out_1")
    ok = run(tmp_path, httpserver, "outbox", "resolve", "out_1", "--sent", "--aircall-id", "SMx")
    assert ok.returncode == 0 and ok.stdout.strip() == "out_1: sent"
    assert len(send_requests(httpserver)) == 1


def test_send_that_aircall_refuses_for_now_returns_at_once_queued_for_the_workers(tmp_path, httpserver):
    for _ in range(3):  # send_max_attempts: every try answered 503 (surely not accepted)
        expect_send(httpserver, {"error": "busy"}, status=503)
    r = run(tmp_path, httpserver, "send", "--to", TO, "--text", "hi")
    assert r.returncode == 0
    lines = r.stdout.splitlines()
    assert lines[-2].startswith("out_1: queued: ")
    assert lines[-1] == ("  not sent yet: a worker (serve or mms-connector worker) retries it; "
                         "see mms-connector outbox list")
    assert len(send_requests(httpserver)) == 3


def test_resolving_an_unknown_send_as_sent_clears_its_old_error(tmp_path):
    from connector.outbox import OUT_SENT, OUT_UNKNOWN, Outbox
    from connector.store import Store
    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    store.create_schema()
    box = Outbox(store)
    [(m, _)] = box.enqueue([dict(idem_key="k", request_hash="h", source="api", line="+14155550100", line_id="1",
                                 recipient="+14155550142", text="hi", media=[], policy="partial", validated=True,
                                 validation={"ok": True}, state=OUT_UNKNOWN,
                                 error="Aircall answered 500; the message may have been sent")])
    assert box.resolve(m.id, OUT_SENT, provider_message_id="SM1")
    row = box.get(m.id)
    assert (row.state, row.provider_message_id, row.error) == (OUT_SENT, "SM1", None)


@pytest.mark.parametrize("odd", ["out_\u00b2", "out_" + "9" * 30, "12"])
def test_resolve_with_an_odd_id_is_a_usage_error_not_a_traceback(tmp_path, httpserver, odd):
    r = run(tmp_path, httpserver, "outbox", "resolve", odd, "--resend")
    assert r.returncode == 2 and "use the id `outbox list` shows, e.g. out_12" in (r.stdout + r.stderr)
    assert "Traceback" not in r.stdout + r.stderr
