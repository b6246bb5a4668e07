"""What a field gets: constants as written unless the field is typed, typed fields only
values they can take (written or rendered), and `object:` typos caught."""
from __future__ import annotations

import json

from connector.mapping import Mapping
from test_mapping_check import SALESFORCE, errors_of, line_of
from test_mapping_render import ctx, load

SF = "entries:\n  inbound:\n{}  outbound: {{}}\n  status: {{}}\n"


def test_constants_are_sent_as_written_not_as_yaml_reads_them(tmp_path):
    m = load(tmp_path, "salesforce", "object: Lead__c\ncustom_fields:\n"
             "  Opted_In__c: {type: picklist, options: [yes, no]}\n  Area_Code__c: {type: text}\n"
             "  Seats__c: {type: number}\n  Vip__c: {type: bool}\n"
             "entries:\n  inbound:\n    ActivityDate: 2026-12-31\n    Opted_In__c: no\n    Area_Code__c: 0123\n"
             "    Undeclared__c: 1e3\n    Seats__c: 0123\n    Vip__c: yes\n    Cleared__c:\n"
             "  outbound: {}\n  status: {}\n")
    out = m.render("inbound", ctx())
    assert out == {"ActivityDate": "2026-12-31", "Opted_In__c": "no", "Area_Code__c": "0123",
                   "Undeclared__c": "1e3", "Seats__c": 123, "Vip__c": True, "Cleared__c": None}
    json.dumps(out)  # a datetime.date here used to fail the live write
    hs = load(tmp_path, "hubspot", "custom_fields:\n  sms_vip: {type: bool}\n  sms_code: {type: text}\n"
              "entries:\n  inbound:\n    sms_vip: no\n    sms_code: 0123\n  outbound: {}\n  status: {}\n")
    assert hs.render("inbound", ctx()) == {"sms_vip": "false", "sms_code": "0123"}


def test_a_constant_its_typed_field_cannot_take(tmp_path):
    text = SF.format("    ActivityDate: 2026-02-30\n    CallDurationInSeconds: 0x1F\n    IsReminderSet: maybe\n"
                     "    ReminderDateTime: 2026-11-20\n")
    assert errors_of(tmp_path, text, "salesforce") == [
        "F:3:19: `ActivityDate` takes a date as YYYY-MM-DD (e.g. 2026-11-20), not `2026-02-30`",
        "F:4:28: `CallDurationInSeconds` takes a number (e.g. 42), not `0x1F`",
        "F:5:20: `IsReminderSet` takes true or false, not `maybe`",
        "F:6:23: `ReminderDateTime` takes a date and time as ISO 8601 (e.g. 2026-11-20T15:04:00Z), not `2026-11-20`"]
    ok = SF.format("    ReminderDateTime: 2026-11-20T09:00:00Z\n    CallDurationInSeconds: -1.5\n")
    assert load(tmp_path, "salesforce", ok).render("inbound", ctx()) == {
        "ReminderDateTime": "2026-11-20T09:00:00Z", "CallDurationInSeconds": -1.5}


def test_a_template_rendering_what_its_typed_field_cannot_take(tmp_path):
    text = SF.format("    ActivityDate: \"{{ message.time|datetime('%d/%m/%Y') }}\"\n"
                     "    CallDurationInSeconds: \"{{ media_count }} files\"\n"
                     "    CallType: \"{{ message.direction }}\"\n")
    assert errors_of(tmp_path, text, "salesforce") == [
        "F:3:19: entries.inbound.ActivityDate fails on the sample inbound MMS: `ActivityDate` takes a date as "
        "YYYY-MM-DD (e.g. 2026-11-20), not `20/11/2026`",
        "F:4:28: entries.inbound.CallDurationInSeconds fails on the sample inbound MMS: `CallDurationInSeconds` "
        "takes a number (e.g. 42), not `6 files`",
        "F:5:15: entries.inbound.CallType fails on the sample inbound MMS: `inbound` is not a value of `CallType` "
        "(use Inbound, Internal, Outbound); did you mean `Inbound`?"]
    # what the shipped mappings render fits: dates, epoch milliseconds for HubSpot, empty clears
    ok = SF.format("    ActivityDate: \"{{ message.date }}\"\n    ReminderDateTime: \"{{ message.time_iso }}\"\n"
                   "    CallDurationInSeconds: \"{{ media_count or '' }}\"\n    IsReminderSet: \"{{ has_unsupported }}\"\n")
    assert load(tmp_path, "salesforce", ok).render("inbound", ctx())["IsReminderSet"] is False


def test_object_typos_are_caught(tmp_path):
    text = "object: task\n" + SF.format("    Subjct: hi\n")
    assert errors_of(tmp_path, text, "salesforce") == [
        "F:1:9: unknown Salesforce object `task`; did you mean `Task`? (names are case-sensitive)"]
    text = "object: communication\n" + SF.format("    hs_communication_body: \"{{ body_html }}\"\n")
    assert errors_of(tmp_path, text, "hubspot") == [
        "F:1:9: unknown HubSpot object `communication`: messages are logged as Communications "
        "(`object: communications`); did you mean `communications`?"]
    path = tmp_path / "tsk.yaml"
    path.write_text("object: Tsk\n" + SF.format("    Subjct: hi\n"))
    assert Mapping.load(path, "salesforce").warnings == [
        f"{path}:1:9: warning: `Tsk` is neither a standard Salesforce object the connector knows nor a custom "
        "object (`__c`): its fields are not checked; did you mean `Task`?"]
    for fine in ("object: Event\n", "object: MMS_Message__c\n"):
        path.write_text(fine + SF.format("    Subject: hi\n"))
        assert Mapping.load(path, "salesforce").warnings == []
    path.write_text("object: 0-18\n" + SF.format("    hs_communication_body: \"{{ body_html }}\"\n"))
    assert Mapping.load(path, "hubspot").warnings == []


def test_none_prints_as_empty_text(tmp_path):
    m = load(tmp_path, "salesforce", SF.format("    Description: \"[{{ none }}][{{ 'id ' ~ record.id }}]\"\n"))
    c = ctx()
    c["record"] = {"id": None, "type": None}
    assert m.render("inbound", c)["Description"] == "[][id ]"


def test_the_shipped_mapping_with_an_unquoted_date_passes(tmp_path):
    text = SALESFORCE.replace('"{{ message.date }}"', "2026-12-31", 1)
    m = load(tmp_path, "salesforce", text)
    assert m.entries["inbound"]["ActivityDate"].constant == "2026-12-31"
    assert line_of(text, "ActivityDate: 2026-12-31") == m.entries["inbound"]["ActivityDate"].line
