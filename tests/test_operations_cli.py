"""Operator commands: dead-letters list / show / replay, events filters."""
from __future__ import annotations

import json

import pytest
import yaml
from click.testing import CliRunner

from connector.cli import main
from connector.config import load_config
from connector.crm.base import PermanentError
from connector.runtime import Runtime
from connector.web import create_app

from tests.conftest import TOKEN, aircall_payload, base_config


class Refusing:
    """A writer whose CRM refuses every entry (e.g. a required field it does not know)."""
    name = "hubspot"

    def deliver(self, event, ctx):
        raise PermanentError("HubSpot 400: Property values were not valid: hs_bogus")


@pytest.fixture
def setup(tmp_path):
    cfg_data = base_config(tmp_path, salesforce={"mode": "off"})
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg_data))
    rt = Runtime(load_config(path))
    client = create_app(rt.config, rt).test_client()
    runner = CliRunner()

    def cli(*args):
        return runner.invoke(main, [*args, "--config", str(path)], catch_exceptions=False)

    return rt, client, cli


def _post(client, name, **data):
    body = aircall_payload(name)
    body["data"].update(data)
    r = client.post("/webhooks/aircall", json=body)
    assert r.status_code == 200, r.get_json()
    return r.get_json()


def _run_all(rt, writers=None):
    if writers is not None:
        rt.pipeline.writers = writers
    rt.worker().run_once()


def test_dead_letters_list_show_replay(setup):
    rt, client, cli = setup
    _post(client, "mms_received")
    _post(client, "sms_received")
    real = dict(rt.pipeline.writers)
    _run_all(rt, {"hubspot": Refusing()})

    out = cli("dead-letters", "list")
    assert out.exit_code == 0
    lines = out.output.strip().splitlines()
    assert len(lines) == 2
    assert "Property values were not valid: hs_bogus" in lines[0]
    listed = json.loads(cli("dead-letters", "list", "--json").output)
    assert [r["state"] for r in listed] == ["dead", "dead"]
    first = listed[0]["id"]

    shown = cli("dead-letters", "show", str(first))
    assert shown.exit_code == 0
    detail = json.loads(shown.output)
    assert detail["error"] == "HubSpot 400: Property values were not valid: hs_bogus"
    assert detail["payload"]["data"]["id"] == listed[0]["message_id"]
    assert detail["payload"]["token"] == "[redacted]"
    assert TOKEN not in shown.output

    # Replay one: pending again with attempts 0 and no error; the fixed writer delivers it.
    out = cli("dead-letters", "replay", str(first))
    assert out.output.strip() == f"delivery {first}: replayed, pending again"
    row = rt.store.get_delivery(first)
    assert (row["state"], row["attempts"], row["error"]) == ("pending", 0, None)
    _run_all(rt, real)
    assert rt.store.get_delivery(first)["state"] == "dry-run"

    # Replaying it again does nothing and says so.
    out = cli("dead-letters", "replay", str(first))
    assert out.exit_code == 0
    assert out.output.strip() == f"delivery {first} is dry-run, not a dead letter: nothing to replay"
    assert rt.store.get_delivery(first)["attempts"] == 1

    out = cli("dead-letters", "replay", "--all")
    assert out.output.strip().endswith("replayed 1 dead letter(s)")
    _run_all(rt, real)
    assert cli("dead-letters", "list").output.strip() == "no dead letters"
    assert cli("dead-letters", "replay", "--all").output.strip().endswith("replayed 0 dead letter(s)")


def test_replay_never_makes_a_second_entry(setup):
    """The CRM entry was made, then the outcome failed: a replay updates, not re-creates."""
    rt, client, cli = setup
    _post(client, "mms_received")
    _run_all(rt)  # dry-run writer records the entry
    d = rt.store.list_events()[0]["targets"]["hubspot"]
    rec_before = rt.store.get_record("hubspot:dry-run", "abdcSM77mms0001")
    # Force it into the dead letters as if the last outcome had failed, then replay.
    with rt.store.engine.begin() as conn:
        from connector.store import deliveries
        conn.execute(deliveries.update().where(deliveries.c.id == d["delivery_id"])
                     .values(state="dead", last_error="timeout"))
    assert cli("dead-letters", "replay", str(d["delivery_id"])).exit_code == 0
    _run_all(rt)
    after = rt.store.get_delivery(d["delivery_id"])
    assert after["state"] == "dry-run"
    assert after["result"] == {"unchanged": "entry already shows status received"}
    assert rt.store.get_record("hubspot:dry-run", "abdcSM77mms0001")["object_id"] == rec_before["object_id"]


def test_replay_usage_errors(setup):
    _, _, cli = setup
    assert cli("dead-letters", "replay").exit_code == 2
    assert cli("dead-letters", "replay", "1", "--all").exit_code == 2
    out = cli("dead-letters", "replay", "999")
    assert out.exit_code == 1 and "no delivery 999" in out.output
    out = cli("dead-letters", "show", "999")
    assert out.exit_code == 1 and "no delivery 999" in out.output


def test_events_filters(setup):
    rt, client, cli = setup
    _post(client, "mms_received")                                    # +14155550142
    _post(client, "sms_received", external_number="+33 6 12 34 56 78", id="sms-fr-1")
    _run_all(rt, {"hubspot": Refusing()})
    _post(client, "mms_received", id="late-1")  # stays pending

    def ids(*args):
        out = cli("events", "--json", *args)
        assert out.exit_code == 0, out.output
        return sorted(r["message_id"] for r in json.loads(out.output))

    assert ids() == ["abdcSM77mms0001", "late-1", "sms-fr-1"]
    assert ids("--state", "dead") == ["abdcSM77mms0001", "sms-fr-1"]
    assert ids("--state", "pending") == ["late-1"]
    assert ids("--state", "pending", "--crm", "hubspot") == ["late-1"]
    assert ids("--crm", "salesforce") == []  # salesforce is off: no deliveries
    assert ids("--number", "+33612345678") == ["sms-fr-1"]
    assert ids("--number", "(415) 555-0142") == ["abdcSM77mms0001", "late-1"]
    assert ids("--since", "2999-01-01T00:00:00Z") == []
    assert ids("--since", "2000-01-01T00:00:00Z") == ["abdcSM77mms0001", "late-1", "sms-fr-1"]
    bad = cli("events", "--since", "yesterday-ish")
    assert bad.exit_code == 2 and "ISO 8601" in bad.output
    plain = cli("events", "--state", "pending").output
    assert "late-1" in plain and "hubspot=pending" in plain


@pytest.fixture(params=["sqlite", "postgresql"])
def any_store_cli(request, tmp_path):
    extra = {} if request.param == "sqlite" else {"store": {"url": request.getfixturevalue("pg_url")}}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(base_config(tmp_path, **extra)))
    return lambda *args: CliRunner().invoke(main, [*args, "--config", str(path)])


@pytest.mark.parametrize("args, complaint", [
    (("dead-letters", "replay", "99999999999999999999"), "is not in the range 1<=x<=2147483647"),
    (("dead-letters", "show", "2147483648"), "is not in the range 1<=x<=2147483647"),
    (("dead-letters", "show", "0"), "is not in the range 1<=x<=2147483647"),
    (("dead-letters", "list", "--limit", "-1"), "is not in the range x>=1"),
    (("events", "--limit", "-1"), "is not in the range x>=1"),
    (("outbox", "list", "--limit", "0"), "is not in the range x>=1"),
])
def test_numbers_no_row_can_have_are_usage_errors_not_database_errors(any_store_cli, args, complaint):
    out = any_store_cli(*args)
    assert out.exit_code == 2 and complaint in out.output, (out.exception, out.output)


def test_a_send_id_past_the_id_column_is_no_send(any_store_cli):
    out = any_store_cli("outbox", "resolve", "out_2147483648", "--failed")
    assert out.exit_code == 2 and "use the id `outbox list` shows, e.g. out_12" in out.output, out.output
