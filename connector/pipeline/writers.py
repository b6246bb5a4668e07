"""Build the writer for each CRM from its config section and mapping file."""
from __future__ import annotations

from ..config import Config
from ..crm import hubspot, salesforce
from ..crm.base import DryRunWriter, Writer
from ..mapping import Mapping
from ..mapping.reload import LiveMapping

LIVE_WRITERS = {hubspot.NAME: hubspot.build_writer, salesforce.NAME: salesforce.build_writer}
RENDERERS = {hubspot.NAME: (hubspot.render, "communications"),
             salesforce.NAME: (salesforce.render, "Task")}


def load_mapping(config: Config, name: str) -> Mapping:
    return Mapping.load(config.resolve(getattr(config, name).mapping), name, config.time_zone)


def live_mapping(config: Config, name: str) -> LiveMapping:
    """The CRM's mapping, following edits to its file without a restart."""
    return LiveMapping(config.resolve(getattr(config, name).mapping), name, config.time_zone)


def build_writers(config: Config) -> dict[str, Writer]:
    writers: dict[str, Writer] = {}
    for name in config.targets():
        section = getattr(config, name)
        mapping = live_mapping(config, name)
        if section.mode == "dry-run":
            renderer, object_type = RENDERERS[name]
            writers[name] = DryRunWriter(name, mapping().object or object_type, renderer, mapping)
        else:  # live: every CRM config accepts has a live writer
            writers[name] = LIVE_WRITERS[name](config, mapping)
    return writers
