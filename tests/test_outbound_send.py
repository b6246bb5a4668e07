"""The sender against a fake Aircall: what is sent, and that nothing is ever sent twice."""
from __future__ import annotations

import base64
import json
import socket
import threading
import time

from werkzeug import Response

from connector.outbox import OUT_FAILED, OUT_QUEUED, OUT_SENDING, OUT_SENT, OUT_UNKNOWN, Outbox
from connector.web import create_app
from tests.conftest import aircall_payload
from tests.outbound_support import (
    API_TOKEN, LINE_ID, TO, aircall_message, expect_send, oclient, ort, outbox_rows, send_requests,
)

SEND_PATH = f"/v1/numbers/{LINE_ID}/messages/native/send"


def queue(client, text="hello", key=None):
    headers = {"Authorization": f"Bearer {API_TOKEN}"}
    if key:
        headers["Idempotency-Key"] = key
    r = client.post("/api/v1/messages", json={"to": TO, "text": text}, headers=headers)
    assert r.status_code == 202, r.json
    return r.json["id"]


def only_row(rt):
    [row] = outbox_rows(rt)
    return row


def test_sends_once_with_basic_auth_and_the_documented_body(oclient, ort, httpserver):
    queue(oclient)
    expect_send(httpserver)
    assert ort.outbound.run_once() == 1
    [(req, _)] = httpserver.log
    assert req.path == SEND_PATH
    assert req.headers["Authorization"] == "Basic " + base64.b64encode(b"ac-id:ac-token").decode()
    assert json.loads(req.get_data()) == {"to": TO, "body": "hello"}
    row = only_row(ort)
    assert (row.state, row.provider_message_id, row.attempts) == (OUT_SENT, "SMout1", 1)
    assert ort.outbound.run_once() == 0 and len(httpserver.log) == 1


def test_proxy_mode_and_oauth(ort, httpserver):
    rt = ort.make(aircall={"send_mode": "proxy", "oauth_token": "oauth-xyz"})
    queue(create_app(rt.config, rt).test_client())
    expect_send(httpserver, mode="proxy")
    rt.outbound.run_once()
    [(req, _)] = httpserver.log
    assert req.path == f"/v1/numbers/{LINE_ID}/messages/send"
    assert req.headers["Authorization"] == "Bearer oauth-xyz"


def test_429_is_retried_and_sent_exactly_once(oclient, ort, httpserver):
    queue(oclient)
    expect_send(httpserver, {"error": "Too many requests"}, status=429, headers={"Retry-After": "0"})
    expect_send(httpserver)
    ort.outbound.run_once()
    assert len(send_requests(httpserver)) == 2  # the first was refused, the second accepted
    assert only_row(ort).state == OUT_SENT
    httpserver.check_assertions()


def test_429_with_an_unreadable_retry_after_does_not_hold_sends_forever(oclient, ort, httpserver):
    queue(oclient)
    expect_send(httpserver, {"error": "Too many requests"}, status=429, headers={"Retry-After": "inf"})
    ort.outbound.run_once()
    row = only_row(ort)
    assert row.state == OUT_QUEUED and len(send_requests(httpserver)) == 1
    in_an_hour = time.time() + 3600
    assert ort.outbound.client.blocked_until < in_an_hour
    assert [m.id for m in Outbox(ort.store).claim("later", 60, now=in_an_hour)] == [row.id]


def test_429_with_a_long_reset_parks_the_send_without_waiting(oclient, ort, httpserver):
    queue(oclient)
    reset = int(time.time()) + 60
    expect_send(httpserver, {"error": "Too many requests"}, status=429,
                headers={"X-AircallApi-Limit": "60", "X-AircallApi-Remaining": "0",
                         "X-AircallApi-Reset": str(reset)})
    started = time.monotonic()
    ort.outbound.run_once()
    assert time.monotonic() - started < 5
    row = only_row(ort)
    assert row.state == OUT_QUEUED and "429" in row.error
    # Not due until the reset, and the client holds back further sends meanwhile.
    assert ort.outbound.run_once() == 0 and len(send_requests(httpserver)) == 1
    assert ort.outbound.client.blocked_until >= reset - 1


def test_429_holds_every_queued_send_for_all_processes(oclient, ort, httpserver):
    queue(oclient, "one")
    queue(oclient, "two")
    expect_send(httpserver, {}, status=429, headers={"Retry-After": "30"})
    ort.outbound.run_once()
    # A second process (its own client, no memory of the 429) finds nothing due.
    other = ort.make()
    assert other.outbound.run_once() == 0
    assert [m.state for m in outbox_rows(ort)] == [OUT_QUEUED, OUT_QUEUED]
    assert len(send_requests(httpserver)) == 1


def test_remaining_zero_holds_back_the_next_send(oclient, ort, httpserver):
    queue(oclient, "one")
    queue(oclient, "two")
    expect_send(httpserver, headers={"X-AircallApi-Remaining": "0", "X-AircallApi-Reset": str(int(time.time()) + 60)})
    ort.outbound.run_once()
    assert [r["body"] for r in send_requests(httpserver)] == ["one"]
    assert [m.state for m in outbox_rows(ort)] == [OUT_SENT, OUT_QUEUED]


def test_remaining_zero_holds_back_the_queued_sends_of_every_process(oclient, ort, httpserver):
    queue(oclient, "one")
    queue(oclient, "two")
    expect_send(httpserver, headers={"X-AircallApi-Remaining": "0", "X-AircallApi-Reset": str(int(time.time()) + 60)})
    [first] = Outbox(ort.store).claim("this-process", 60, limit=1)
    assert ort.outbound.process(first) == "sent"
    # Another process (its own client, which never saw the header) holds back too.
    assert ort.make().outbound.run_once() == 0
    assert [r["body"] for r in send_requests(httpserver)] == ["one"]


def test_503_is_retried(oclient, ort, httpserver):
    queue(oclient)
    expect_send(httpserver, {"error": "maintenance"}, status=503)
    expect_send(httpserver)
    ort.outbound.run_once()
    assert len(send_requests(httpserver)) == 2 and only_row(ort).state == OUT_SENT


def test_500_is_unknown_and_never_resent(oclient, ort, httpserver):
    queue(oclient)
    expect_send(httpserver, {"error": "oops"}, status=500)
    ort.outbound.run_once()
    row = only_row(ort)
    assert row.state == OUT_UNKNOWN and "500" in row.error
    ort.outbound.run_once()
    ort.outbound.sweep()
    assert len(send_requests(httpserver)) == 1


def test_timeout_is_unknown_and_never_resent(ort, httpserver):
    # Only this test uses a short read timeout: with it, a loopback answer slowed by a
    # loaded machine would turn an accepted send into "unknown" in every other test.
    rt = ort.make(aircall={"send_read_timeout": 0.2})
    queue(create_app(rt.config, rt).test_client())
    calls = []
    release = threading.Event()

    def slow(request):
        calls.append(json.loads(request.get_data()))
        release.wait(10)  # answers only after the sender gave up waiting
        return Response(json.dumps(aircall_message()), content_type="application/json")

    httpserver.expect_request(SEND_PATH, method="POST").respond_with_handler(slow)
    rt.outbound.run_once()
    row = only_row(rt)
    assert row.state == OUT_UNKNOWN and "may have been sent" in row.error
    rt.outbound.run_once()
    rt.outbound.sweep()
    release.set()
    deadline = time.time() + 10  # let the slow handler finish inside this test
    while not httpserver.log and time.time() < deadline:
        time.sleep(0.05)
    assert calls == [{"to": TO, "body": "hello"}]
    assert len(send_requests(httpserver)) == 1


def test_4xx_fails_without_retry(oclient, ort, httpserver):
    queue(oclient)
    expect_send(httpserver, {"error": "InvalidPayload"}, status=400)
    ort.outbound.run_once()
    row = only_row(ort)
    assert row.state == OUT_FAILED and "InvalidPayload" in row.error
    assert len(send_requests(httpserver)) == 1


def test_connection_refused_is_retried_later(oclient, ort):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    rt = ort.make(aircall={"api_base_url": f"http://127.0.0.1:{port}/v1", "send_max_attempts": 1})
    queue(create_app(rt.config, rt).test_client())
    rt.outbound.run_once()
    row = only_row(rt)
    assert row.state == OUT_QUEUED and row.error == "could not connect to Aircall"


def test_retries_give_up_as_failed_after_max_attempts(oclient, ort, httpserver):
    rt = ort.make(aircall={"send_max_attempts": 1}, worker={"max_attempts": 2, "backoff_initial": 0.01,
                                                            "backoff_max": 0.01})
    queue(create_app(rt.config, rt).test_client())
    for _ in range(2):
        expect_send(httpserver, {}, status=503)
    rt.outbound.run_once()
    time.sleep(0.05)
    rt.outbound.run_once()
    row = only_row(rt)
    assert row.state == OUT_FAILED and row.error.startswith("gave up after 2 attempts")


def test_worker_killed_mid_send_becomes_unknown_not_resent(oclient, ort, httpserver):
    queue(oclient)
    box = Outbox(ort.store)
    [m] = box.claim("dead-worker", lease_seconds=0.01)
    assert box.begin_send(m)  # ...and the process died here, maybe after the request went out
    time.sleep(0.02)
    assert box.sweep() == 1
    row = only_row(ort)
    assert row.state == OUT_UNKNOWN and "may or may not" in row.error
    assert ort.outbound.run_once() == 0 and send_requests(httpserver) == []


def test_unknown_send_is_reconciled_by_aircalls_webhook(oclient, ort, httpserver):
    queue(oclient, "Here is the brochure")
    expect_send(httpserver, {}, status=502)
    ort.outbound.run_once()
    assert only_row(ort).state == OUT_UNKNOWN
    hook = aircall_payload("message_sent")
    hook["data"].update(id="SMlate", raw_digits=TO.lstrip("+"), body="Here is the brochure",
                        created_at=int(time.time() * 1000))
    hook["data"]["number"]["digits"] = "+1 415-555-0100"
    other = json.loads(json.dumps(hook))
    other["data"].update(id="SMother", body="something else")
    for h in (other, hook):
        assert oclient.post("/webhooks/aircall", json=h).status_code == 200
    ort.outbound.sweep()
    row = only_row(ort)
    assert (row.state, row.provider_message_id) == (OUT_SENT, "SMlate")
    assert len(send_requests(httpserver)) == 1


def test_an_unknown_send_is_not_given_a_twin_s_message_whose_text_ends_in_a_newline(oclient, ort, httpserver):
    queue(oclient, "Your code is 1234", key="a")
    expect_send(httpserver, {}, status=502)
    ort.outbound.run_once()  # out_1: unknown (it may not have gone out)
    queue(oclient, "Your code is 1234\n", key="b")  # a template ending in a new line
    box = Outbox(ort.store)
    [m] = box.claim("w2", lease_seconds=120)
    assert box.begin_send(m)  # out_2 is being sent; Aircall's webhook for it comes first
    hook = aircall_payload("message_sent")
    hook["data"].update(id="SMb", raw_digits=TO.lstrip("+"), body="Your code is 1234\n",
                        created_at=int(time.time() * 1000))
    hook["data"]["number"]["digits"] = "+1 415-555-0100"
    assert oclient.post("/webhooks/aircall", json=hook).status_code == 200
    ort.outbound.sweep()
    box.mark_sent(m, "SMb", {"id": "SMb"}, None)
    rows = sorted(box.list(limit=10), key=lambda r: r.id)
    assert [(r.state, r.provider_message_id) for r in rows] == [(OUT_UNKNOWN, None), (OUT_SENT, "SMb")]


def test_a_failed_send_queued_again_by_the_operator_gets_its_attempts_afresh(ort, httpserver):
    rt = ort.make(aircall={"send_max_attempts": 1},
                  worker={"max_attempts": 2, "backoff_initial": 0.01, "backoff_max": 0.01})
    queue(create_app(rt.config, rt).test_client())
    for _ in range(2):  # an Aircall outage: the send gives up
        expect_send(httpserver, {}, status=503)
        time.sleep(0.02)
        rt.outbound.run_once()
    row = only_row(rt)
    assert row.state == OUT_FAILED and row.attempts == 2
    assert Outbox(rt.store).resolve(row.id, OUT_QUEUED)  # the operator: send it again
    assert (only_row(rt).attempts, only_row(rt).error) == (0, None)
    expect_send(httpserver, {}, status=503)  # one more hiccup: Aircall surely did not take it
    rt.outbound.run_once()
    assert only_row(rt).state == OUT_QUEUED
    expect_send(httpserver)
    time.sleep(0.02)
    rt.outbound.run_once()
    assert only_row(rt).state == OUT_SENT and len(send_requests(httpserver)) == 4


def test_operator_resolves_an_unknown_send(oclient, ort, httpserver):
    queue(oclient)
    expect_send(httpserver, {}, status=500)
    ort.outbound.run_once()
    box = Outbox(ort.store)
    row = only_row(ort)
    assert box.resolve(row.id, OUT_QUEUED)  # the operator checked Aircall: it did not go out
    expect_send(httpserver)
    ort.outbound.run_once()
    assert only_row(ort).state == OUT_SENT and len(send_requests(httpserver)) == 2
    assert not box.resolve(row.id, OUT_QUEUED)  # a sent message cannot be queued again


def test_worker_threads_send_queued_messages(oclient, ort, httpserver):
    for i in range(5):
        queue(oclient, f"m{i}")
    for i in range(5):
        httpserver.expect_request(SEND_PATH, method="POST", json={"to": TO, "body": f"m{i}"}) \
            .respond_with_json(aircall_message(f"SM{i}", text=f"m{i}"))
    w = ort.worker()
    w.start()
    try:
        deadline = time.time() + 10
        while time.time() < deadline and any(m.state != OUT_SENT for m in outbox_rows(ort)):
            time.sleep(0.05)
    finally:
        w.stop()
    assert [m.state for m in outbox_rows(ort)] == [OUT_SENT] * 5
    assert sorted(r["body"] for r in send_requests(httpserver)) == [f"m{i}" for i in range(5)]


def test_an_answer_that_cannot_be_logged_still_counts_as_sent(oclient, ort, httpserver):
    queue(oclient)
    expect_send(httpserver, {"id": "x" * 201, "status": "pending"})  # too long to be a message id
    ort.outbound.run_once()
    row = only_row(ort)
    assert row.state == OUT_SENT and ort.store.list_events() == []
    assert ort.outbound.run_once() == 0 and len(send_requests(httpserver)) == 1


def sent_hook(msg_id: str, text: str) -> dict:
    """Aircall's message.sent webhook for a message on our line to TO, sent now."""
    h = aircall_payload("message_sent")
    h["data"].update(id=msg_id, raw_digits=TO.lstrip("+"), body=text, created_at=int(time.time() * 1000))
    h["data"]["number"]["digits"] = "+1 415-555-0100"
    return h


def test_an_unknown_send_attempted_long_after_it_was_queued_is_still_reconciled(oclient, ort, httpserver):
    from sqlalchemy import update

    from connector.store import outbox
    queue(oclient, "Here is the brochure")
    with ort.store.write() as conn:  # it waited 20 minutes (backoff, holds, a backlog)
        conn.execute(update(outbox).values(created_at=time.time() - 1200, next_at=0))
    expect_send(httpserver, {}, status=502)
    ort.outbound.run_once()
    assert only_row(ort).state == OUT_UNKNOWN
    assert oclient.post("/webhooks/aircall", json=sent_hook("SMlate", "Here is the brochure")).status_code == 200
    ort.outbound.sweep()
    assert (only_row(ort).state, only_row(ort).provider_message_id) == (OUT_SENT, "SMlate")


def test_a_message_being_sent_is_never_taken_by_an_unknown_twin(oclient, ort, httpserver):
    queue(oclient, "Your code is 1234", key="a")
    expect_send(httpserver, {}, status=502)
    ort.outbound.run_once()  # out_1: unknown (in this story it did not go out)
    queue(oclient, "Your code is 1234", key="b")
    box = Outbox(ort.store)
    [m] = box.claim("w2", lease_seconds=120)
    assert box.begin_send(m)  # out_2 is being sent; Aircall took it as SMb, and its webhook
    assert oclient.post("/webhooks/aircall", json=sent_hook("SMb", "Your code is 1234")).status_code == 200
    ort.outbound.sweep()  # arrives before the HTTP answer
    box.mark_sent(m, "SMb", {"id": "SMb"}, None)
    rows = sorted(box.list(limit=10), key=lambda r: r.id)
    assert [(r.state, r.provider_message_id) for r in rows] == [(OUT_UNKNOWN, None), (OUT_SENT, "SMb")]


def test_two_unknown_twins_and_one_message_are_left_to_the_operator(oclient, ort, httpserver):
    for key in ("a", "b"):
        queue(oclient, "Your code is 1234", key=key)
        expect_send(httpserver, {}, status=502)
        ort.outbound.run_once()
    assert oclient.post("/webhooks/aircall", json=sent_hook("SMone", "Your code is 1234")).status_code == 200
    ort.outbound.sweep()
    # Only one went out, and nothing says which: neither is marked sent.
    assert [r.state for r in Outbox(ort.store).list(limit=10)] == [OUT_UNKNOWN, OUT_UNKNOWN]
