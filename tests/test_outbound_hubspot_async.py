"""outbound.hubspot.complete_async: a queued send is answered BLOCK, and the workflow action
is completed through HubSpot's callbacks API once the send has an outcome."""
from __future__ import annotations

import json

import pytest
import yaml
from werkzeug import Response

from connector.config import ConfigError, load_config
from connector.outbox import CALLBACK_DONE, CALLBACK_DUE, CALLBACK_FAILED, OUT_FAILED, OUT_REJECTED, OUT_SENT
from connector.web import create_app
from tests.conftest import base_config
from tests.outbound_support import (HS_SECRET, expect_send, ort, outbound_sections, outbox_rows,  # noqa: F401
                                     serve_media)
from tests.test_outbound_hubspot import action_body, post, v3_headers

CALLBACK = "ap-102670506-56777914962-11-0"
COMPLETE = f"/automation/v4/actions/callbacks/{CALLBACK}/complete"


def async_sections(httpserver) -> dict:
    return dict(outbound={"hubspot": {"client_secret": HS_SECRET, "complete_async": True}},
                hubspot={"base_url": httpserver.url_for("").rstrip("/"), "access_token": "pat-test", "retries": 1})


@pytest.fixture
def arun(ort, httpserver):
    """(runtime, client) with complete_async on and HubSpot's API on the fake server."""
    rt = ort.make(**async_sections(httpserver))
    return rt, create_app(rt.config, rt).test_client()


def answer_completion(httpserver, status: int = 204, body: dict | None = None) -> None:
    httpserver.expect_oneshot_request(COMPLETE, method="POST").respond_with_response(
        Response(json.dumps(body) if body else "", status=status, content_type="application/json"))


def completions(httpserver) -> list[tuple[dict, str]]:
    return [(json.loads(r.get_data()), r.headers.get("Authorization"))
            for r, _ in httpserver.log if r.path == COMPLETE]


def sent_with_completion_owed(arun, httpserver):
    """A BLOCKed action whose send went out but whose completion HubSpot answered 503."""
    rt, client = arun
    post(client, action_body(), v3_headers)
    expect_send(httpserver)
    answer_completion(httpserver, 503, {"status": "error", "message": "unavailable", "category": "INTERNAL_ERROR"})
    rt.outbound.run_once()
    return rt


def test_queued_send_blocks_and_is_completed_with_success_once_sent(arun, httpserver):
    rt, client = arun
    r = post(client, action_body(), v3_headers)
    assert r.status_code == 200
    assert r.json["outputFields"]["hs_execution_state"] == "BLOCK"
    assert r.json["outputFields"]["state"] == "queued"
    [row] = outbox_rows(rt)
    assert row.callback == CALLBACK_DUE

    expect_send(httpserver)
    answer_completion(httpserver)
    assert rt.outbound.run_once() == 1
    assert completions(httpserver) == [(
        {"outputFields": {"hs_execution_state": "SUCCESS", "message_id": "out_1", "state": "sent",
                          "error": "", "removed_attachments": ""}}, "Bearer pat-test")]
    [row] = outbox_rows(rt)
    assert (row.state, row.callback) == (OUT_SENT, CALLBACK_DONE)
    # HubSpot asking again (its retry of the action request) gets the outcome at once.
    again = post(client, action_body(), v3_headers)
    assert again.json["outputFields"]["hs_execution_state"] == "SUCCESS"
    assert again.json["outputFields"]["state"] == "sent"
    assert rt.outbound.sweep() == 0 and len(completions(httpserver)) == 1


def test_outbox_list_shows_the_workflow_actions_callback(arun, httpserver, tmp_path):
    from click.testing import CliRunner

    from connector.cli import main
    rt, client = arun
    post(client, action_body(), v3_headers)
    config = tmp_path / "config.yaml"  # the runtime's own config, as a file
    config.write_text(yaml.safe_dump(base_config(tmp_path, **outbound_sections(httpserver, **async_sections(httpserver)))))
    listed = CliRunner().invoke(main, ["outbox", "list", "--config", str(config)], catch_exceptions=False).output
    assert listed.split() == ["out_1", "queued", "hubspot", "+14155550100", "->", "+14155550142", "0", "media",
                              "-", "callback", "due"]
    as_json = CliRunner().invoke(main, ["outbox", "list", "--json", "--config", str(config)]).output
    assert json.loads(as_json)[0]["callback"] == "due"


def test_send_aircall_refuses_completes_with_fail_continue_and_the_reason(arun, httpserver):
    rt, client = arun
    post(client, action_body(), v3_headers)
    expect_send(httpserver, {"error": "Bad request", "troubleshoot": "The number is not valid"}, status=400)
    answer_completion(httpserver)
    rt.outbound.run_once()
    [row] = outbox_rows(rt)
    assert row.state == OUT_FAILED and row.error
    [(body, _)] = completions(httpserver)
    assert body["outputFields"]["hs_execution_state"] == "FAIL_CONTINUE"
    assert body["outputFields"]["state"] == "failed"
    assert body["outputFields"]["error"] == row.error
    assert outbox_rows(rt)[0].callback == CALLBACK_DONE
    # Asked again, the action gets the same outcome at once.
    again = post(client, action_body(), v3_headers).json["outputFields"]
    assert (again["hs_execution_state"], again["error"]) == ("FAIL_CONTINUE", row.error)


def test_completion_hubspot_cannot_take_now_is_retried_at_the_next_sweep(arun, httpserver):
    rt = sent_with_completion_owed(arun, httpserver)
    assert len(completions(httpserver)) == 1
    assert outbox_rows(rt)[0].callback == CALLBACK_DUE  # still owed
    answer_completion(httpserver)
    assert rt.outbound.sweep() == 1
    assert [b["outputFields"]["hs_execution_state"] for b, _ in completions(httpserver)] == ["SUCCESS", "SUCCESS"]
    assert outbox_rows(rt)[0].callback == CALLBACK_DONE


def test_completions_wait_while_the_portal_s_daily_limit_stops_the_writer(ort, httpserver):
    # One portal, one budget: the live writer's client completes the actions, so after
    # HubSpot's DAILY 429 to a write nothing else of this process calls HubSpot either.
    sections = async_sections(httpserver)
    sections["hubspot"]["mode"] = "live"
    rt = ort.make(**sections)
    client = create_app(rt.config, rt).test_client()
    writer_api = rt.pipeline.writers["hubspot"].api
    writer_api.daily_blocked_until = writer_api.clock() + 3600  # as after a DAILY 429
    post(client, action_body(), v3_headers)
    expect_send(httpserver)
    assert rt.outbound.run_once() == 1

    assert completions(httpserver) == []
    [row] = outbox_rows(rt)
    assert (row.state, row.callback) == (OUT_SENT, CALLBACK_DUE)  # owed until the block ends
    writer_api.daily_blocked_until = 0
    answer_completion(httpserver)
    assert rt.outbound.sweep() == 1 and len(completions(httpserver)) == 1


def test_completion_hubspot_refuses_is_given_up_not_retried(arun, httpserver):
    rt, client = arun
    post(client, action_body(), v3_headers)
    expect_send(httpserver)
    answer_completion(httpserver, 400, {"status": "error", "message": "callback has expired",
                                        "category": "VALIDATION_ERROR"})
    rt.outbound.run_once()
    assert outbox_rows(rt)[0].callback == CALLBACK_FAILED
    assert rt.outbound.sweep() == 0 and len(completions(httpserver)) == 1


def test_rejected_request_answers_fail_continue_at_once_and_owes_nothing(arun, httpserver):
    rt, client = arun
    media = serve_media(httpserver, "photo.png", "png", 100)
    r = post(client, action_body(to="+33612345678", media_urls=media), v3_headers)  # MMS to France
    out = r.json["outputFields"]
    assert (out["hs_execution_state"], out["state"]) == ("FAIL_CONTINUE", OUT_REJECTED)
    assert out["error"] == ("MMS is available only for numbers in the US, Canada, and Australia, "
                            "so the recipient must be located in one of these countries")
    [row] = outbox_rows(rt)
    assert row.callback is None
    rt.outbound.run_once()
    rt.outbound.sweep()
    assert completions(httpserver) == []


def test_without_the_option_the_answer_does_not_block(ort, httpserver):
    client = create_app(ort.config, ort).test_client()
    assert post(client, action_body(), v3_headers).json["outputFields"]["hs_execution_state"] == "SUCCESS"
    assert outbox_rows(ort)[0].callback is None


def test_the_option_needs_hubspot_credentials(tmp_path, httpserver):
    data = base_config(tmp_path, **outbound_sections(
        httpserver, outbound={"hubspot": {"client_secret": HS_SECRET, "complete_async": True}}))
    data["hubspot"] = {"mode": "dry-run"}
    with pytest.raises(ConfigError) as err:
        load_config(data=data)
    assert any(e.startswith("(top level): outbound.hubspot.complete_async: completing workflow actions needs "
                            "hubspot.access_token") for e in err.value.errors), err.value.errors


def test_one_worker_completes_each_action_and_a_vanished_ones_claim_is_taken_over(arun, httpserver):
    import time

    from connector.outbox import Outbox
    rt = sent_with_completion_owed(arun, httpserver)
    [row] = outbox_rows(rt)
    assert row.callback == CALLBACK_DUE
    # Another worker claims the completion (and, say, is killed before it calls HubSpot).
    other = Outbox(rt.store)
    assert other.take_callback(row) is True
    assert other.take_callback(row) is False
    assert rt.outbound.complete_actions() == 0 and len(completions(httpserver)) == 1
    # Its claim runs out; the next sweep completes the action.
    lease = rt.config.worker.lease_seconds  # as the sender's sweep passes it
    assert other.sweep(now=time.time() + lease + 1, stale_after=lease) == 0
    answer_completion(httpserver)
    assert rt.outbound.complete_actions() == 1
    assert len(completions(httpserver)) == 2 and outbox_rows(rt)[0].callback == CALLBACK_DONE
