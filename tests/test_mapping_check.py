"""What an admin sees when a mapping file is wrong: file:line:column, what, and a hint."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from connector.mapping import Mapping, MappingError

ROOT = Path(__file__).resolve().parent.parent

HUBSPOT = """\
object: communications
entries:
  inbound:
    hs_communication_channel_type: SMS
    hs_communication_body: "{{ body_html }}"
    hs_timestamp: "{{ message.timestamp_ms }}"
  outbound:
    hs_communication_body: "{{ body_html }}"
  status:
    hs_communication_body: "{{ body_html }}"
"""


def errors_of(tmp_path: Path, text: str, crm: str = "hubspot") -> list[str]:
    path = tmp_path / f"{crm}.yaml"
    path.write_text(text)
    with pytest.raises(MappingError) as info:
        Mapping.load(path, crm)
    prefix = str(path) + ":"
    return [e.replace(prefix, "F:", 1) for e in info.value.errors]


def test_shipped_mappings_are_valid_without_warnings():
    for crm in ("hubspot", "salesforce"):
        m = Mapping.load(ROOT / "mappings" / f"{crm}.yaml", crm)
        assert m.warnings == []
        assert set(m.entries) == {"inbound", "outbound", "status"}


def test_misspelt_variable_points_at_it_with_a_hint(tmp_path):
    text = HUBSPOT.replace("{{ message.timestamp_ms }}", "{{ mesage.timestamp_ms }}")
    assert errors_of(tmp_path, text) == ["F:6:23: unknown variable `mesage`; did you mean `message`?"]


def test_misspelt_attribute_names_the_full_variable(tmp_path):
    text = HUBSPOT.replace("{{ message.timestamp_ms }}", "{{ message.timestamp }}")
    assert errors_of(tmp_path, text) == [
        "F:6:31: unknown variable `message.timestamp`; did you mean `message.timestamp_ms`?"]


def test_loop_variable_attributes_are_checked(tmp_path):
    text = HUBSPOT.replace('"{{ body_html }}"\n  status', '"{% for m in media %}{{ m.nmae }}{% endfor %}"\n  status')
    assert errors_of(tmp_path, text) == ["F:8:54: unknown variable `m.nmae`; did you mean `m.name`?"]


def test_broken_syntax(tmp_path):
    text = HUBSPOT.replace("{{ body_html }}\"\n  status", "{{ body_html }\"\n  status")
    assert errors_of(tmp_path, text) == ["F:8:28: template syntax error: unexpected '}'"]


def test_broken_syntax_in_a_block_value_points_at_its_line(tmp_path):
    text = HUBSPOT.replace('    hs_communication_body: "{{ body_html }}"\n  status',
                           '    hs_communication_body: |\n      <p>{{ message.text }}</p>\n      {% if media %}\n  status')
    assert errors_of(tmp_path, text) == [
        "F:10:7: template syntax error: Unexpected end of template. Jinja was looking for the following tags: "
        "'elif' or 'else' or 'endif'. The innermost block that needs to be closed is 'if'."]


def test_unknown_field_with_hint(tmp_path):
    text = HUBSPOT.replace("hs_communication_body: \"{{ body_html }}\"\n    hs_timestamp",
                           "hs_comunication_body: \"{{ body_html }}\"\n    hs_timestamp")
    assert errors_of(tmp_path, text) == [
        "F:5:5: unknown HubSpot communications field `hs_comunication_body`; did you mean `hs_communication_body`?"]


def test_custom_field_must_be_declared_and_then_passes(tmp_path):
    text = HUBSPOT.replace("  inbound:\n", "  inbound:\n    sms_summary: \"{{ message.text }}\"\n")
    assert errors_of(tmp_path, text) == [
        "F:4:5: unknown HubSpot communications field `sms_summary`; a custom field must be declared under "
        "`custom_fields:` (e.g. `sms_summary: {type: text, max_length: 255}`)"]
    path = tmp_path / "ok.yaml"
    path.write_text(text.replace("entries:", "custom_fields:\n  sms_summary: {type: text, max_length: 20}\nentries:"))
    assert "sms_summary" in Mapping.load(path, "hubspot").entries["inbound"]


def test_read_only_and_create_only_fields(tmp_path):
    text = HUBSPOT.replace("  status:\n", "  status:\n    hs_createdate: \"1\"\n")
    assert errors_of(tmp_path, text) == ["F:10:5: `hs_createdate` is read-only (set by HubSpot); remove it"]
    sf = (ROOT / "mappings" / "salesforce.yaml").read_text()
    sf = sf.replace("  status:\n", "  status:\n    TaskSubtype: Task\n")
    line = sf.splitlines().index("    TaskSubtype: Task", sf.index("  status:\n") // 1 and 0)
    errs = errors_of(tmp_path, sf, "salesforce")
    status_line = sf[: sf.index("  status:\n")].count("\n") + 2
    assert errs == [f"F:{status_line}:5: `TaskSubtype` can only be set when the entry is created; "
                    "remove it from entries.status"]
    assert line  # the field exists in the create entries too, where it is allowed


def test_too_long_constant(tmp_path):
    sf = "object: Task\nentries:\n  inbound:\n    Subject: " + "x" * 300 + "\n  outbound: {}\n  status: {}\n"
    assert errors_of(tmp_path, sf, "salesforce") == ["F:4:14: value is 300 characters; `Subject` holds at most 255"]


def test_picklist_constant(tmp_path):
    text = HUBSPOT.replace("hs_communication_channel_type: SMS", "hs_communication_channel_type: MMS")
    assert errors_of(tmp_path, text) == [
        "F:4:36: `MMS` is not a value of `hs_communication_channel_type` (use SMS, WHATS_APP, LINKEDIN_MESSAGE); "
        "did you mean `SMS`?"]


def test_escape_attempts_fail_safely(tmp_path):
    text = HUBSPOT.replace("{{ message.timestamp_ms }}", "{{ ''.__class__.__mro__ }}")
    assert errors_of(tmp_path, text) == [
        "F:6:26: `__class__` is not allowed: templates cannot reach Python internals"]
    # str.format reaching internals cannot be seen statically: the trial render refuses it
    text = HUBSPOT.replace("{{ message.timestamp_ms }}", "{{ '{0.__class__}'.format(message) }}")
    assert errors_of(tmp_path, text) == [
        "F:6:19: entries.inbound.hs_timestamp fails on the sample inbound MMS: "
        "access to attribute '__class__' of 'dict' object is unsafe."]
    for sneaky in ("{% include '/etc/passwd' %}", "{{ cycler.__init__.__globals__ }}",
                   "{% autoescape false %}{{ message.text }}{% endautoescape %}", "{{ self }}"):
        assert errors_of(tmp_path, HUBSPOT.replace("{{ message.timestamp_ms }}", sneaky))


def test_unknown_filter_and_phone_format(tmp_path):
    text = HUBSPOT.replace("{{ message.timestamp_ms }}", "{{ external.e164|phon }}")
    assert errors_of(tmp_path, text) == ["F:6:37: unknown filter `phon`; did you mean `phone`?"]
    text = HUBSPOT.replace("{{ message.timestamp_ms }}", "{{ external.e164|phone('nationl') }}")
    assert errors_of(tmp_path, text) == ["F:6:44: phone: unknown format `nationl`; did you mean `national`?"]


def test_yaml_mistakes(tmp_path):
    assert errors_of(tmp_path, HUBSPOT.replace('"{{ body_html }}"\n  status', '{{ body_html }}\n  status')) == [
        'F:8:28: entries.outbound.hs_communication_body: a value that starts with `{` must be quoted: '
        'hs_communication_body: "{{ ... }}"']
    assert errors_of(tmp_path, HUBSPOT.replace("  outbound:", " outbound:")) == [
        "F:7:2: invalid YAML: expected <block end>, but found '<block mapping start>' "
        "(check indentation and quote values that contain `: ` or start with `{`)"]
    assert errors_of(tmp_path, HUBSPOT.replace("  status:", "  statuss:")) == [
        "F:9:3: unknown event kind `statuss` (use inbound, outbound or status); did you mean `status`?"]
    path = tmp_path / "nostatus.yaml"
    path.write_text(HUBSPOT.replace("  status:\n    hs_communication_body: \"{{ body_html }}\"\n", ""))
    assert Mapping.load(path, "hubspot").warnings == [
        f"{path}:2:1: warning: entries.status is missing: status events will write no fields"]
    assert errors_of(tmp_path, HUBSPOT.replace("    hs_timestamp:", "    hs_communication_body: x\n    hs_timestamp:")) == [
        "F:6:5: `hs_communication_body` appears twice in entries.inbound; keep one"]


def test_check_command_prints_every_error_and_fails(tmp_path):
    bad = tmp_path / "hubspot.yaml"
    bad.write_text(HUBSPOT.replace("{{ message.timestamp_ms }}", "{{ mesage.timestamp_ms }}")
                   .replace("hs_communication_channel_type", "hs_communication_chanel_type"))
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump({
        "aircall": {"webhook_tokens": ["t"]},
        "store": {"url": f"sqlite:///{tmp_path / 'c.db'}"},
        "hubspot": {"mapping": str(bad)},
        "salesforce": {"mapping": str(ROOT / "mappings" / "salesforce.yaml")},
    }))
    run = subprocess.run([sys.executable, "-m", "connector.cli", "check", "--config", str(cfg)],
                         cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 1
    assert run.stderr.splitlines() == [
        f"{bad}:4:5: unknown HubSpot communications field `hs_communication_chanel_type`; "
        "did you mean `hs_communication_channel_type`?",
        f"{bad}:6:23: unknown variable `mesage`; did you mean `message`?",
        "2 error(s) in mapping files",
    ]
    assert "mappings/salesforce.yaml: OK (salesforce, Task)" in run.stdout
    bad.write_text(HUBSPOT)
    run = subprocess.run([sys.executable, "-m", "connector.cli", "check", "--config", str(cfg)],
                         cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines()[-1] == f"{cfg}: OK (targets: hubspot, salesforce)"


def test_check_a_draft_mapping_for_one_crm(tmp_path):
    draft = tmp_path / "draft.yaml"
    draft.write_text("object: Task\nentries:\n  inbound:\n    Subject: \"{{ message.txt }}\"\n  outbound: {}\n  status: {}\n")
    cfg = ROOT / "config.example.yaml"
    run = subprocess.run([sys.executable, "-m", "connector.cli", "check", "--config", str(cfg),
                          "--crm", "salesforce", "--mapping", str(draft)], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 1
    assert run.stderr.splitlines() == [
        f"{draft}:4:26: unknown variable `message.txt`; did you mean `message.text`?",
        "1 error(s) in mapping files"]
    run = subprocess.run([sys.executable, "-m", "connector.cli", "check", "--config", str(cfg),
                          "--mapping", str(draft)], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 2 and "--mapping needs --crm hubspot or --crm salesforce" in run.stderr


SALESFORCE = (ROOT / "mappings" / "salesforce.yaml").read_text()


def line_of(text: str, needle: str) -> int:
    return text[: text.index(needle)].count("\n") + 1


def test_misspelt_filter_or_test_in_a_branch_the_samples_skip(tmp_path):
    # Jinja looks such a filter up only when the branch runs: a failed message, days later
    text = SALESFORCE.replace("  status:\n", "  status:\n    Subject: \"{% if message.status == 'failed' %}"
                              "{{ message.status_label|uper }}{% endif %}SMS\"\n", 1)
    line = line_of(text, "    Subject: \"{% if message.status == 'failed'")
    assert errors_of(tmp_path, text, "salesforce") == [f"F:{line}:74: unknown filter `uper`; did you mean `upper`?"]
    text = HUBSPOT.replace("{{ message.timestamp_ms }}", "{% if media_count is od %}1{% endif %}")
    assert errors_of(tmp_path, text) == ["F:6:41: unknown test `od`; did you mean `odd`?"]


def test_error_column_points_at_the_variable_not_the_same_word_in_text(tmp_path):
    text = 'entries:\n  inbound:\n    Description: "text: {{ text }}"\n  outbound: {}\n  status: {}\n'
    assert errors_of(tmp_path, text, "salesforce") == ["F:3:28: unknown variable `text`; did you mean `body_text`?"]
    text = ("entries:\n  inbound:\n    Description: |\n      text {# text #}\n      {% if x %}\n"
            "      {{ text }}{% endif %}\n  outbound: {}\n  status: {}\n")
    assert errors_of(tmp_path, text, "salesforce") == [
        "F:5:13: unknown variable `x`", "F:6:10: unknown variable `text`; did you mean `body_text`?"]


def test_file_not_in_utf8_points_at_the_byte(tmp_path):
    path = tmp_path / "salesforce.yaml"
    path.write_bytes(("# Soci\xe9t\xe9 Acme\n" + SALESFORCE).encode("latin-1", "replace"))
    with pytest.raises(MappingError) as info:
        Mapping.load(path, "salesforce")
    assert info.value.errors == [f"{path}:1:7: not UTF-8 text (byte 0xe9); save the file as UTF-8"]


def test_yaml_tags_and_values_yaml_cannot_build_are_errors_not_crashes(tmp_path):
    text = SALESFORCE.replace("    Type: MMS ", "    Type: !MMS x ", 1)
    assert errors_of(tmp_path, text, "salesforce") == [
        f"F:{line_of(text, '    Type: !MMS')}:11: entries.inbound.Type: `!MMS` reads as a YAML tag; "
        "quote the value to keep it as text: Type: \"!MMS x\""]
    text = SALESFORCE.replace("who_field: WhoId", "who_field: 2026-02-30", 1)
    assert errors_of(tmp_path, text, "salesforce") == [
        f"F:{line_of(text, 'who_field')}:12: invalid value: day is out of range for month "
        "(quote it to keep it as text)"]
    assert errors_of(tmp_path, "object: Task\x07\n", "salesforce") == [
        "F:1:13: invalid YAML: control character #x0007 is not allowed (delete it)"]


def test_check_command_reports_a_bad_date_and_encoding_without_a_traceback(tmp_path):
    draft = tmp_path / "draft.yaml"
    draft.write_text(SALESFORCE.replace('"{{ message.date }}"', "2026-02-30", 1))
    cfg = ROOT / "config.example.yaml"
    run = subprocess.run([sys.executable, "-m", "connector.cli", "check", "--config", str(cfg), "--crm", "salesforce",
                          "--mapping", str(draft)], cwd=ROOT, capture_output=True, text=True)
    line = line_of(draft.read_text(), "ActivityDate: 2026-02-30")
    assert run.returncode == 1 and "Traceback" not in run.stderr
    assert run.stderr.splitlines() == [
        f"{draft}:{line}:19: `ActivityDate` takes a date as YYYY-MM-DD (e.g. 2026-11-20), not `2026-02-30`",
        "1 error(s) in mapping files"]


SF_TASK = """\
object: Task
{options}entries:
  inbound:
    Subject: "SMS from {{{{ external.e164 }}}}"
    Description: "{{{{ body_text }}}}"
  outbound:
    Description: "{{{{ body_text }}}}"
  status:
    Description: "{{{{ body_text }}}}"
"""


@pytest.mark.parametrize("option, error", [
    # Task has no Who_Id: Salesforce would refuse every create.
    ("who_field: Who_Id", "F:2:12: who_field: Task has no field `Who_Id`; did you mean `WhoId`?"),
    # A matched Lead would get a Task linked to nobody.
    ("who_field: {Contact: WhoId, Laed: WhoId}",
     "F:2:12: who_field: `Laed` is not a record type the connector matches "
     "(use Contact, Lead, Account, PersonAccount); did you mean `Lead`?"),
    ("what_field: What", "F:2:13: what_field: Task has no field `What`; did you mean `WhatId`?"),
    ("who_field: [WhoId]", "F:2:12: who_field must be a field name or {Contact: ..., Lead: ...}"),
])
def test_link_fields_are_checked_against_the_object(tmp_path, option, error):
    assert errors_of(tmp_path, SF_TASK.format(options=option + "\n"), "salesforce") == [error]


def test_an_account_is_linked_through_what_field_when_who_field_names_contacts_and_leads(tmp_path):
    from connector.crm.salesforce_match import link_field
    path = tmp_path / "salesforce.yaml"
    path.write_text(SF_TASK.format(options="who_field: {Contact: WhoId, Lead: WhoId}\nwhat_field: WhatId\n"))
    mapping = Mapping.load(path, "salesforce")
    assert [link_field(mapping, t) for t in ("Contact", "Lead", "Account")] == ["WhoId", "WhoId", "WhatId"]


def test_a_custom_field_setting_given_twice_is_an_error(tmp_path):
    text = "custom_fields:\n  sms_line:\n    type: text\n    max_length: 100\n    max_length: 10\n" + HUBSPOT
    assert "F:5:5: `max_length` appears twice in custom_fields.sms_line; keep one" in errors_of(tmp_path, text)


def test_picklist_options_that_are_not_a_list_are_an_error(tmp_path):
    text = ("custom_fields:\n  sms_dir: {type: picklist, options: 'Inbound, Outbound'}\n"
            + HUBSPOT.replace("  status:\n", "  status:\n    sms_dir: Inbound\n"))
    assert "F:2:12: custom_fields.sms_dir: options must be a list, e.g. options: [Inbound, Outbound]" \
        in errors_of(tmp_path, text)


def test_a_salesforce_rich_text_field_is_cut_to_its_length_and_check_says_so(tmp_path):
    from connector.crm import salesforce
    from connector.crm.base import DeliveryContext
    from connector.providers import aircall
    from connector.render import default_media_views
    from tests.conftest import aircall_payload, base_config
    from connector.config import load_config
    text = ("object: MMS_Message__c\nwho_field: {Contact: Contact__c, Lead: Lead__c}\nwhat_field: \"\"\n"
            "custom_fields:\n  Body__c: {type: html, max_length: 100}\n"
            "entries:\n  inbound:\n    Body__c: \"{{ body_text }}\"\n  outbound: {}\n  status: {}\n")
    path = tmp_path / "salesforce.yaml"
    path.write_text(text)
    mapping = Mapping.load(path, "salesforce")
    assert any("`Body__c` holds 100, longer values are cut" in w for w in mapping.warnings), mapping.warnings
    event = aircall.parse(aircall_payload("mms_received"))
    ctx = DeliveryContext(store=None, config=load_config(data=base_config(tmp_path)), media=default_media_views(event))
    body = salesforce.render(event, ctx, "create", mapping, who_id="003C")["body"]["Body__c"]
    assert len(body) <= 100 and body.endswith("[truncated]")


def test_a_hubspot_cut_never_makes_a_short_property_longer(tmp_path):
    from connector.mapping.variables import sample_contexts
    text = ("custom_fields:\n  sms_ch: {type: text, max_length: 2}\n"
            + HUBSPOT.replace("  status:\n", "  status:\n    sms_ch: \"{{ message.channel }}\"\n"))
    path = tmp_path / "hubspot.yaml"
    path.write_text(text)
    value = Mapping.load(path, "hubspot").render("status", sample_contexts()[0][1])["sms_ch"]
    assert value == "mm"


def test_an_attribute_of_the_media_list_is_caught_even_in_a_branch_no_sample_takes(tmp_path):
    text = HUBSPOT.replace('  status:\n    hs_communication_body: "{{ body_html }}"',
                           '  status:\n    hs_communication_body: "{% if message.status == \'failed\' %}'
                           '{{ media.name }}{% endif %}{{ body_html }}"')
    [error] = errors_of(tmp_path, text)
    assert "`media` is a list: loop over it (`{% for m in media %}{{ m.name }}{% endfor %}`) or pick one " \
           "(`media[0].name`)" in error


def test_a_with_block_s_variables_are_known_inside_it(tmp_path):
    from connector.mapping.variables import sample_contexts
    path = tmp_path / "hubspot.yaml"
    path.write_text(HUBSPOT.replace('  status:\n    hs_communication_body: "{{ body_html }}"',
                                    '  status:\n    hs_communication_body: '
                                    '"{% with t = message.text %}{{ t }}{% endwith %}"'))
    mapping = Mapping.load(path, "hubspot")
    ctx = sample_contexts()[0][1]
    from markupsafe import escape  # an HTML property: escaped as any value
    assert mapping.render("status", ctx)["hs_communication_body"] == str(escape(ctx["message"]["text"]))
    # ...and a typo in what it names is still caught.
    path.write_text(HUBSPOT.replace('  status:\n    hs_communication_body: "{{ body_html }}"',
                                    '  status:\n    hs_communication_body: '
                                    '"{% with t = message.txt %}{{ t }}{% endwith %}"'))
    with pytest.raises(MappingError, match="unknown variable `message.txt`"):
        Mapping.load(path, "hubspot")


def test_an_unknown_attribute_is_pointed_at_not_a_variable_of_the_same_name_before_it(tmp_path):
    text = HUBSPOT.replace('  status:\n    hs_communication_body: "{{ body_html }}"',
                           '  status:\n    hs_communication_body: "{{ media_count }} {{ message.media_count }}"')
    assert errors_of(tmp_path, text)[0].startswith("F:10:58: unknown variable `message.media_count`")


def test_an_unknown_variable_on_the_second_line_of_a_quoted_value_is_pointed_at(tmp_path):
    text = HUBSPOT.replace('  status:\n    hs_communication_body: "{{ body_html }}"',
                           '  status:\n    hs_communication_body: "{{ message.text }}\n      {{ text }}"')
    assert errors_of(tmp_path, text)[0].startswith("F:11:10: unknown variable `text`")


def test_read_only_in_quotes_is_an_error_not_true(tmp_path):
    text = "custom_fields:\n  sms_line: {type: text, read_only: 'no'}\n" + HUBSPOT
    assert "F:2:13: custom_fields.sms_line: read_only must be true or false (unquoted)" in errors_of(tmp_path, text)
