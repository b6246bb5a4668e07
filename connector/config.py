"""Load and validate the connector's YAML config.

Secrets are written as ``${ENV_VAR}`` (or ``${ENV_VAR:-default}``) references and
resolved at load time; every error names the key path and what is wrong.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

DEFAULT_CONFIG_FILES = ("config.yaml", "config.example.yaml")
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class ConfigError(Exception):
    """The config file cannot be used; ``errors`` lists ``key.path: what is wrong``."""

    def __init__(self, errors: list[str], path: str | None = None):
        self.errors = errors
        self.path = path
        super().__init__("\n".join(errors))


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ServerConfig(_Section):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=1, le=65535)
    threads: int = Field(8, ge=1, le=256)
    max_body_bytes: int = Field(1_048_576, ge=1024)
    public_base_url: str = "http://127.0.0.1:8080"

    @field_validator("public_base_url")
    @classmethod
    def _base_url(cls, v: str) -> str:
        # Links in CRM entries and HubSpot's request signatures are built on it: without a
        # scheme and host every link is broken and every signed request refused.
        if not re.fullmatch(r"https?://[^\s/?#]+(/[^\s?#]*)?", v):
            raise ValueError("must be the address CRM users' browsers reach, such as "
                             "https://mms.example.com (optionally with a path), without a query")
        return v


class StoreConfig(_Section):
    url: str = "sqlite:///data/connector.db"
    # Under load, how long the webhook write waits for other requests of its process to
    # join its transaction (0: never). Only while others are being answered.
    commit_delay: float = Field(0.001, ge=0, le=0.05)

    @field_validator("url")
    @classmethod
    def _store_url(cls, v: str) -> str:
        from sqlalchemy.engine import make_url
        try:
            backend = make_url(v).get_backend_name()
        except Exception:  # noqa: BLE001 - any unreadable URL gets the same answer
            backend = ""
        if backend not in ("sqlite", "postgresql"):
            raise ValueError("must be sqlite:///path/to/file.db or postgresql+psycopg://user@host/db")
        return v


class QueueConfig(_Section):
    # Empty: workers poll the store (embedded default). redis://... : scaled-out mode
    # (wake-up nudges, shared rate limits and contact cache; the store keeps the work).
    url: str = ""
    prefix: str = Field("mms-connector", min_length=1, pattern=r"^[A-Za-z0-9_.:-]+$")
    socket_timeout: float = Field(1.0, gt=0, le=30)

    @field_validator("url")
    @classmethod
    def _redis_url(cls, v: str) -> str:
        if v and not v.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must be empty (poll the store) or a Redis URL: redis://host:6379/0, "
                             "rediss://... or unix://...")
        return v


class WorkerConfig(_Section):
    threads: int = Field(2, ge=1, le=64)
    poll_interval: float = Field(0.5, gt=0, le=60)
    lease_seconds: int = Field(120, ge=5)
    sweep_interval: float = Field(15, gt=0)
    max_attempts: int = Field(10, ge=1)
    backoff_initial: float = Field(2, gt=0)
    backoff_max: float = Field(900, gt=0)
    # How long a worker holding a partial batch (<crm>.batch_size) waits for more work to fill it.
    batch_wait: float = Field(0.2, ge=0, le=10)


class AircallConfig(_Section):
    webhook_tokens: list[str] = Field(default_factory=list, validate_default=True)  # required
    api_base_url: str = "https://api.aircall.io/v1"
    api_id: str = ""
    api_token: str = ""
    oauth_token: str = ""
    # Sending (connector.providers.aircall.SendClient).
    send_mode: Literal["native", "proxy"] = "native"
    send_connect_timeout: float = Field(3, gt=0, le=60)
    send_read_timeout: float = Field(15, gt=0, le=120)
    send_max_attempts: int = Field(3, ge=1, le=10)
    send_max_wait: float = Field(5, ge=0, le=120)

    @field_validator("webhook_tokens")
    @classmethod
    def _non_empty_tokens(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("at least one webhook token is required")
        for t in v:
            if not t:
                raise ValueError("a webhook token is empty (is its environment variable set?)")
        return v


def _check_time_zone(name: str) -> None:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {name!r} (use an IANA name such as America/New_York)")


class UnknownNumberPolicy(_Section):
    action: Literal["create", "skip"] = "skip"


class HubSpotUnknownNumber(UnknownNumberPolicy):
    # A new contact's names; {e164}, {national} and {international} stand for the number.
    firstname: str = ""
    lastname: str = "{international}"


HUBSPOT_MATCH_PROPERTIES = ["phone", "mobilephone", "hs_searchable_calculated_phone_number",
                            "hs_searchable_calculated_mobile_number"]


class HubSpotConfig(_Section):
    mode: Literal["live", "dry-run", "off"] = "dry-run"
    base_url: str = "https://api.hubapi.com"
    mapping: str = "mappings/hubspot.yaml"
    # Auth: a private-app token, or OAuth 2 (client id + secret + refresh token).
    access_token: str = ""
    client_id: str = ""
    client_secret: str = ""
    refresh_token: str = ""
    # Contact matching.
    match_properties: list[str] = Field(default_factory=lambda: list(HUBSPOT_MATCH_PROPERTIES),
                                        min_length=1, max_length=5)
    multiple_matches: Literal["oldest", "newest", "last_modified"] = "oldest"
    unknown_number: HubSpotUnknownNumber = Field(default_factory=HubSpotUnknownNumber)
    contact_cache_ttl: float = Field(86400, ge=0)
    unmatched_cache_ttl: float = Field(60, ge=0)
    # The entry.
    owner_id: str = ""
    associate_company: bool = False
    associate_deal: bool = False
    contact_association_type_id: int = Field(81, ge=1)
    company_association_type_id: int = Field(87, ge=1)
    deal_association_type_id: int = Field(85, ge=1)
    message_id_property: str = ""
    # Calls.
    requests_per_10s: int = Field(100, ge=1)
    searches_per_second: float = Field(4, gt=0)
    connect_timeout: float = Field(5, gt=0)
    read_timeout: float = Field(20, gt=0)
    retries: int = Field(3, ge=1, le=10)
    retry_initial: float = Field(0.5, gt=0)
    retry_max: float = Field(10, gt=0)
    batch_size: int = Field(100, ge=1, le=100)
    time_zone: str = ""
    # Attachments: the connector's signed links, or copies uploaded into HubSpot's file
    # manager (folder below) that the entry links to instead (connector/crm/hubspot_files.py).
    attachments: Literal["links", "crm-files"] = "links"
    files_folder: str = Field("/MMS attachments", pattern=r"^/[^\\]*$")

    @model_validator(mode="after")
    def _live_needs_credentials(self) -> "HubSpotConfig":
        oauth = (self.client_id, self.client_secret, self.refresh_token)
        if self.mode == "live" and any(oauth) and not all(oauth):
            raise ValueError("OAuth needs all of client_id, client_secret and refresh_token")
        if self.mode == "live" and not self.access_token and not all(oauth):
            raise ValueError("live mode needs access_token (private app) or client_id, "
                             "client_secret and refresh_token (OAuth)")
        return self

    @field_validator("time_zone")
    @classmethod
    def _time_zone(cls, v: str) -> str:
        if v:
            _check_time_zone(v)
        return v


class SalesforceMatchConfig(_Section):
    # Object types searched by phone, in priority order (first type with a match wins).
    objects: list[Literal["Contact", "Lead", "Account", "PersonAccount"]] = Field(
        default_factory=lambda: ["Contact", "Lead"], min_length=1)
    # Several records of the winning type: the oldest (stable) or newest created.
    multiple: Literal["oldest", "newest"] = "oldest"


class SalesforceUnknownNumber(_Section):
    action: Literal["skip", "create_lead", "create_contact"] = "skip"
    # Field values for the created record; {e164} {national} {digits} are replaced.
    fields: dict[str, str] = Field(default_factory=dict)


class SalesforceConfig(_Section):
    mode: Literal["live", "dry-run", "off"] = "dry-run"
    mapping: str = "mappings/salesforce.yaml"
    auth: Literal["password", "jwt", "token"] = "password"
    domain: str = Field("login", pattern=r"^[A-Za-z0-9][A-Za-z0-9.-]*$")
    login_url: str = ""
    instance_url: str = ""
    username: str = ""
    password: str = ""
    security_token: str = ""
    consumer_key: str = ""
    private_key: str = ""
    private_key_file: str = ""
    access_token: str = ""
    api_version: str = Field("59.0", pattern=r"^\d{2,3}\.0$")
    timeout: float = Field(30, gt=0, le=600)
    external_id_field: str = Field("", pattern=r"^([A-Za-z][A-Za-z0-9_]*)?$")
    match: SalesforceMatchConfig = Field(default_factory=SalesforceMatchConfig)
    unknown_number: SalesforceUnknownNumber = Field(default_factory=SalesforceUnknownNumber)
    contact_cache_ttl: float = Field(86400, ge=0)
    unknown_cache_ttl: float = Field(300, ge=0)
    field_limits: dict[str, Annotated[int, Field(ge=1)]] = Field(
        default_factory=lambda: {"Subject": 255, "Description": 32000})
    call_retries: int = Field(3, ge=1, le=10)
    requests_per_second: float = Field(0, ge=0)
    usage_pause_fraction: float = Field(0.9, gt=0, le=1)
    usage_pause_seconds: float = Field(600, gt=0)
    limit_backoff_initial: float = Field(60, gt=0)
    limit_backoff_max: float = Field(3600, gt=0)
    batch_size: int = Field(200, ge=1, le=200)
    # Attachments: the connector's signed links, or Salesforce Files (ContentVersion)
    # linked to the entry (connector/crm/salesforce_files.py), which the entry links to.
    attachments: Literal["links", "crm-files"] = "links"
    files_visibility: Literal["AllUsers", "InternalUsers"] = "AllUsers"

    @field_validator("login_url", "instance_url")
    @classmethod
    def _base_url(cls, v: str) -> str:
        if v and not re.fullmatch(r"https?://[^\s/?#]+/?", v):
            raise ValueError("must be a base URL such as https://acme.my.salesforce.com "
                             "(http:// only for a local fake org), without a path")
        return v

    @model_validator(mode="after")
    def _credentials_for_live(self) -> "SalesforceConfig":
        if self.mode != "live":
            return self
        needed = {"password": ["username", "password"],
                  "jwt": ["username", "consumer_key"],
                  "token": ["access_token", "instance_url"]}[self.auth]
        missing = [f"salesforce.{k}" for k in needed if not getattr(self, k)]
        if self.auth == "jwt" and not (self.private_key or self.private_key_file):
            missing.append("salesforce.private_key or salesforce.private_key_file")
        if missing:
            raise ValueError(f"auth '{self.auth}' needs {', '.join(missing)} "
                             "(set them from environment variables)")
        return self


class FetchConfig(_Section):
    """Fetching media by URL (connector.fetch): outbound attachments, inbound media."""
    allow_http: bool = False
    allow_hosts: list[str] = Field(default_factory=list)
    allow_networks: list[str] = Field(default_factory=list)
    max_bytes: int = Field(10 * 1024 * 1024, ge=1)
    connect_timeout: float = Field(3, gt=0, le=60)
    read_timeout: float = Field(10, gt=0, le=300)
    total_timeout: float = Field(30, gt=0, le=600)
    max_redirects: int = Field(3, ge=0, le=10)

    @field_validator("allow_networks")
    @classmethod
    def _networks(cls, v: list[str]) -> list[str]:
        import ipaddress
        for n in v:
            try:
                ipaddress.ip_network(n, strict=False)
            except ValueError:
                raise ValueError(f"{n!r} is not an IP network (CIDR like 10.0.0.0/8 or an address)")
        return v


MB = 1024 * 1024
KB = 1024


class CarrierProfile(_Section):
    """MMS limits; the article's "in most cases" values are the defaults."""
    max_files: int = Field(10, ge=1, le=100)
    image_max_bytes: int = Field(5 * MB, ge=1)
    pdf_max_bytes: int = Field(600 * KB, ge=1)
    total_max_bytes: int = Field(5 * MB, ge=1)
    formats: list[Literal["pdf", "jpg", "png", "gif"]] = Field(
        default_factory=lambda: ["pdf", "jpg", "png", "gif"])


class OutboundLine(_Section):
    number: str  # E.164
    id: str  # Aircall number id, used in the send path
    mms: bool = True
    profile: str = "default"

    @field_validator("id", mode="before")
    @classmethod
    def _id_str(cls, v: Any) -> Any:
        return str(v) if isinstance(v, int) and not isinstance(v, bool) else v

    @field_validator("number")
    @classmethod
    def _e164(cls, v: str) -> str:
        from .phones import to_e164
        e164 = to_e164(v)
        if not e164:
            raise ValueError(f"{v!r} is not a phone number (use E.164, e.g. +14155550100)")
        return e164


class OutboundHubSpot(_Section):
    client_secret: str = ""  # empty: hubspot.client_secret
    max_age_seconds: int = Field(300, ge=1)
    # Answer a queued send with BLOCK and complete the workflow action once it is sent or
    # has failed (HubSpot's callbacks API, with hubspot.* credentials).
    complete_async: bool = False
    # Names of the action's input fields (or of the webhook body's top-level keys).
    to_field: str = "to"
    from_field: str = "from"
    text_field: str = "text"
    media_field: str = "media_urls"


class OutboundSalesforce(_Section):
    organization_ids: list[str] = Field(default_factory=list)
    token: str = ""  # when set, the endpoint URL must carry ?token=<this>
    to_field: str = "To_Phone__c"
    from_field: str = ""  # empty: outbound.default_line
    text_field: str = "Body__c"
    media_field: str = "Media_URL__c"  # several URLs separated by whitespace or commas

    @field_validator("organization_ids")
    @classmethod
    def _org_ids(cls, v: list[str]) -> list[str]:
        for org in v:
            if not re.fullmatch(r"00D[A-Za-z0-9]{12}([A-Za-z0-9]{3})?", org):
                raise ValueError(f"{org!r} is not a Salesforce organization id (15 or 18 letters and "
                                 "digits starting 00D: Setup > Company Information)")
        return v


class OutboundConfig(_Section):
    policy: Literal["partial", "strict"] = "partial"
    mms_countries: list[str] = Field(default_factory=lambda: ["US", "CA", "AU"])
    lines: list[OutboundLine] = Field(default_factory=list)
    default_line: str = ""
    profiles: dict[str, CarrierProfile] = Field(default_factory=lambda: {"default": CarrierProfile()})
    max_text_chars: int = Field(1600, ge=1)
    api_tokens: list[str] = Field(default_factory=list)
    reconcile_window_seconds: int = Field(900, ge=10)
    hubspot: OutboundHubSpot = Field(default_factory=OutboundHubSpot)
    salesforce: OutboundSalesforce = Field(default_factory=OutboundSalesforce)

    @field_validator("api_tokens")
    @classmethod
    def _tokens(cls, v: list[str]) -> list[str]:
        if any(not t for t in v):
            raise ValueError("a token is empty (is its environment variable set?)")
        return v

    @field_validator("mms_countries")
    @classmethod
    def _countries(cls, v: list[str]) -> list[str]:
        import phonenumbers
        codes = [c.upper() for c in v]
        wrong = [c for c in codes if c not in phonenumbers.SUPPORTED_REGIONS]
        if wrong:
            raise ValueError(f"{', '.join(wrong)}: {'is not an' if len(wrong) == 1 else 'are not'} ISO 3166 "
                             "country code (two letters: US, CA, AU; the United Kingdom is GB)")
        return codes

    @model_validator(mode="after")
    def _profiles_exist(self) -> "OutboundConfig":
        self.profiles.setdefault("default", CarrierProfile())
        for i, line in enumerate(self.lines):
            if line.profile not in self.profiles:
                raise ValueError(f"lines[{i}].profile: no profile named {line.profile!r}")
        if self.default_line:
            from .phones import to_e164
            self.default_line = to_e164(self.default_line) or self.default_line
            if self.line(self.default_line) is None:
                raise ValueError(f"default_line: {self.default_line} is not one of outbound.lines")
        return self

    def line(self, number: str) -> OutboundLine | None:
        for line in self.lines:
            if line.number == number:
                return line
        return None

class MediaS3Config(_Section):
    """An S3 (or S3-compatible) bucket for the media store instead of ``media.dir``."""
    bucket: str = ""  # empty: the local directory
    prefix: str = "mms-media"
    endpoint_url: str = ""  # MinIO, Ceph, R2...; empty: AWS
    region: str = ""  # empty: boto3's default (AWS_REGION / AWS_DEFAULT_REGION, config file)

    @field_validator("bucket")
    @classmethod
    def _boto3_installed(cls, v: str) -> str:
        if v:
            try:
                import boto3  # noqa: F401
            except ImportError:
                raise ValueError("an S3 media store needs boto3: pip install -e '.[s3]'") from None
        return v


class MediaConfig(_Section):
    """Inbound attachments: fetched once into a store, served by signed links."""
    # Local directory of the media store (relative to the config file). A directory on a
    # shared mount serves several machines; the generated signing secret lives there too.
    dir: str = "data/media"
    retention_days: int = Field(183, ge=1, le=3650)
    # Signs /media links. Empty: a random secret is generated once and kept in
    # <dir>/.signing-secret, so every process sharing the directory signs alike.
    signing_secret: str = ""
    # Older secrets still accepted (rotation): links signed with them keep working.
    previous_signing_secrets: list[str] = Field(default_factory=list)
    fetch_attempts: int = Field(3, ge=1, le=10)
    fetch_retry_wait: float = Field(0.5, ge=0, le=60)
    purge_interval: float = Field(3600, gt=0)
    s3: MediaS3Config = Field(default_factory=MediaS3Config)

    @field_validator("signing_secret")
    @classmethod
    def _secret_length(cls, v: str) -> str:
        if v and len(v) < 16:
            raise ValueError("must be at least 16 characters (or empty to generate one)")
        return v

    @field_validator("previous_signing_secrets")
    @classmethod
    def _previous_length(cls, v: list[str]) -> list[str]:
        # Every one of them signs valid links: an empty one would let anyone sign.
        for secret in v:
            if not secret:
                raise ValueError("an entry is empty (is its environment variable set?); an empty key "
                                 "would let anyone sign links: remove it")
            if len(secret) < 16:
                raise ValueError("each entry must be at least 16 characters, as signing_secret")
        return v

    @model_validator(mode="after")
    def _bucket_needs_a_shared_secret(self) -> "MediaConfig":
        # A generated secret lives in each machine's own media.dir: links signed by one
        # worker would be refused by every other web machine (and all, after a restart
        # on an ephemeral disk).
        if self.s3.bucket and not self.signing_secret:
            raise ValueError("signing_secret: an S3 media store serves several machines, so they "
                             "must sign links alike: set media.signing_secret (16+ characters, "
                             "e.g. ${MEDIA_SIGNING_SECRET})")
        return self


class LoggingConfig(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    json_lines: bool = Field(False, alias="json")


class Config(_Section):
    server: ServerConfig = Field(default_factory=ServerConfig)
    store: StoreConfig = Field(default_factory=StoreConfig)
    queue: QueueConfig = Field(default_factory=QueueConfig)
    worker: WorkerConfig = Field(default_factory=WorkerConfig)
    aircall: AircallConfig
    hubspot: HubSpotConfig = Field(default_factory=HubSpotConfig)
    salesforce: SalesforceConfig = Field(default_factory=SalesforceConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    fetch: FetchConfig = Field(default_factory=FetchConfig)
    outbound: OutboundConfig = Field(default_factory=OutboundConfig)
    media: MediaConfig = Field(default_factory=MediaConfig)
    time_zone: str = "UTC"

    @field_validator("time_zone")
    @classmethod
    def _time_zone(cls, v: str) -> str:
        _check_time_zone(v)
        return v

    # Where the file was read from; relative paths (mappings, sqlite) resolve against it.
    base_dir: Path = Field(default=Path("."), exclude=True)
    source: str = Field(default="", exclude=True)

    @model_validator(mode="after")
    def _async_actions_need_hubspot_credentials(self) -> "Config":
        hs = self.hubspot
        if self.outbound.hubspot.complete_async and not (hs.access_token or hs.refresh_token):
            raise ValueError("outbound.hubspot.complete_async: completing workflow actions needs "
                             "hubspot.access_token or hubspot's OAuth keys (client_id, client_secret, "
                             "refresh_token) of the app that defines the action")
        return self

    def warnings(self) -> list[str]:
        """Valid settings an admin most likely did not mean (``check`` prints them, the web
        app logs them at start)."""
        out = []
        sf = self.outbound.salesforce
        if sf.organization_ids and not sf.token:
            out.append("outbound.salesforce.token: empty, so anyone who knows an accepted organization id "
                       "can queue sends from your lines; set it and add ?token=... to the Outbound "
                       "Message endpoint URL")
        for name in ("hubspot", "salesforce"):
            section = getattr(self, name)
            if section.attachments == "crm-files" and section.mode == "dry-run":
                out.append(f"{name}.attachments: crm-files uploads nothing in dry-run mode; the "
                           "recorded entries show the connector's links")
        beyond = [c for c in self.outbound.mms_countries if c not in ("US", "CA", "AU")]
        if beyond:
            out.append(f"outbound.mms_countries: {', '.join(beyond)}: Aircall's MMS article names the "
                       "US, Canada and Australia only")
        return out

    def targets(self) -> list[str]:
        """CRMs that receive message events (mode live or dry-run)."""
        return [n for n in ("hubspot", "salesforce") if getattr(self, n).mode != "off"]

    def resolve(self, relative: str) -> Path:
        p = Path(relative)
        return p if p.is_absolute() else self.base_dir / p


def _substitute(node: Any, path: str, errors: list[str]) -> Any:
    if isinstance(node, dict):
        return {k: _substitute(v, f"{path}.{k}" if path else str(k), errors) for k, v in node.items()}
    if isinstance(node, list):
        return [_substitute(v, f"{path}[{i}]", errors) for i, v in enumerate(node)]
    if isinstance(node, str):
        def repl(m: re.Match) -> str:
            name, default = m.group(1), m.group(2)
            value = os.environ.get(name)
            if value is None or value == "":
                if default is not None:
                    return default
                errors.append(f"{path}: environment variable {name} is not set")
                return ""
            return value

        return _ENV_REF.sub(repl, node)
    return node


def _format_loc(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def find_config_file(explicit: str | None) -> Path:
    if explicit:
        return Path(explicit)
    for name in DEFAULT_CONFIG_FILES:
        if Path(name).exists():
            return Path(name)
    return Path(DEFAULT_CONFIG_FILES[0])


class _UniqueKeyLoader(yaml.SafeLoader):
    """A key given twice in one mapping is an error: YAML keeps the last silently, so a
    second `hubspot:` block would quietly drop the first."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"`{key}` is given twice in one section; keep one", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_config(path: str | Path | None = None, data: dict | None = None) -> Config:
    """Read, substitute and validate a config file (or an already-parsed dict)."""
    source = str(path) if path is not None else "<dict>"
    if data is None:
        p = find_config_file(str(path) if path else None)
        source = str(p)
        try:
            text = p.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError([f"{p}: cannot read config file ({exc.strerror or exc})"], source)
        except UnicodeDecodeError as exc:  # e.g. saved as Latin-1 by an editor
            raise ConfigError([f"{p}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset "
                               f"{exc.start}); save the file as UTF-8"], source)
        try:
            data = yaml.load(text, Loader=_UniqueKeyLoader) or {}
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"{p}:{mark.line + 1}:{mark.column + 1}" if mark else str(p)
            raise ConfigError([f"{where}: invalid YAML ({getattr(exc, 'problem', exc)})"], source)
        base_dir = p.resolve().parent
    else:
        base_dir = Path(".").resolve()
    if not isinstance(data, dict):
        raise ConfigError(["(top level): must be a mapping of sections"], source)
    errors: list[str] = []
    data = _substitute(data, "", errors)
    try:
        cfg = Config.model_validate(data)
    except ValidationError as exc:
        for err in exc.errors():
            loc = _format_loc(err["loc"]) or "(top level)"
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = "unknown key"
            elif err["type"] == "missing":
                msg = "required key is missing"
            errors.append(f"{loc}: {msg}")
    if errors:
        # One error per key path: the first message is the useful one.
        seen: dict[str, str] = {}
        for e in errors:
            seen.setdefault(e.split(":", 1)[0], e)
        raise ConfigError(list(seen.values()), source)
    cfg.base_dir = base_dir
    cfg.source = source
    return cfg
