"""``mms-connector send`` and ``mms-connector outbox``: outbound MMS for admins."""
from __future__ import annotations

import json
import sys
import time
import uuid

import click

config_option = click.option(
    "--config", "config_path", default=None, metavar="FILE",
    help="Config file (default: config.yaml, then config.example.yaml).")


def _load(config_path):
    from .cli import _load as load  # late: connector.cli imports this module
    return load(config_path)


def _print_validation(v: dict) -> None:
    for a in v.get("attachments", []):
        where = f"attachment {a['index'] + 1} {a['source']}"
        if a["ok"]:
            click.echo(f"  {where}: ok ({a['format']}, {a['size']} bytes)")
        else:
            detail = f" ({a['detail']})" if a.get("detail") else ""
            click.echo(f"  {where}: removed: {a['error']}{detail}")
    for e in v.get("errors", []):
        click.echo(f"  error: {e}")


@click.command()
@config_option
@click.option("--from", "line", default="", help="Sending line, E.164 (default: outbound.default_line).")
@click.option("--to", "to", required=True, help="Recipient number.")
@click.option("--text", default="", help="Message text.")
@click.option("--attach", "attachments", multiple=True, metavar="PATH_OR_URL",
              help="Attachment: an https URL, or a local file (validated only: Aircall fetches media by URL).")
@click.option("--policy", type=click.Choice(["partial", "strict"]), default=None,
              help="Invalid attachments: remove them (partial) or send nothing (strict); default outbound.policy.")
@click.option("--validate-only", is_flag=True, help="Check the rules and print the result; send nothing.")
@click.option("--queue-only", is_flag=True, help="Queue for the workers instead of sending from this process.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def send(config_path, line, to, text, attachments, policy, validate_only, queue_only, as_json):
    """Validate and send one MMS (or SMS) through Aircall, printing the validation result.

    Exit status: 0 sent/queued (or valid with --validate-only), 1 validation failed or the
    send failed, 2 config error."""
    from . import mms
    from .fetch import FetchPolicy
    from .outbox import OUT_QUEUED, OUT_SENDING, Outbox, request_hash
    from .phones import to_e164
    from .pipeline.outbound import prepare
    from .runtime import Runtime

    cfg = _load(config_path)
    sources = list(attachments)
    fetch_policy = FetchPolicy.from_config(cfg.fetch)
    line_e164 = (to_e164(line) or line) if line else cfg.outbound.default_line
    profile = mms.profile_for(cfg.outbound, line_e164)
    loaded = mms.load(sources, profile, fetch_policy, allow_files=True)
    v = mms.validate(cfg.outbound, line_e164, to, text, loaded, policy)
    result = {"validation": v.to_dict()}
    local = [s for s in v.media if "://" not in s]
    if v.ok and local and not validate_only:
        v.ok = False
        result["validation"]["ok"] = False
        result["validation"]["errors"].append(
            f"{local[0]} is a local file: Aircall fetches media by URL, so pass a URL to send it "
            "(use --validate-only to check files)")
    if not v.ok or validate_only:
        result["state"] = "valid" if v.ok else "rejected"
        _finish(result, as_json, ok=v.ok)
        return
    rt = Runtime(cfg)
    box = Outbox(rt.store)
    item, _ = prepare(cfg, source="cli", idem_key=f"cli:{uuid.uuid4().hex}", line=line_e164, to=to,
                      text=text, media=sources, policy=policy, check_bytes=False,
                      fetch_policy=fetch_policy, request_hash=request_hash([line_e164, to, text, sources]))
    item.update(validated=True, validation=result["validation"])
    row, _ = box.enqueue([item])[0]
    if not queue_only:
        deadline = time.time() + 120
        while time.time() < deadline:
            rt.outbound.run_once()
            row = box.get(row.id)
            # Done, or parked after Aircall surely refused it (429, 503, no connection): the
            # workers retry it when it is due; waiting here would only hold the terminal.
            if row.state not in (OUT_QUEUED, OUT_SENDING) or (row.state == OUT_QUEUED and row.error):
                break
            time.sleep(0.5)
    result.update(row.to_dict())
    _finish(result, as_json, ok=row.state in ("queued", "sent"))


def _finish(result: dict, as_json: bool, ok: bool) -> None:
    if as_json:
        click.echo(json.dumps(result, indent=2))
    else:
        v = result["validation"]
        click.echo(f"validation ({v['policy']}): {'ok' if v['ok'] else 'failed'}")
        _print_validation(v)
        if "id" in result:
            extra = f", Aircall message {result['provider_message_id']}" if result.get("provider_message_id") else ""
            err = f": {result['error']}" if result.get("error") else ""
            click.echo(f"{result['id']}: {result['state']}{extra}{err}")
            if result["state"] == "queued" and result.get("error"):
                click.echo("  not sent yet: a worker (serve or mms-connector worker) retries it; "
                           "see mms-connector outbox list")
    sys.exit(0 if ok else 1)


@click.group("outbox")
def outbox_group():
    """Outbound sends: list them, resolve the ones whose fate is unknown."""


@outbox_group.command("list")
@config_option
@click.option("--state", type=click.Choice(["queued", "sending", "sent", "unknown", "failed", "rejected"]))
@click.option("--limit", default=50, show_default=True, type=click.IntRange(min=1))
@click.option("--json", "as_json", is_flag=True)
def outbox_list(config_path, state, limit, as_json):
    """Outbound sends, newest first."""
    from .outbox import Outbox
    from .runtime import Runtime

    rows = Outbox(Runtime(_load(config_path)).store).list(state=state, limit=limit)
    if as_json:
        click.echo(json.dumps([dict(r.to_dict(), callback=r.callback) for r in rows], indent=2))
        return
    if not rows:
        click.echo("no outbound messages")
    for r in rows:
        action = f"  callback {r.callback}" if r.callback else ""  # a HubSpot workflow action waiting or completed
        click.echo(f"{r.public_id:<8} {r.state:<9} {r.source:<10} {r.line} -> {r.recipient}  "
                   f"{len(r.media)} media  {r.provider_message_id or '-'}{action}  {r.error or ''}".rstrip())


@outbox_group.command("resolve")
@config_option
@click.argument("message_id")
@click.option("--sent", "decision", flag_value="sent", help="It went out (optionally --aircall-id).")
@click.option("--failed", "decision", flag_value="failed", help="It did not go out; do not send it.")
@click.option("--resend", "decision", flag_value="queued", help="It did not go out; send it again.")
@click.option("--aircall-id", default=None, help="Aircall's message id, with --sent.")
def outbox_resolve(config_path, message_id, decision, aircall_id):
    """Decide the fate of an `unknown` (or `failed`) send after checking Aircall."""
    from .outbox import OutboundMessage, Outbox
    from .runtime import Runtime

    if not decision:
        raise click.UsageError("choose one of --sent, --failed, --resend")
    row_id = OutboundMessage.row_id(message_id)
    if row_id is None:
        raise click.BadParameter("use the id `outbox list` shows, e.g. out_12", param_hint="MESSAGE_ID")
    box = Outbox(Runtime(_load(config_path)).store)
    if not box.resolve(row_id, decision, aircall_id):
        click.echo(f"{message_id}: not found, or not in state unknown/failed", err=True)
        sys.exit(1)
    click.echo(f"{message_id}: {decision}")
