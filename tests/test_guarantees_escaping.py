"""Text from a phone is escaped wherever it lands (HTML in HubSpot, SOSL in Salesforce);
media URLs pointing inside the network, at files, or redirecting there are refused."""
from __future__ import annotations

import re
from html.parser import HTMLParser

import pytest
import responses
from hypothesis import given, settings
from hypothesis import strategies as st
from tenacity import wait_none

from connector.crm.salesforce_match import SOSL_RESERVED, build_sosl, escape_sosl
from connector.outbox import OUT_REJECTED
from tests.conftest import aircall_payload
from tests.hubspot_helpers import hub, live, post, run  # noqa: F401 (fixtures)
from tests.outbound_support import API_TOKEN, oclient, ort, outbox_rows  # noqa: F401 (fixtures)
from tests.sf_fake import add_login, add_search, sosl_of

ATTACKS = [
    '<script>alert("x")</script>',
    "<img src=x onerror=alert(1)>",
    '<a href="javascript:alert(1)">click</a>',
    '"><svg onload=alert(1)>',
    "</p><iframe src=//evil.example></iframe>",
    "{{ 7*7 }} {% for x in range(3) %}boom{% endfor %} ${7*7}",
]
SAFE_TAGS = {"p", "strong", "em", "b", "i", "a", "img", "ul", "ol", "li", "br", "span", "div", "small"}


class _Html(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.tags, self.text = [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


@pytest.mark.parametrize("attack", ATTACKS)
def test_hubspot_entry_escapes_html_and_templates_from_the_phone(live, hub, attack):
    hub.add_contact(phone="+14155550142")
    rt = live()
    media = [{"file_name": f"{attack}.jpg", "file_type": "image/jpeg",
              "presigned_url": "https://media.aircall.example/m/1/a.jpg?sig=1"}]
    post(rt, "mms_received", body=f"before {attack} after", media_details=media)
    run(rt)
    [create] = hub.calls("POST", "/crm/v3/objects/communications")
    html = create[2]["properties"]["hs_communication_body"]
    parsed = _Html()
    parsed.feed(html)
    for tag, attrs in parsed.tags:  # only the template's own markup, no attribute from the phone
        assert tag in SAFE_TAGS, (tag, html)
        assert not any(name.startswith("on") for name in attrs), (tag, attrs)
        for name in ("href", "src"):
            if name in attrs:
                assert attrs[name].startswith("https://media.aircall.example/"), attrs
    text = "".join(parsed.text)
    assert f"before {attack} after" in text  # shown to the rep as the text it was
    assert f"{attack}.jpg" in text


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_sosl_escape_leaves_no_reserved_character_unescaped(term):
    escaped = escape_sosl(term)
    out, i = [], 0
    while i < len(escaped):
        ch = escaped[i]
        if ch == "\\":
            assert i + 1 < len(escaped) and escaped[i + 1] in SOSL_RESERVED
            out.append(escaped[i + 1])
            i += 2
            continue
        assert ch not in SOSL_RESERVED
        out.append(ch)
        i += 1
    assert "".join(out) == term


@pytest.fixture
def sf(make_runtime):
    cfg = {"mode": "live", "username": "integration@acme.test", "password": "pw", "security_token": "tok",
           "external_id_field": "MMS_Message_Id__c"}
    rt = make_runtime(salesforce=cfg, hubspot={"mode": "off"})
    rt.pipeline.writers["salesforce"].client.retry_wait = wait_none()
    return rt


@pytest.mark.parametrize("number,searched", [
    ('+1 415-555-0142"} RETURNING User(Id', False),  # not a phone number: no search at all
    ("4155550142) OR {*", True),
    ("+1 (415) 555-0142 \\ ' ? & | ! ^ ~ * : +", True),
    ("anonymous}) RETURNING Contact(Id", False),
])
def test_sosl_query_never_carries_phone_text_unescaped(sf, number, searched):
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        add_login(rsps)
        add_search(rsps, [])
        rsps.add(responses.PATCH, re.compile(r".*/sobjects/.*"), status=201, json={"id": "00T1", "success": True})
        rsps.add(responses.POST, re.compile(r".*/sobjects/.*"), status=201, json={"id": "00Q1", "success": True})
        payload = aircall_payload("sms_received")
        payload["data"]["external_number"] = number
        payload["data"]["raw_digits"] = number
        from connector.web import create_app
        assert create_app(sf.config, sf).test_client().post("/webhooks/aircall", json=payload).status_code in (200, 400)
        sf.worker().run_once()
        searches = [sosl_of(c) for c in rsps.calls if "/search" in c.request.url]
    assert bool(searches) == searched
    for q in searches:
        find = re.match(r"FIND \{(.*)\} IN PHONE FIELDS RETURNING ", q, re.S)
        assert find, q
        term = find.group(1)
        assert re.fullmatch(r"(?:\\.|[^{}\\])*", term), q  # only escaped specials inside the braces
        assert "RETURNING User" not in term and "RETURNING Contact(Id" not in term


def test_build_sosl_for_a_hostile_number_is_one_escaped_term():
    q = build_sosl(['"} RETURNING User(Id'], ["Contact"])
    assert q.startswith("FIND {") and q.count("} IN PHONE FIELDS") == 1
    assert "User(Id" not in q.split("} IN PHONE FIELDS")[0].replace("\\", "")  # digits only remain


# -- media URLs that point inside --------------------------------------------------------

INSIDE = [
    "http://127.0.0.1:9/secret.png", "http://localhost/x.png", "http://10.0.0.5/a.jpg",
    "http://192.168.1.1/a.jpg", "http://172.16.0.1/a.jpg", "http://169.254.169.254/latest/meta-data/",
    "http://[::1]/a.png", "http://0.0.0.0/a.png", "http://2130706433/a.png", "file:///etc/passwd",
    "ftp://example.com/a.png", "gopher://127.0.0.1:6379/_FLUSHALL",
]


@pytest.mark.parametrize("url", INSIDE)
def test_messages_api_refuses_media_pointing_inside(ort, httpserver, url):
    from connector.web import create_app
    rt = ort.make(fetch={"allow_http": True, "allow_networks": []})
    client = create_app(rt.config, rt).test_client()
    r = client.post("/api/v1/messages", json={"to": "+14155550142", "text": "hi", "media": [url],
                                              "policy": "strict"},
                    headers={"Authorization": f"Bearer {API_TOKEN}"})
    assert r.status_code == 422, r.get_json()
    [att] = r.get_json()["validation"]["attachments"]
    assert att["ok"] is False and att["detail"].startswith("refused: "), att
    assert [m.state for m in outbox_rows(rt)] == [OUT_REJECTED]
    rt.outbound.run_once()
    assert [req for req, _ in httpserver.log] == []  # nothing fetched, nothing sent


@pytest.mark.parametrize("target", ["file:///etc/passwd", "http://127.0.0.1:{port}/inside.png",
                                    "http://[::1]:{port}/inside.png"])
def test_media_redirecting_inside_is_refused(ort, httpserver, target):
    from werkzeug import Response

    from connector.web import create_app
    # The first hop is an allowed host; where it redirects to is not.
    rt = ort.make(fetch={"allow_http": True, "allow_networks": [], "allow_hosts": ["localhost"]})
    client = create_app(rt.config, rt).test_client()
    httpserver.expect_request("/inside.png").respond_with_data(b"\x89PNG\r\n\x1a\n" + b"0" * 100)
    httpserver.expect_request("/hop.png").respond_with_response(
        Response(status=302, headers={"Location": target.format(port=httpserver.port)}))
    url = f"http://localhost:{httpserver.port}/hop.png"
    r = client.post("/api/v1/messages", json={"to": "+14155550142", "text": "hi", "media": [url],
                                              "policy": "strict"},
                    headers={"Authorization": f"Bearer {API_TOKEN}"})
    assert r.status_code == 422, r.get_json()
    [att] = r.get_json()["validation"]["attachments"]
    assert att["detail"].startswith("refused: "), att
    assert [req.path for req, _ in httpserver.log] == ["/hop.png"]  # never followed inside
