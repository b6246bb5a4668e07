"""``mms-connector media ...``: download a message's attachments, purge expired files."""
from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import click
from tqdm import tqdm

from ..store import MEDIA_TOO_LARGE, MEDIA_UNSUPPORTED
from .archive import CHUNK
from .service import UNAVAILABLE_TEXT


def _runtime(config_path):
    from ..cli import _load
    from ..runtime import Runtime
    return Runtime(_load(config_path))


config_option = click.option(
    "--config", "config_path", default=None, metavar="FILE",
    help="Config file (default: config.yaml, then config.example.yaml).")


@click.group()
def media() -> None:
    """Stored attachments: download a message's files, purge expired ones."""


@media.command("download")
@config_option
@click.argument("message_id")
@click.option("--dest", default=".", show_default=True, type=click.Path(file_okay=False),
              help="Directory to save the files in (created if missing).")
def download(config_path, message_id, dest):
    """Save every attachment of MESSAGE_ID, with a progress bar and time remaining."""
    svc = _runtime(config_path).media
    attachments = svc.attachments(message_id)
    if not attachments:
        click.echo(f"No media is stored for message {message_id}.", err=True)
        sys.exit(1)
    ready = [a for a in attachments if svc.present(a)]
    refused = [a for a in attachments if a.state in (MEDIA_UNSUPPORTED, MEDIA_TOO_LARGE)]
    missing = [a for a in attachments if a not in ready and a not in refused]
    dest_dir = Path(dest)
    saved: list[Path] = []
    if ready:
        try:
            dest_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # a file in the way, no permission, a read-only disk
            _cannot_write(dest_dir, exc)
        with tqdm(total=sum(a.size for a in ready), unit="B", unit_scale=True, unit_divisor=1024,
                  desc=f"{len(ready)} file(s)", file=sys.stderr) as bar:
            for a in ready:
                try:
                    saved.append(_save(svc.storage, a.key, dest_dir, a.name, bar))
                except FileNotFoundError:  # purged while we were downloading
                    missing.append(a)
                except OSError as exc:  # the destination: full, read-only, not ours
                    _cannot_write(dest_dir, exc)
    if saved:
        click.echo(f"Downloaded {len(saved)} file(s) to {dest_dir.resolve()}:")
        for p in saved:
            click.echo(f"  {p.name}")
    for a in refused:
        click.echo(f"Not downloaded: {a.name}: cannot be received ({a.reason})")
    if missing:
        click.echo(UNAVAILABLE_TEXT, err=True)
        for a in missing:
            click.echo(f"  {a.name}: {a.reason or a.state}", err=True)
        sys.exit(1)


def _cannot_write(dest_dir: Path, exc: OSError) -> None:
    click.echo(f"cannot write to {dest_dir}: {exc.strerror or exc}", err=True)
    sys.exit(1)


def _save(storage, key: str, dest_dir: Path, name: str, bar: tqdm) -> Path:
    """Copy one file to a name not taken yet in ``dest_dir``; never a partial file."""
    fd, tmp = tempfile.mkstemp(dir=dest_dir, prefix=".download-")
    try:
        with storage.open(key) as src, os.fdopen(fd, "wb") as out:
            while chunk := src.read(CHUNK):
                out.write(chunk)
                bar.update(len(chunk))
        target = _free_name(dest_dir, name)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def _free_name(directory: Path, name: str) -> Path:
    stem, dot, ext = name.rpartition(".")
    if not dot:
        stem, ext = name, ""
    candidate, i = directory / name, 1
    while candidate.exists():
        i += 1
        candidate = directory / (f"{stem} ({i})" + (f".{ext}" if ext else ""))
    return candidate


@media.command("purge")
@config_option
def purge(config_path):
    """Delete stored files whose retention (media.retention_days) has run out."""
    from ..mms import format_limit
    count, freed = _runtime(config_path).media.purge()
    click.echo(f"Deleted {count} expired file(s), {format_limit(freed)} freed.")
