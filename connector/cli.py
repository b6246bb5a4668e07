"""The ``mms-connector`` command line."""
from __future__ import annotations

import json
import sys

import click

from .config import ConfigError, find_config_file, load_config

config_option = click.option(
    "--config", "config_path", default=None, metavar="FILE",
    help="Config file (default: config.yaml, then config.example.yaml).")
# Row ids are INTEGER columns (int4 on PostgreSQL): a larger one is a usage error, not a
# database error; a negative limit likewise.
DELIVERY_ID = click.IntRange(1, 2**31 - 1)
LIMIT = click.IntRange(min=1)


def _load(config_path: str | None):
    try:
        return load_config(find_config_file(config_path))
    except ConfigError as exc:
        click.echo(f"Config {exc.path or ''} is not valid:", err=True)
        for e in exc.errors:
            click.echo(f"  {e}", err=True)
        sys.exit(2)


@click.group()
def main() -> None:
    """Log Aircall MMS/SMS into HubSpot and Salesforce; send MMS from the CRM."""


@main.command()
@config_option
@click.option("--host", default=None, help="Listen address (default: server.host).")
@click.option("--port", default=None, type=click.IntRange(0, 65535),
              help="Listen port (default: server.port; 0: any free port).")
@click.option("--no-worker", is_flag=True, help="Serve webhooks only; run workers separately.")
def serve(config_path, host, port, no_worker):
    """Run the web app and (unless --no-worker) a worker in one process."""
    from waitress import create_server

    from .runtime import Runtime, freeze_startup_heap, setup_logging
    from .web import create_app

    cfg = _load(config_path)
    setup_logging(cfg)
    rt = Runtime(cfg)
    app = create_app(cfg, rt)
    host = host or cfg.server.host
    port = cfg.server.port if port is None else port
    try:
        # outbuf_high_watermark: a streamed response (a "Download all" zip) is buffered at most
        # 1 MB ahead of the client per connection, not waitress's default 16 MB.
        server = create_server(app, host=host, port=port, threads=cfg.server.threads,
                               ident="mms-connector", outbuf_high_watermark=1024 * 1024)
    except (OSError, ValueError) as exc:  # ValueError: an address that is no address
        click.echo(f"cannot listen on {host}:{port}: {getattr(exc, 'strerror', None) or exc} "
                   "(another process may be using it; pick another with --port or server.port)", err=True)
        sys.exit(1)
    port = getattr(server, "effective_port", port)  # the one chosen for --port 0
    worker = None
    if not no_worker:
        # Worker threads share the GIL with request threads: hand it over more often so a
        # rendering worker cannot hold a webhook's acknowledgement for a whole 5 ms slice.
        sys.setswitchinterval(0.0005)
        worker = rt.worker()
        worker.start()
    freeze_startup_heap()
    click.echo(f"mms-connector listening on http://{host}:{port} (config {cfg.source}, "
               f"targets: {', '.join(f'{t}={getattr(cfg, t).mode}' for t in cfg.targets()) or 'none'})")
    try:
        server.run()
    finally:
        if worker:
            worker.stop()


@main.command()
@config_option
@click.option("--metrics-port", default=None, type=click.IntRange(1, 65535),
              help="Serve this worker's Prometheus metrics on server.host:PORT/metrics.")
def worker(config_path, metrics_port):
    """Run workers only (scaled-out mode: any number of these, on any machine)."""
    import signal
    import threading

    from .runtime import Runtime, setup_logging

    cfg = _load(config_path)
    setup_logging(cfg)
    rt = Runtime(cfg)
    w = rt.worker()
    if metrics_port is not None:
        from prometheus_client import start_http_server
        try:
            start_http_server(metrics_port, addr=cfg.server.host, registry=rt.metrics.registry)
        except OSError as exc:
            click.echo(f"cannot listen on {cfg.server.host}:{metrics_port}: {exc.strerror or exc} "
                       "(another process may be using it; pick another --metrics-port)", err=True)
            sys.exit(1)
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    w.start()
    click.echo(f"mms-connector worker running ({cfg.worker.threads} threads, store {cfg.store.url.split('://')[0]})")
    done.wait()
    w.stop()


@main.group()
def db() -> None:
    """Database schema (Alembic migrations); serve and worker upgrade on their own."""


@db.command("upgrade")
@config_option
def db_upgrade(config_path):
    """Create or upgrade the store's schema to the newest migration."""
    from . import migrations
    from .runtime import store_url
    from .store import Store

    cfg = _load(config_path)
    store = Store(store_url(cfg))
    before = migrations.current(store.engine)
    store.create_schema()
    after = migrations.current(store.engine)
    click.echo(f"store {_safe_url(store.engine)}: "
               + (f"upgraded {', '.join(sorted(before)) or '(empty)'} -> {', '.join(sorted(after))}"
                  if before != after else f"already at {', '.join(sorted(after))}"))


@db.command("current")
@config_option
def db_current(config_path):
    """Print the store's migration revision, and whether it is the newest."""
    from . import migrations
    from .runtime import store_url
    from .store import Store

    store = Store(store_url(_load(config_path)))
    cur, heads = migrations.current(store.engine), migrations.heads()
    click.echo(f"{', '.join(sorted(cur)) or '(empty)'}"
               + ("" if cur == heads else f" (newest: {', '.join(sorted(heads))}; run `mms-connector db upgrade`)"))
    sys.exit(0 if cur == heads else 1)


@db.command("revision")
@click.option("-m", "--message", required=True, help="What the schema change does.")
@click.option("--empty", is_flag=True, help="Write one even with no table change (a data migration, by hand).")
def db_revision(message, empty):
    """(Developers) write a migration for tables/columns added to connector/store.py."""
    from . import migrations

    written = migrations.revision(message, empty=empty)
    click.echo(written or "no change to the tables in connector/store.py: no migration written "
                          "(--empty writes one to fill in by hand)")


def _safe_url(engine) -> str:
    return engine.url.render_as_string(hide_password=True)


@main.command()
@config_option
@click.option("--crm", default=None, type=click.Choice(["hubspot", "salesforce"]),
              help="With --mapping: which CRM the file is for.")
@click.option("--mapping", "mapping_path", default=None, metavar="FILE",
              help="Check this mapping file (a draft, or one for a CRM that is off) instead of the config's.")
def check(config_path, crm, mapping_path):
    """Validate the config file and the mapping files it names.

    Mapping errors print as FILE:LINE:COLUMN: message (with a hint where one helps).
    """
    from .mapping import Mapping, MappingError

    cfg = _load(config_path)
    if mapping_path and not crm:
        raise click.UsageError("--mapping needs --crm hubspot or --crm salesforce")
    files = ([(crm, mapping_path)] if mapping_path else
             [(name, cfg.resolve(getattr(cfg, name).mapping)) for name in ([crm] if crm else cfg.targets())])
    errors: list[str] = []
    for name, path in files:
        try:
            mapping = Mapping.load(path, name, cfg.time_zone)
        except MappingError as exc:
            errors.extend(exc.errors)
            for w in exc.warnings:
                click.echo(w, err=True)
        else:
            for w in mapping.warnings:
                click.echo(w, err=True)
            click.echo(f"{mapping.path}: OK ({name}, {mapping.object})")
    for w in cfg.warnings():
        click.echo(f"warning: {w}", err=True)
    if errors:
        for e in errors:
            click.echo(e, err=True)
        click.echo(f"{len(errors)} error(s) in mapping files", err=True)
        sys.exit(1)
    click.echo(f"{cfg.source}: OK (targets: {', '.join(cfg.targets()) or 'none'})")


@main.command()
@config_option
@click.option("--crm", required=True, type=click.Choice(["hubspot", "salesforce"]), help="Which CRM's request to show.")
@click.option("--mapping", "mapping_path", default=None, metavar="FILE",
              help="Mapping file to try (default: the one the config names).")
@click.option("--operation", default="auto", show_default=True, type=click.Choice(["auto", "create", "update"]),
              help="auto: a status event updates the entry its message created; other events create one.")
@click.argument("event_file", metavar="EVENT.json", type=click.Path(dir_okay=False, allow_dash=True))
def preview(config_path, crm, mapping_path, operation, event_file):
    """Print, as JSON, the request(s) the CRM would receive for a raw webhook payload.

    Record ids that a live lookup would fill in show as placeholders ({contact_id}).
    """
    from .crm.base import DeliveryContext
    from .events import KIND_STATUS
    from .mapping import Mapping, MappingError
    from .pipeline.writers import RENDERERS
    from .providers import aircall
    from .render import preview_media_views

    cfg = _load(config_path)
    try:
        text = click.open_file(event_file, encoding="utf-8").read()
    except OSError as exc:
        raise click.BadParameter(f"cannot read {event_file} ({exc.strerror or exc})", param_hint="EVENT.json")
    except UnicodeDecodeError as exc:
        click.echo(f"{event_file}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start}); "
                   "save the file as UTF-8", err=True)
        sys.exit(2)
    try:
        body = json.loads(text)
    except json.JSONDecodeError as exc:
        click.echo(f"{event_file}:{exc.lineno}:{exc.colno}: invalid JSON: {exc.msg}", err=True)
        sys.exit(2)
    try:
        event = aircall.parse(body)  # no token check: the file is the admin's own sample
    except aircall.PayloadError as exc:
        click.echo(f"{event_file}: {exc.field}: {exc.reason}", err=True)
        sys.exit(2)
    except aircall.Ignored as exc:
        click.echo(f"{event_file}: {exc.event}: {exc.reason}; the CRM receives nothing", err=True)
        click.echo("[]")
        return
    path = mapping_path or cfg.resolve(getattr(cfg, crm).mapping)
    try:
        mapping = Mapping.load(path, crm, cfg.time_zone)
    except MappingError as exc:
        for e in [*exc.errors, *exc.warnings]:
            click.echo(e, err=True)
        sys.exit(1)
    if operation == "auto":
        operation = "update" if event.kind == KIND_STATUS else "create"
    renderer, _ = RENDERERS[crm]
    views, download_all = preview_media_views(event, cfg.server.public_base_url)
    ctx = DeliveryContext(store=None, config=cfg, media=views, download_all_link=download_all)
    try:
        requests = renderer(event, ctx, operation, mapping)
    except MappingError as exc:
        for e in exc.errors:
            click.echo(e, err=True)
        sys.exit(1)
    click.echo(json.dumps(requests if isinstance(requests, list) else [requests], indent=2,
                          ensure_ascii=False, default=str))


def _parse_since(value: str | None) -> float | None:
    if not value:
        return None
    from .events import parse_timestamp
    dt = parse_timestamp(value)
    if dt is None:
        raise click.BadParameter("use ISO 8601 (2026-11-26T10:00:00Z) or epoch seconds", param_hint="--since")
    return dt.timestamp()


@main.command()
@config_option
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
@click.option("--limit", default=50, show_default=True, type=LIMIT, help="How many events, newest first.")
@click.option("--state", default=None, type=click.Choice(["pending", "retrying", "delivered", "dry-run", "dead", "skipped"]))
@click.option("--crm", default=None, type=click.Choice(["hubspot", "salesforce"]))
@click.option("--since", default=None, help="Only events received at or after this time.")
@click.option("--number", default=None, help="Only events with this external number (any format).")
def events(config_path, as_json, limit, state, crm, since, number):
    """List stored message events, newest first, with each CRM's delivery state."""
    from .phones import to_e164
    from .store import Store

    cfg = _load(config_path)
    from .runtime import Runtime
    store: Store = Runtime(cfg).store
    if number:
        number = to_e164(number) or number
    rows = store.list_events(limit=limit, state=state, target=crm, since=_parse_since(since), number=number)
    if as_json:
        click.echo(json.dumps(rows, indent=2, default=str))
        return
    if not rows:
        click.echo("no events")
        return
    for r in rows:
        targets = " ".join(f"{k}={v['state']}" for k, v in sorted(r["targets"].items()))
        click.echo(f"{r['received_at']}  {r['event']:<24} {r['direction']:<8} {r['status']:<9} "
                   f"{r['external_number']:<16} {r['message_id']}  {targets}")



def _store(config_path):
    from .runtime import Runtime
    return Runtime(_load(config_path)).store


def _hide_token(payload):
    """Stored payloads carry the provider's shared token: never print it."""
    if isinstance(payload, dict) and "token" in payload:
        return {**payload, "token": "[redacted]"}
    return payload


@main.group("dead-letters")
def dead_letters():
    """List, inspect and replay deliveries that failed for good."""


@dead_letters.command("list")
@config_option
@click.option("--crm", default=None, type=click.Choice(["hubspot", "salesforce"]))
@click.option("--limit", default=100, show_default=True, type=LIMIT)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
def dead_letters_list(config_path, crm, limit, as_json):
    """Dead letters, oldest first: delivery id, CRM, message, attempts, reason."""
    rows = _store(config_path).dead_letters(limit=limit, target=crm)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("no dead letters")
        return
    for r in rows:
        click.echo(f"{r['id']:>6}  {r['target']:<10} {r['updated_at']}  {r['event']:<22} "
                   f"{r['message_id']}  attempts={r['attempts']}  {r['error'] or ''}")


@dead_letters.command("show")
@config_option
@click.argument("delivery_id", type=DELIVERY_ID)
def dead_letters_show(config_path, delivery_id):
    """One delivery in full: state, reason, the stored webhook, what was rendered."""
    from .logs import Redactor, config_secrets
    from .runtime import Runtime
    cfg = _load(config_path)
    row = Runtime(cfg).store.get_delivery(delivery_id)
    if row is None:
        click.echo(f"no delivery {delivery_id}", err=True)
        sys.exit(1)
    row["payload"] = _hide_token(row["payload"])
    # As the logs: no secret, no presigned URL's signature, no signed media token.
    click.echo(Redactor(config_secrets(cfg))(json.dumps(row, indent=2, ensure_ascii=False)))


@dead_letters.command("replay")
@config_option
@click.argument("delivery_id", type=DELIVERY_ID, required=False)
@click.option("--all", "replay_all", is_flag=True, help="Replay every dead letter.")
@click.option("--crm", default=None, type=click.Choice(["hubspot", "salesforce"]),
              help="With --all: only this CRM's dead letters.")
def dead_letters_replay(config_path, delivery_id, replay_all, crm):
    """Make a dead letter due again (attempts reset, reason cleared).

    Idempotent: a delivery that is not dead (delivered, pending, ...) is left alone, and
    writers update the CRM entry they made before, so a replay never adds a second one.
    """
    if replay_all == (delivery_id is not None):
        raise click.UsageError("give one delivery id, or --all")
    store = _store(config_path)
    if delivery_id is not None:
        result = store.replay(delivery_id)
        if result is None:
            click.echo(f"no delivery {delivery_id}", err=True)
            sys.exit(1)
        if result == "replayed":
            click.echo(f"delivery {delivery_id}: replayed, pending again")
        else:
            click.echo(f"delivery {delivery_id} is {result}, not a dead letter: nothing to replay")
        return
    from tqdm import tqdm

    ids = store.dead_letter_ids(target=crm)
    replayed = 0
    for i in tqdm(ids, desc="replaying", unit="delivery", file=sys.stderr, disable=None):
        replayed += store.replay(i) == "replayed"
    click.echo(f"replayed {replayed} dead letter(s)" + (f" ({len(ids) - replayed} changed meanwhile)"
                                                       if replayed < len(ids) else ""))

from .cli_outbound import outbox_group, send  # noqa: E402  (they use the helpers above)

main.add_command(send)
main.add_command(outbox_group)

from .media.commands import media as _media_commands  # noqa: E402  (the `media` group)

main.add_command(_media_commands)


if __name__ == "__main__":
    main()
