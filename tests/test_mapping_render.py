"""What reaches the CRM: HubSpot HTML escaped whatever the template does, Salesforce plain,
filters, field limits, and sandbox refusals that fail one message rather than the worker."""
from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pytest

from connector.events import INBOUND, RECEIVED, MessageEvent
from connector.mapping import Mapping, RenderError
from connector.render import build_context, default_media_views

EVENT = MessageEvent(provider="aircall", event="message.received", message_id="m1", direction=INBOUND,
                     status=RECEIVED, channel="sms", line="+14244162288", external="+33612345678",
                     text='<script>alert("x")</script> & <b>hi</b>', media=[],
                     occurred_at=datetime(2026, 11, 20, 23, 30, tzinfo=timezone.utc), line_name="Sales US")


def ctx(time_zone="UTC"):
    return build_context(EVENT, default_media_views(EVENT), time_zone=time_zone)


def load(tmp_path: Path, crm: str, text: str, time_zone: str = "UTC") -> Mapping:
    path = tmp_path / f"{crm}.yaml"
    path.write_text(text)
    return Mapping.load(path, crm, time_zone)


def hubspot(inbound: str, custom: str = "") -> str:
    return (f"object: communications\ncustom_fields:\n  x: 1\n{custom}entries:\n  inbound:\n{inbound}"
            "  outbound: {}\n  status: {}\n")


def test_hubspot_html_fields_are_escaped_whatever_the_template_does(tmp_path):
    m = load(tmp_path, "hubspot", hubspot(
        '    hs_communication_body: "<p>{{ message.text }}</p>{{ message.text|safe }}'
        '{% filter safe %}{{ message.text }}{% endfilter %}{{ body_html }}"\n'
        '    sms_note: "{{ message.text }}"\n    hs_timestamp: "{{ message.time_iso }}"\n',
        custom="  sms_html: {type: html}\n  sms_note: {type: text}\n"))
    out = m.render("inbound", ctx())
    escaped = "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt; &amp; &lt;b&gt;hi&lt;/b&gt;"
    body = out["hs_communication_body"]
    assert body.startswith(f"<p>{escaped}</p>{escaped}{escaped}<p><strong>SMS received from +33612345678</strong>")
    assert "<script>" not in body
    assert f"<p>{escaped}</p>" in body  # body_html: connector HTML kept, phone text escaped once
    # not HTML properties: the text as sent, no entities
    assert out["sms_note"] == '<script>alert("x")</script> & <b>hi</b>'
    assert out["hs_timestamp"] == "2026-11-20T23:30:00+00:00"


def test_declared_html_custom_property_is_escaped(tmp_path):
    m = load(tmp_path, "hubspot", hubspot('    sms_html: "<i>{{ message.text|safe }}</i>"\n',
                                          custom="  sms_html: {type: html}\n"))
    assert m.render("inbound", ctx())["sms_html"] == (
        "<i>&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt; &amp; &lt;b&gt;hi&lt;/b&gt;</i>")


def test_salesforce_text_stays_plain_and_is_cut_to_the_field(tmp_path):
    m = load(tmp_path, "salesforce", "object: Task\nentries:\n  inbound:\n"
             '    Subject: "{{ message.text }} {{ \'y\' * 300 }}"\n'
             '    Description: "{{ message.text }}"\n'
             '    CallDurationInSeconds: "{{ media_count }}"\n    IsReminderSet: "{{ false }}"\n'
             "  outbound: {}\n  status: {}\n")
    out = m.render("inbound", ctx())
    assert out["Description"] == '<script>alert("x")</script> & <b>hi</b>'
    assert out["Subject"].endswith(" " + "y" * 300)  # cut later by salesforce.field_limits
    assert out["CallDurationInSeconds"] == 0 and out["IsReminderSet"] is False


def test_hubspot_text_property_is_cut_to_its_declared_length(tmp_path):
    m = load(tmp_path, "hubspot", hubspot('    sms_note: "{{ message.text }}"\n',
                                          custom="  sms_note: {type: text, max_length: 10}\n"))
    assert m.render("inbound", ctx())["sms_note"] == "<script..."


def test_filters_phone_dates_in_the_configured_zone_truncate(tmp_path):
    m = load(tmp_path, "salesforce", "object: Task\nentries:\n  inbound:\n"
             "    Subject: \"{{ external.e164|phone('national') }} | {{ external.e164|phone }} | "
             "{{ external.e164|phone('digits') }} | {{ external.national }} | {{ external.country }}\"\n"
             "    Description: \"{{ message.time|datetime('%d/%m/%Y %H:%M %Z') }} | {{ message.timestamp_ms|date }} | "
             "{{ message.time|datetime('%H:%M', 'America/New_York') }} | {{ message.text|truncate(12) }}\"\n"
             "    ActivityDate: \"{{ message.date }}\"\n"
             "  outbound: {}\n  status: {}\n", time_zone="Europe/Paris")
    out = m.render("inbound", ctx("Europe/Paris"))
    assert out["Subject"] == "06 12 34 56 78 | +33 6 12 34 56 78 | 33612345678 | 06 12 34 56 78 | FR"
    assert out["Description"] == "21/11/2026 00:30 CET | 2026-11-21 | 18:30 | <script>a..."
    assert out["ActivityDate"] == "2026-11-21"


def test_render_time_refusal_names_the_field_and_does_not_crash(tmp_path):
    # valid on every sample, refused for this message only: the worker records the error and goes on
    m = load(tmp_path, "salesforce", "object: Task\nentries:\n  inbound:\n"
             "    Subject: \"{{ message.text|datetime }}\"\n  outbound: {}\n  status: {}\n".replace(
                 "message.text|datetime", "(message.time_iso if message.id.startswith('sample') else message.text)|datetime"))
    with pytest.raises(RenderError) as info:
        m.render("inbound", ctx())
    assert info.value.errors == [f"{tmp_path / 'salesforce.yaml'}:4:14: entries.inbound.Subject: "
                                 "not a date or time: '<script>alert(\"x\")</script> & <b>hi</b>'"]


def test_repetition_is_capped(tmp_path):
    path = tmp_path / "salesforce.yaml"
    path.write_text("object: Task\nentries:\n  inbound:\n    Description: \"{{ 'x' * 10000000 }}\"\n"
                    "  outbound: {}\n  status: {}\n")
    with pytest.raises(Exception) as info:
        Mapping.load(path, "salesforce")
    assert "result too long (over 100000 items)" in str(info.value)


def test_salesforce_render_cuts_declared_custom_fields(tmp_path, make_runtime):
    from connector.crm.base import DeliveryContext
    from connector.crm.salesforce import TRUNCATED, render

    m = load(tmp_path, "salesforce", "object: MMS_Message__c\nwho_field: Contact__c\n"
             "custom_fields:\n  Body__c: {type: text, max_length: 20}\n"
             "entries:\n  inbound:\n    Body__c: \"{{ message.text }}\"\n  outbound: {}\n  status: {}\n")
    rt = make_runtime()
    req = render(EVENT, DeliveryContext(store=rt.store, config=rt.config, media=[]), "create", m)
    assert req["path"].endswith("/sobjects/MMS_Message__c/")
    assert req["body"]["Body__c"] == "<script" + TRUNCATED  # 20 characters: the declared max_length
    assert req["body"]["Contact__c"] == "{who_id}"
