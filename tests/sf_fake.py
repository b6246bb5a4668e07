"""Salesforce's REST API as `responses` mocks, for the real simple-salesforce client."""
from __future__ import annotations

import json
from urllib.parse import parse_qs, urlparse

import responses

INSTANCE = "https://acme.my.salesforce.com"
API = f"{INSTANCE}/services/data/v59.0"
SOAP_LOGIN = "https://login.salesforce.com/services/Soap/u/59.0"
TOKEN_URL = "https://login.salesforce.com/services/oauth2/token"


def soap_login_ok(session: str = "SESSION-1") -> str:
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns="urn:partner.soap.sforce.com">
<soapenv:Body><loginResponse><result>
<serverUrl>{INSTANCE}/services/Soap/u/59.0/00Dxx0000001gPL</serverUrl>
<sessionId>{session}</sessionId>
</result></loginResponse></soapenv:Body></soapenv:Envelope>"""


def add_login(rsps: responses.RequestsMock, *sessions: str) -> None:
    for s in sessions or ("SESSION-1",):
        rsps.add(responses.POST, SOAP_LOGIN, body=soap_login_ok(s), status=200,
                 content_type="text/xml")


def contact(cid: str, phone: str, created: str = "2024-01-01T00:00:00.000+0000", **more) -> dict:
    return {"attributes": {"type": "Contact", "url": f"/services/data/v59.0/sobjects/Contact/{cid}"},
            "Id": cid, "Phone": phone, "MobilePhone": None, "HomePhone": None, "OtherPhone": None,
            "AssistantPhone": None, "CreatedDate": created, **more}


def lead(lid: str, phone: str, created: str = "2024-01-01T00:00:00.000+0000") -> dict:
    return {"attributes": {"type": "Lead", "url": f"/services/data/v59.0/sobjects/Lead/{lid}"},
            "Id": lid, "Phone": phone, "MobilePhone": None, "CreatedDate": created}


def add_search(rsps, records: list[dict], status: int = 200) -> None:
    rsps.add(responses.GET, f"{API}/search/", json={"searchRecords": records}, status=status)


def sosl_of(call) -> str:
    return parse_qs(urlparse(call.request.url).query)["q"][0]


def body_of(call) -> dict:
    return json.loads(call.request.body)


def calls_to(rsps, method: str, fragment: str) -> list:
    return [c for c in rsps.calls if c.request.method == method and fragment in c.request.url]


def not_updateable(fields: list[str]) -> list[dict]:
    """Salesforce's answer to an update that sets create-only fields (TaskSubtype)."""
    return [{"message": f"Unable to create/update fields: {', '.join(fields)}. Please check the security "
             "settings of this field and verify that it is read/write for your profile or permission set.",
             "errorCode": "INVALID_FIELD_FOR_INSERT_UPDATE", "fields": fields}]


def existing_record(record_id: str, create_only: tuple[str, ...] = ("TaskSubtype",)):
    """An upsert callback for a record that exists: create-only fields are refused."""
    def answer(request):
        refused = [f for f in create_only if f in json.loads(request.body)]
        if refused:
            return 400, {}, json.dumps(not_updateable(refused))
        return 200, {}, json.dumps({"id": record_id, "success": True, "errors": [], "created": False})
    return answer
