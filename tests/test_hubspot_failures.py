"""HubSpot's failure signals: 429 (both kinds), 5xx, timeouts, 4xx, auth, lost creates, bursts."""
from __future__ import annotations

import threading
import time
from datetime import datetime
from zoneinfo import ZoneInfo

from tests.hubspot_fake import hubspot_error, rate_limited
from tests.hubspot_helpers import hub, live, post, run, state  # noqa: F401 (fixtures)

MMS = "abdcSM77mms0001"
COMMS = "/crm/v3/objects/communications"


def _delivery(rt, message_id=MMS):
    from connector.store import deliveries
    from sqlalchemy import select
    with rt.store.engine.connect() as conn:
        return conn.execute(select(deliveries).where(deliveries.c.message_id == message_id)).first()


def test_ten_secondly_429_waits_retry_after_and_retries_in_the_call(live, hub):
    hub.add_contact(phone="+14155550142")
    hub.fail_next("POST", COMMS, rate_limited("TEN_SECONDLY_ROLLING", retry_after="7"))
    rt = live()
    post(rt, "mms_received")
    run(rt)
    assert rt.waits == [7.0]
    assert len(hub.calls("POST", COMMS)) == 2 and len(hub.comms) == 1
    assert state(rt, MMS)[0]["state"] == "delivered"


def test_ten_secondly_429_that_persists_parks_without_spending_an_attempt(live, hub):
    hub.add_contact(phone="+14155550142")
    hub.fail_next("POST", COMMS, rate_limited("TEN_SECONDLY_ROLLING"), times=3)
    rt = live()
    post(rt, "mms_received")
    run(rt)
    assert rt.waits == [10.0, 10.0]  # no Retry-After: the 10 s window
    st = state(rt, MMS)[0]
    assert st["state"] == "retrying" and st["attempts"] == 0
    assert "You have reached your ten_secondly_rolling limit." in st["error"]
    assert hub.comms == {}
    run(rt, later=30)
    assert state(rt, MMS)[0]["state"] == "delivered" and len(hub.comms) == 1


def test_daily_429_parks_until_midnight_in_the_portal_time_zone_and_stops_calling(live, hub):
    hub.add_contact(phone="+14155550142")
    hub.fail_next("POST", COMMS, rate_limited("DAILY"))
    rt = live(time_zone="America/New_York")
    post(rt, "mms_received")
    before = time.time()
    run(rt)
    st = state(rt, MMS)[0]
    assert st["state"] == "retrying" and st["attempts"] == 0
    assert st["error"].startswith("rate limited: HubSpot 429 RATE_LIMITS: You have reached your daily limit.")
    assert "parked until midnight America/New_York" in st["error"]
    now = datetime.now(ZoneInfo("America/New_York"))
    to_midnight = 86400 - (now.hour * 3600 + now.minute * 60 + now.second)
    assert abs((_delivery(rt).next_at - before) - to_midnight) < 120
    assert rt.waits == []  # a daily limit is not retried in the call
    calls = len(hub.requests)
    post(rt, "sms_received")
    run(rt)
    assert len(hub.requests) == calls  # no request until the reset
    # Stored during the park, so not even claimed: every process sees the portal's park.
    assert state(rt, "abdcSM11da5f0b1")[0]["state"] == "pending"
    assert abs((rt.store.parked_until("hubspot") - before) - to_midnight) < 120


def test_500_on_search_is_retried_in_the_call(live, hub):
    hub.add_contact(phone="+14155550142")
    hub.fail_next("POST", "/crm/v3/objects/contacts/search", hubspot_error(500, "internal", "INTERNAL_ERROR"))
    rt = live()
    post(rt, "mms_received")
    run(rt)
    assert len(hub.calls("POST", "/crm/v3/objects/contacts/search")) == 2
    assert len(rt.waits) == 1 and rt.waits[0] < 0.01  # exponential backoff with jitter
    assert state(rt, MMS)[0]["state"] == "delivered"


def test_500_on_create_that_did_create_is_found_not_duplicated(live, hub):
    hub.add_contact(phone="+14155550142")
    # HubSpot made the record but answered 500: the create must not simply be repeated.
    hub.fail_next("POST", COMMS, hubspot_error(500, "internal", "INTERNAL_ERROR"), then_run=True)
    rt = live()
    post(rt, "mms_received")
    run(rt)
    st = state(rt, MMS)[0]
    assert st["state"] == "retrying" and st["attempts"] == 1
    assert st["error"].startswith("HubSpot 500 INTERNAL_ERROR: internal (correlationId ")
    assert len(hub.calls("POST", COMMS)) == 1
    assert _delivery(rt).next_at - time.time() > 9  # search lags creates: wait it out
    # Too early for search: parked again, no call.
    run(rt, later=30)
    assert "its search has caught up" in state(rt, MMS)[0]["error"]
    rt.pipeline.writers["hubspot"].search_lag = 0
    run(rt, later=60)
    [found] = hub.calls("POST", f"{COMMS}/search")
    [comm_id] = hub.comms
    cid = next(iter(hub.contacts))
    assert found[2]["filterGroups"] == [{"filters": [
        {"propertyName": "associations.contact", "operator": "EQ", "value": cid},
        {"propertyName": "hs_timestamp", "operator": "EQ", "value": "1795187044000"},
        {"propertyName": "hs_communication_channel_type", "operator": "EQ", "value": "SMS"}]}]
    assert len(hub.calls("POST", COMMS)) == 1 and len(hub.comms) == 1
    assert state(rt, MMS)[0]["state"] == "delivered"
    assert rt.store.get_record("hubspot", MMS)["object_id"] == comm_id


def test_read_timeout_on_create_with_marker_property_searches_by_message_id(live, hub):
    hub.add_contact(phone="+14155550142")
    hub.slow[COMMS] = 0.5
    rt = live(read_timeout=0.1, message_id_property="aircall_message_id")
    rt.pipeline.writers["hubspot"].search_lag = 0
    post(rt, "mms_received")
    run(rt)
    st = state(rt, MMS)[0]
    assert st["state"] == "retrying" and st["error"] == "HubSpot did not answer within 0.1s"
    deadline = time.time() + 10  # the slow create lands meanwhile
    while not hub.comms and time.time() < deadline:
        time.sleep(0.02)
    hub.slow.clear()
    run(rt, later=60)
    [found] = hub.calls("POST", f"{COMMS}/search")
    assert found[2]["filterGroups"] == [{"filters": [
        {"propertyName": "aircall_message_id", "operator": "EQ", "value": MMS}]}]
    assert len(hub.comms) == 1 and len(hub.calls("POST", COMMS)) == 1
    assert next(iter(hub.comms.values())).properties["aircall_message_id"] == MMS
    assert state(rt, MMS)[0]["state"] == "delivered"


def test_lost_create_that_never_landed_is_created_once_on_retry(live, hub):
    hub.add_contact(phone="+14155550142")
    hub.fail_next("POST", COMMS, hubspot_error(503, "unavailable", "SERVICE_UNAVAILABLE"))
    rt = live()
    rt.pipeline.writers["hubspot"].search_lag = 0
    post(rt, "mms_received")
    run(rt)
    run(rt, later=60)
    assert len(hub.calls("POST", f"{COMMS}/search")) == 1
    assert len(hub.calls("POST", COMMS)) == 2 and len(hub.comms) == 1
    assert state(rt, MMS)[0]["state"] == "delivered"


def test_other_4xx_is_a_dead_letter_with_hubspots_message_and_correlation_id(live, hub):
    hub.add_contact(phone="+14155550142")
    hub.fail_next("POST", COMMS, hubspot_error(
        400, "Property values were not valid: hs_communication_body too long"))
    rt = live()
    post(rt, "mms_received")
    run(rt)
    st = state(rt, MMS)[0]
    assert st["state"] == "dead"
    assert st["error"].startswith("HubSpot 400 VALIDATION_ERROR: Property values were not valid: "
                                  "hs_communication_body too long (correlationId corr-400-")


def test_private_app_401_is_a_dead_letter_naming_the_key(live, hub):
    rt = live(access_token="pat-wrong")
    post(rt, "mms_received")
    run(rt)
    st = state(rt, MMS)[0]
    assert st["state"] == "dead"
    assert st["error"].startswith("HubSpot 401 INVALID_AUTHENTICATION: Authentication credentials not found.")
    assert st["error"].endswith("(check hubspot.access_token)")


def test_connection_refused_retries_then_backs_off(live, hub):
    import socket
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    rt = live(base_url=f"http://127.0.0.1:{port}")
    post(rt, "mms_received")
    run(rt)
    st = state(rt, MMS)[0]
    assert st["state"] == "retrying" and st["attempts"] == 1
    assert st["error"] == "HubSpot unreachable: NewConnectionError"
    assert len(rt.waits) == 2


def test_oauth_refreshes_first_then_on_401_and_before_expiry(live, hub):
    hub.add_contact(phone="+14155550142")
    rt = live(access_token="", client_id="cid", client_secret="secret", refresh_token="refresh-ok")
    api = rt.pipeline.writers["hubspot"].api
    post(rt, "mms_received", id="m1")
    run(rt)
    [tok] = hub.calls("POST", "/oauth/v1/token")
    assert tok[2] == {"grant_type": "refresh_token", "client_id": "cid", "client_secret": "secret",
                      "refresh_token": "refresh-ok"}
    assert state(rt, "m1")[0]["state"] == "delivered"
    hub.tokens.discard("oauth-1")  # revoked early: a 401, one refresh, the same call again
    post(rt, "mms_received", id="m2")
    run(rt)
    assert hub.refresh_count == 2 and state(rt, "m2")[0]["state"] == "delivered"
    clock = time.time() + 1800  # past expires_in: refreshed before the call
    api.clock = lambda: clock
    post(rt, "mms_received", id="m3")
    run(rt)
    assert hub.refresh_count == 3 and len(hub.comms) == 3
    assert [m for m, p, _ in hub.requests if p == "/oauth/v1/token"] == ["POST"] * 3


def test_oauth_refresh_refused_is_a_dead_letter_asking_to_reauthorize(live, hub):
    rt = live(access_token="", client_id="cid", client_secret="secret", refresh_token="revoked")
    post(rt, "mms_received")
    run(rt)
    st = state(rt, MMS)[0]
    assert st["state"] == "dead"
    assert st["error"].startswith("HubSpot OAuth token refresh failed, re-authorize the app: HubSpot 400")


def test_burst_from_a_new_number_on_two_workers_creates_one_contact(live, hub):
    hub.slow["/crm/v3/objects/contacts/batch/create"] = 0.4  # still running when the second looks
    rt1 = live(unknown_number={"action": "create"})
    rt2 = live(unknown_number={"action": "create"})  # a second process on the same store
    for n in range(4):
        post(rt1, "sms_received", id=f"burst{n}")
    errors = []

    def work(rt):
        try:
            run(rt)
        except Exception as exc:  # pragma: no cover - surfaced below
            errors.append(exc)
    threads = [threading.Thread(target=work, args=(rt,)) for rt in (rt1, rt2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    run(rt1, later=10)  # anything parked while the other worker was creating
    assert len(hub.calls("POST", "/crm/v3/objects/contacts/batch/create")) == 1
    [cid] = hub.contacts
    assert len(hub.comms) == 4
    assert {c.associations[0][0] for c in hub.comms.values()} == {cid}


def test_unknown_number_is_remembered_for_a_while(live, hub):
    rt = live(unmatched_cache_ttl=60)
    post(rt, "sms_received", id="a")
    post(rt, "sms_received", id="b")
    run(rt)
    assert len(hub.calls("POST", "/crm/v3/objects/contacts/search")) == 1
    assert [s[0]["state"] for s in (state(rt, "a"), state(rt, "b"))] == ["skipped", "skipped"]


def test_search_secondly_429_waits_a_second_and_retries(live, hub):
    hub.add_contact(phone="+14155550142")
    hub.fail_next("POST", "/crm/v3/objects/contacts/search", hubspot_error(
        429, "You have reached your secondly limit.", "RATE_LIMITS", errorType="RATE_LIMIT",
        policyName="SECONDLY"))
    rt = live()
    post(rt, "mms_received")
    run(rt)
    assert rt.waits == [1.0]
    assert len(hub.calls("POST", "/crm/v3/objects/contacts/search")) == 2
    assert state(rt, MMS)[0]["state"] == "delivered"


class _CheckedAssociations:
    """Like HubSpot: a create associated with a contact or deal that no longer exists is
    refused, 400 "One or more associations are invalid" (INVALID_OBJECT_IDS)."""

    def __init__(self, hub):
        self.hub, self.deleted = hub, set()
        create = hub._create

        def checked(store, body, contact=False):
            if not contact:
                bad = [a["to"]["id"] for a in body.get("associations") or []
                       if (a["types"][0]["associationTypeId"] == 81 and a["to"]["id"] not in hub.contacts)
                       or a["to"]["id"] in self.deleted]
                if bad:
                    return hubspot_error(400, "One or more associations are invalid",
                                         context={"INVALID_OBJECT_IDS": [f"{i} is not valid" for i in bad]})
            return create(store, body, contact)
        hub._create = checked


def test_a_deleted_duplicate_contact_that_was_remembered_is_looked_up_again_not_dead_lettered(live, hub):
    _CheckedAssociations(hub)
    old = hub.add_contact(phone="+18704575426", created_days=1)
    keep = hub.add_contact(phone="(870) 457-5426", created_days=5)
    rt = live()
    post(rt, "sms_received", id="m1")
    run(rt)
    del hub.contacts[old]  # a rep merged the duplicate away
    post(rt, "sms_received", id="m2")
    run(rt)
    [first] = state(rt, "m2")
    assert first["state"] == "retrying" and "is looked up again" in first["error"]
    run(rt, later=120)
    assert state(rt, "m2")[0]["state"] == "delivered"
    comm = hub.comms[rt.store.get_record("hubspot", "m2")["object_id"]]
    assert comm.associations[0][0] == keep


def test_a_deleted_deal_that_was_remembered_is_looked_up_again(live, hub):
    checked = _CheckedAssociations(hub)
    cid = hub.add_contact(phone="+14155550142")
    hub.deals[cid] = ["501", "733"]
    rt = live(associate_deal=True)
    post(rt, "mms_received", id="d1")
    run(rt)
    hub.deals[cid], checked.deleted = ["501"], {"733"}  # deal 733 deleted
    post(rt, "mms_received", id="d2")
    run(rt)
    run(rt, later=120)
    assert state(rt, "d2")[0]["state"] == "delivered"


def test_a_contact_just_created_is_remembered_past_a_short_cache_lifetime(live, hub):
    # HubSpot's search shows a new contact only seconds later: with contact_cache_ttl 0 a
    # second text from the new number found none and created it again.
    def lagging(store, body, _search=hub._search):
        hidden = {k: v for k, v in store.items() if k in created}
        for k in hidden:
            del store[k]
        try:
            return _search(store, body)
        finally:
            store.update(hidden)
    created = set()
    create = hub._batch_create

    def remember(body, contact=False):
        before = set(hub.contacts)
        resp = create(body, contact)
        created.update(set(hub.contacts) - before)
        return resp
    hub._search, hub._batch_create = lagging, remember
    rt = live(contact_cache_ttl=0, unknown_number={"action": "create"})
    for mid in ("first", "second"):
        post(rt, "sms_received", id=mid)
        run(rt)
    assert len(hub.contacts) == 1 and [state(rt, m)[0]["state"] for m in ("first", "second")] == ["delivered"] * 2
