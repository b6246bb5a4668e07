"""Field-mapping files: CRM field -> template, per event kind.

Templates run in Jinja's sandbox (no code, no files, no Python internals) with
StrictUndefined, so a misspelt variable is an error rather than an empty field.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from jinja2 import StrictUndefined, TemplateError
from jinja2.sandbox import SandboxedEnvironment

KINDS = ("inbound", "outbound", "status")


class MappingError(Exception):
    def __init__(self, errors: list[str]):
        self.errors = errors
        super().__init__("\n".join(errors))


def _environment(crm: str) -> SandboxedEnvironment:
    # HubSpot fields hold HTML: escape everything a template prints.
    return SandboxedEnvironment(autoescape=(crm == "hubspot"), undefined=StrictUndefined)


@dataclass
class Mapping:
    crm: str
    path: str
    object: str
    options: dict[str, Any]
    entries: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def load(cls, path: str | Path, crm: str) -> "Mapping":
        p = Path(path)
        try:
            data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except OSError as exc:
            raise MappingError([f"{p}: cannot read mapping file ({exc.strerror or exc})"])
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"{p}:{mark.line + 1}:{mark.column + 1}" if mark else str(p)
            raise MappingError([f"{where}: invalid YAML ({getattr(exc, 'problem', exc)})"])
        if not isinstance(data, dict):
            raise MappingError([f"{p}: must be a mapping with 'object' and 'entries'"])
        env = _environment(crm)
        errors: list[str] = []
        entries: dict[str, dict[str, Any]] = {}
        raw_entries = data.get("entries") or {}
        for kind, fields in raw_entries.items():
            if kind not in KINDS:
                errors.append(f"{p}: entries.{kind}: unknown event kind (use one of {', '.join(KINDS)})")
                continue
            compiled = {}
            for name, tmpl in (fields or {}).items():
                if isinstance(tmpl, str):
                    try:
                        compiled[name] = env.from_string(tmpl)
                    except TemplateError as exc:
                        errors.append(f"{p}: entries.{kind}.{name}: {exc}")
                else:
                    compiled[name] = tmpl
            entries[kind] = compiled
        if errors:
            raise MappingError(errors)
        options = {k: v for k, v in data.items() if k not in ("object", "entries")}
        return cls(crm=crm, path=str(p), object=str(data.get("object", "")), options=options,
                   entries=entries)

    def render(self, kind: str, ctx: dict) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, tmpl in self.entries.get(kind, {}).items():
            out[name] = tmpl.render(**ctx) if hasattr(tmpl, "render") else tmpl
        return out
