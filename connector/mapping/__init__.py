"""Field-mapping files: CRM field -> template, per event kind (inbound, outbound, status).

``Mapping.load`` reads a file and validates all of it (YAML, template syntax, variables,
CRM fields, lengths, a trial render on sample messages); any error refuses the whole
file, each error as ``file:line:column: message``. Templates run in a sandbox (see
sandbox.py); HubSpot HTML fields are escaped whatever the template says.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from jinja2 import Template, TemplateSyntaxError
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from . import fields as F
from .positions import locate, position
from .sandbox import environment
from .values import convert, problem
from .variables import check_template, sample_contexts

KINDS = ("inbound", "outbound", "status")
SECTIONS = ("object", "custom_fields", "entries")
OPTIONS = {"hubspot": (), "salesforce": ("who_field", "what_field")}
LINK_TYPES = ("Contact", "Lead", "Account", "PersonAccount")  # record types a who_field may name
_YAML_TAGS = "tag:yaml.org,2002:"
_NULL_TAG = _YAML_TAGS + "null"


@dataclass(frozen=True)
class Issue:
    path: str
    line: int
    column: int
    message: str
    severity: str = "error"

    def __str__(self) -> str:
        prefix = "" if self.severity == "error" else f"{self.severity}: "
        return f"{self.path}:{self.line}:{self.column}: {prefix}{self.message}"


class MappingError(Exception):
    """The mapping cannot be used; ``errors`` are ``file:line:column: message`` lines."""

    def __init__(self, errors: list, warnings: list | None = None):
        self.issues = [e for e in errors if isinstance(e, Issue)]
        self.errors = [str(e) for e in errors]
        self.warnings = [str(w) for w in warnings or []]
        super().__init__("\n".join(self.errors))


class RenderError(MappingError):
    """A valid mapping failed on one message (e.g. an index past the end of `media`)."""


@dataclass
class FieldMap:
    name: str
    spec: F.Field | None
    line: int
    column: int
    template: Template | None = None
    constant: Any = None


@dataclass
class Mapping:
    crm: str
    path: str
    object: str
    options: dict[str, Any]
    entries: dict[str, dict[str, FieldMap]] = field(default_factory=dict)
    custom_fields: dict[str, F.Field] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    @classmethod
    def load(cls, path: str | Path, crm: str, time_zone: str = "UTC") -> "Mapping":
        return _Loader(Path(path), crm, time_zone).load()

    @property
    def limits(self) -> dict[str, int]:
        """Max length of each mapped text field the connector knows or the file declares
        (a Salesforce Rich Text Area too: cut rather than refused; a HubSpot HTML body is
        not cut, a cut could end it inside a tag)."""
        return {name: fm.spec.max_length for fms in self.entries.values() for name, fm in fms.items()
                if fm.spec is not None and fm.spec.max_length and _cut(fm.spec, self.crm)}

    def render(self, kind: str, ctx: dict) -> dict[str, Any]:
        """The CRM field values for one message; raises RenderError naming the field."""
        out: dict[str, Any] = {}
        for name, fm in self.entries.get(kind, {}).items():
            if fm.template is None:
                value = fm.constant
            else:
                try:
                    value = convert(fm.template.render(ctx), fm.spec, self.crm)
                except Exception as exc:  # sandbox refusals, missing keys, bad filter input
                    raise RenderError([Issue(self.path, fm.line, fm.column,
                                             f"entries.{kind}.{name}: {_describe(exc)}")]) from exc
            if self.crm == "hubspot":  # HubSpot property values are strings
                value = "" if value is None else (str(value).lower() if isinstance(value, bool) else str(value))
            out[name] = value
        return out


def current(mapping) -> Mapping:
    """One complete Mapping for one request, from a Mapping or a live (reloading) one."""
    return mapping() if callable(mapping) else mapping


def _describe(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}" if not str(exc) else str(exc)


def display_path(p: Path) -> str:
    try:
        rel = os.path.relpath(p)
    except ValueError:
        return str(p)
    return str(p) if rel.startswith("..") else rel


class _Loader:
    def __init__(self, path: Path, crm: str, time_zone: str):
        self.path, self.crm, self.time_zone = path, crm, time_zone
        self.shown = display_path(path)
        self.errors: list[Issue] = []
        self.warnings: list[Issue] = []
        self.lines: list[str] = []
        self.envs = {False: environment(html=False), True: environment(html=True)}
        self.constructor = SafeConstructor()

    def error(self, line: int, column: int, message: str, severity: str = "error") -> None:
        issues = self.errors if severity == "error" else self.warnings
        issue = Issue(self.shown, line, column, message, severity)
        if issue not in issues:  # a setting read twice (who_field) is reported once
            issues.append(issue)

    def at(self, node: Node, message: str, severity: str = "error") -> None:
        self.error(node.start_mark.line + 1, node.start_mark.column + 1, message, severity)

    def fail(self) -> MappingError:
        return MappingError(self.errors, self.warnings)

    def pairs(self, node: MappingNode, what: str) -> list[tuple[str, Node, Node]]:
        """Key/value nodes of a YAML mapping; duplicate keys are errors (YAML keeps the last silently)."""
        seen: set[str] = set()
        out = []
        for k, v in node.value:
            key = str(k.value)
            if key in seen:
                self.at(k, f"`{key}` appears twice in {what}; keep one")
            seen.add(key)
            out.append((key, k, v))
        return out

    def scalar(self, node: Node) -> Any:
        """A setting's value as YAML types it; a value YAML cannot build is an error here."""
        try:
            return self.constructor.construct_object(node, deep=True)
        except (yaml.YAMLError, ValueError, TypeError, OverflowError) as exc:  # `!tag x`, 2026-02-30
            self.constructor = SafeConstructor()  # a failed build leaves state behind
            mark = getattr(exc, "problem_mark", None) or node.start_mark
            what = getattr(exc, "problem", None) or str(exc)
            self.error(mark.line + 1, mark.column + 1, f"invalid value: {what} (quote it to keep it as text)")
            return None

    def load(self) -> Mapping:
        try:
            data = self.path.read_bytes()
        except OSError as exc:
            raise MappingError([Issue(self.shown, 1, 1, f"cannot read mapping file ({exc.strerror or exc})")])
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:  # e.g. saved as Latin-1 by an editor
            line, col = position(data[: exc.start].decode("utf-8", "replace"))
            self.error(line, col, f"not UTF-8 text (byte 0x{data[exc.start]:02x}); save the file as UTF-8")
            raise self.fail()
        self.lines = text.splitlines()
        try:
            root = yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
            line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
            what = getattr(exc, "problem", None) or str(exc)
            hint = "check indentation and quote values that contain `: ` or start with `{`"
            if isinstance(exc, yaml.reader.ReaderError):  # a control character: no mark, a position
                line, col = position(text[: exc.position])
                what, hint = f"control character #x{exc.character:04x} is not allowed", "delete it"
            self.error(line, col, f"invalid YAML: {what} ({hint})")
            raise self.fail()
        if not isinstance(root, MappingNode):
            self.error(1, 1, "a mapping file needs `object:` and `entries:` sections")
            raise self.fail()
        top = {key: (k, v) for key, k, v in self.pairs(root, "the file")}
        allowed = (*SECTIONS, *OPTIONS.get(self.crm, ()))
        for key, (k, _) in top.items():
            if key not in allowed:
                self.at(k, f"unknown setting `{key}`" + F.suggest(key, allowed), "warning")
        obj = F.DEFAULT_OBJECT[self.crm]
        if "object" in top:
            node = top["object"][1]
            if not isinstance(node, ScalarNode) or not str(node.value).strip():
                self.at(node, "`object` must be an object name such as " + obj)
            else:
                obj = str(node.value).strip()
                self.check_object(node, obj)
        custom = self.custom_fields(top["custom_fields"][1]) if "custom_fields" in top else {}
        self.link_fields = self.linked(top, obj, custom)
        entries: dict[str, dict[str, FieldMap]] = {}
        if "entries" not in top or not isinstance(top["entries"][1], MappingNode):
            where = top["entries"][1] if "entries" in top else root
            self.at(where, "`entries:` must map each event kind (inbound, outbound, status) to fields")
        else:
            entries_key, entries_node = top["entries"]
            for kind, k, v in self.pairs(entries_node, "entries"):
                if kind not in KINDS:
                    self.at(k, f"unknown event kind `{kind}` (use inbound, outbound or status)" + F.suggest(kind, KINDS))
                elif not isinstance(v, MappingNode):
                    self.at(v, f"entries.{kind} must map CRM fields to values")
                else:
                    entries[kind] = self.kind_fields(kind, v, obj, custom)
            for kind in KINDS:
                if kind not in entries and not any(kind == key for key, _, _ in self.pairs(entries_node, "entries")):
                    self.at(entries_key, f"entries.{kind} is missing: {kind} events will write no fields",
                            "warning")
        options = {key: self.scalar(v) for key, (_, v) in top.items() if key not in SECTIONS}
        if self.errors:
            raise self.fail()
        mapping = Mapping(crm=self.crm, path=self.shown, object=obj, options=options, entries=entries,
                          custom_fields=custom)
        self.trial_render(mapping)
        if self.errors:
            raise self.fail()
        mapping.warnings = [str(w) for w in self.warnings]
        return mapping

    def check_object(self, node: Node, obj: str) -> None:
        """A typo in `object:` would silently turn off every field check."""
        if self.crm == "hubspot":
            if obj not in F.HUBSPOT_OBJECTS:
                self.at(node, f"unknown HubSpot object `{obj}`: messages are logged as Communications "
                        "(`object: communications`)" + F.suggest(obj, F.HUBSPOT_OBJECTS[:1]))
            return
        standard = {name.lower(): name for name in F.SALESFORCE_OBJECTS}.get(obj.lower())
        if standard and standard != obj:
            self.at(node, f"unknown Salesforce object `{obj}`; did you mean `{standard}`? (names are case-sensitive)")
        elif not standard and not obj.endswith("__c"):
            self.at(node, f"`{obj}` is neither a standard Salesforce object the connector knows nor a custom "
                    "object (`__c`): its fields are not checked" + F.suggest(obj, F.SALESFORCE_OBJECTS), "warning")

    def linked(self, top: dict, obj: str, custom: dict[str, F.Field]) -> set[str]:
        """Fields the writer fills with the matched record (Salesforce who_field/what_field),
        each checked: a typo would send a field the object lacks, or leave a Task unlinked."""
        if self.crm != "salesforce":
            return set()
        out = {"WhoId"} if "who_field" not in top else set()
        known = F.known_fields(self.crm, obj)
        for key in ("who_field", "what_field"):
            if key not in top:
                continue
            node = top[key][1]
            value = self.scalar(node)
            if isinstance(value, dict) and key == "who_field":
                for rtype in value:
                    if rtype not in LINK_TYPES:
                        self.at(node, f"who_field: `{rtype}` is not a record type the connector matches "
                                f"(use {', '.join(LINK_TYPES)})" + F.suggest(str(rtype), LINK_TYPES))
                names = [v for v in value.values() if v]
            elif value is None or isinstance(value, str):
                names = [value] if value else []
            else:
                self.at(node, f"{key} must be a field name" + (" or {Contact: ..., Lead: ...}" if key == "who_field" else ""))
                continue
            for name in names:
                if not isinstance(name, str):
                    self.at(node, f"{key}: `{name}` is not a field name")
                elif known is not None and name not in known and name not in custom:
                    self.at(node, f"{key}: {obj} has no field `{name}`" + F.suggest(name, list(known)))
                else:
                    out.add(name)
        return out

    def custom_fields(self, node: Node) -> dict[str, F.Field]:
        out: dict[str, F.Field] = {}
        if not isinstance(node, MappingNode):
            self.at(node, "custom_fields must map field names to {type, max_length}")
            return out
        for name, k, v in self.pairs(node, "custom_fields"):
            if isinstance(v, MappingNode):
                self.pairs(v, f"custom_fields.{name}")  # a key given twice is an error, not "the last wins"
            spec = self.scalar(v)
            if isinstance(spec, int) and not isinstance(spec, bool):
                spec = {"max_length": spec}
            if spec is None:
                spec = {}
            if not isinstance(spec, dict):
                self.at(v, f"custom_fields.{name} must be {{type: text, max_length: 255}} (or just the max length)")
                continue
            unknown = set(spec) - {"type", "max_length", "read_only", "options"}
            for key in sorted(unknown):
                self.at(v, f"custom_fields.{name}: unknown key `{key}`" + F.suggest(key, ["type", "max_length", "read_only", "options"]))
            ftype = spec.get("type", F.TEXT)
            if ftype not in F.TYPES:
                self.at(v, f"custom_fields.{name}: unknown type `{ftype}` (use {', '.join(F.TYPES)})" + F.suggest(str(ftype), F.TYPES))
                continue
            max_length = spec.get("max_length")
            if max_length is not None and (not isinstance(max_length, int) or isinstance(max_length, bool) or max_length < 1):
                self.at(v, f"custom_fields.{name}: max_length must be a whole number of characters")
                max_length = None
            if not isinstance(spec.get("read_only", False), bool):  # 'no' in quotes is text, and true
                self.at(v, f"custom_fields.{name}: read_only must be true or false (unquoted)")
            if "options" in spec and not isinstance(spec["options"], list):
                self.at(v, f"custom_fields.{name}: options must be a list, e.g. options: [Inbound, Outbound]")
            options = _options_text(v) if isinstance(spec.get("options"), list) else ()
            out[name] = F.Field(name, ftype, max_length=max_length, read_only=bool(spec.get("read_only")),
                                options=options)
        return out

    def kind_fields(self, kind: str, node: MappingNode, obj: str, custom: dict[str, F.Field]) -> dict[str, FieldMap]:
        known = F.known_fields(self.crm, obj)
        label = {"hubspot": "HubSpot", "salesforce": "Salesforce"}[self.crm]
        out: dict[str, FieldMap] = {}
        for name, k, v in self.pairs(node, f"entries.{kind}"):
            spec = custom.get(name) or (known or {}).get(name)
            if spec is None and known is not None:
                hint = "" if name.endswith("__c") else F.suggest(name, [*known, *custom])
                self.at(k, f"unknown {label} {obj} field `{name}`" + (hint or "; a custom field must be "
                        f"declared under `custom_fields:` (e.g. `{name}: {{type: text, max_length: 255}}`)"))
                continue
            if spec is not None and spec.read_only:
                self.at(k, f"`{name}` is read-only ({spec.note or 'set by the CRM'}); remove it")
                continue
            if spec is not None and spec.create_only and kind == "status":
                self.at(k, f"`{name}` can only be set when the entry is created; remove it from entries.status")
                continue
            if name in self.link_fields:
                self.at(k, f"`{name}` is filled by the connector with the matched record; remove it", "warning")
            fm = FieldMap(name, spec, v.start_mark.line + 1, v.start_mark.column + 1)
            if isinstance(v, MappingNode) and v.flow_style:
                self.at(v, f"entries.{kind}.{name}: a value that starts with `{{` must be quoted: "
                        f"{name}: \"{{{{ ... }}}}\"")
                continue
            if not isinstance(v, ScalarNode):
                self.at(v, f"entries.{kind}.{name}: a field takes one value (text or a template), not a list or mapping")
                continue
            if not v.tag.startswith(_YAML_TAGS):  # `Type: !MMS x` is a YAML tag, not text
                self.at(v, f"entries.{kind}.{name}: `{v.tag}` reads as a YAML tag; quote the value to keep "
                        f"it as text: {name}: \"{v.tag} {v.value}\"")
                continue
            # The text as written, not YAML's reading of it (2026-12-31 a date, 0123 octal 83, no false):
            # the field's type decides, with the same rules as template output.
            text = str(v.value)
            if "{{" in text or "{%" in text or "{#" in text:
                fm.template = self.compile(v, text, spec)
                if fm.template is None:
                    continue
            elif not (v.tag == _NULL_TAG and v.style is None):  # `Field:` / `~`: None clears the field
                fm.constant = convert(text, spec, self.crm)
                self.check_constant(v, name, text, fm.constant, spec)
            out[name] = fm
        return out

    def check_constant(self, node: Node, name: str, text: str, value: Any, spec: F.Field | None) -> None:
        if spec is None:
            return
        if spec.max_length and len(text) > spec.max_length:
            self.at(node, f"value is {len(text)} characters; `{name}` holds at most {spec.max_length}")
        wrong = problem(value, spec, self.crm)
        if wrong:
            self.at(node, wrong)

    def compile(self, node: ScalarNode, source: str, spec: F.Field | None) -> Template | None:
        env = self.envs[self.crm == "hubspot" and spec is not None and spec.type == F.HTML]
        try:
            ast = env.parse(source)
        except TemplateSyntaxError as exc:
            line, col = self.locate(node, exc.lineno or 1, "")
            self.error(line, col, f"template syntax error: {exc.message}")
            return None
        findings = check_template(ast, env)
        for f in findings:
            line, col = self.locate(node, f.lineno, f.token)
            self.error(line, col, f.message)
        if findings:
            return None
        try:
            return env.from_string(source)
        except TemplateSyntaxError as exc:  # what parsing and the checker let through
            line, col = self.locate(node, exc.lineno or 1, "")
            self.error(line, col, f"template error: {(exc.message or '').rstrip('.')}")
            return None

    def locate(self, node: ScalarNode, lineno: int, token: str) -> tuple[int, int]:
        return locate(self.lines, node, lineno, token)

    def trial_render(self, mapping: Mapping) -> None:
        """Render every field on sample messages: catches what static checks cannot
        (an index past the end of a list, a refused `format` call, a bad filter argument)."""
        samples = sample_contexts(self.time_zone)
        for kind, fms in mapping.entries.items():
            for name, fm in fms.items():
                if fm.template is None:
                    continue
                for label, ctx in samples:
                    try:
                        value = fm.template.render(ctx)
                    except Exception as exc:
                        self.error(fm.line, fm.column, f"entries.{kind}.{name} fails on the sample {label}: {_describe(exc)}")
                        break
                    spec = fm.spec
                    wrong = problem(convert(value, spec, self.crm), spec, self.crm)
                    if wrong:  # e.g. a date field rendering 20/11/2026: the CRM would refuse every entry
                        self.error(fm.line, fm.column, f"entries.{kind}.{name} fails on the sample {label}: {wrong}")
                        break
                    if spec and spec.max_length and _cut(spec, self.crm) and len(value) > spec.max_length:
                        self.error(fm.line, fm.column, f"entries.{kind}.{name} renders {len(value)} characters for the "
                                   f"sample {label}; `{name}` holds {spec.max_length}, longer values are cut "
                                   f"(use `|truncate({spec.max_length})`)", "warning")
                        break


def _cut(spec: F.Field, crm: str) -> bool:
    """Whether a value longer than the field is cut to fit (and `check` warns of it)."""
    return spec.type != F.HTML or crm != "hubspot"


def _options_text(node: Node) -> tuple[str, ...]:
    """A picklist's options as written (`[yes, no]` are not booleans)."""
    for k, v in node.value if isinstance(node, MappingNode) else ():
        if k.value == "options" and isinstance(v, SequenceNode):
            return tuple(str(o.value) for o in v.value if isinstance(o, ScalarNode))
    return ()
