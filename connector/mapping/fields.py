"""CRM fields the connector knows, so `check` can catch a typo before the CRM does.

Sources: /work/shared/platform (HubSpot Communications properties; Salesforce Task
object reference). Fields an org adds are declared in the mapping's ``custom_fields``.
"""
from __future__ import annotations

from dataclasses import dataclass

HTML = "html"          # HubSpot rich text: printed values are always HTML-escaped
TEXT = "text"
NUMBER = "number"
BOOL = "bool"
DATE = "date"
DATETIME = "datetime"
PICKLIST = "picklist"
REFERENCE = "reference"
TYPES = (HTML, TEXT, NUMBER, BOOL, DATE, DATETIME, PICKLIST, REFERENCE)


@dataclass(frozen=True)
class Field:
    name: str
    type: str = TEXT
    max_length: int | None = None
    read_only: bool = False
    create_only: bool = False     # may be set on create, not on a later update
    options: tuple[str, ...] = ()  # allowed values of a restricted picklist
    note: str = ""                # why it is read-only or set by the connector


def _index(*fields: Field) -> dict[str, Field]:
    return {f.name: f for f in fields}


_RO = "set by HubSpot"
HUBSPOT_COMMUNICATIONS = _index(
    Field("hs_communication_channel_type", PICKLIST, options=("SMS", "WHATS_APP", "LINKEDIN_MESSAGE")),
    Field("hs_communication_logged_from", PICKLIST, options=("CRM",)),
    Field("hs_communication_body", HTML, max_length=65536),
    Field("hs_timestamp", DATETIME),
    Field("hubspot_owner_id", REFERENCE),
    Field("hs_object_id", read_only=True, note=_RO),
    Field("hs_createdate", DATETIME, read_only=True, note=_RO),
    Field("hs_lastmodifieddate", DATETIME, read_only=True, note=_RO),
    Field("hs_created_by", read_only=True, note=_RO),
    Field("hs_modified_by", read_only=True, note=_RO),
    Field("hs_body_preview", read_only=True, note="HubSpot derives it from hs_communication_body"),
    Field("hs_body_preview_html", read_only=True, note="HubSpot derives it from hs_communication_body"),
    Field("hs_body_preview_is_truncated", BOOL, read_only=True, note=_RO),
    Field("hs_all_owner_ids", read_only=True, note=_RO),
    Field("hs_unique_creation_key", read_only=True, note="undocumented and read-only on some objects"),
)

_SF = "set by Salesforce"
SALESFORCE_TASK = _index(
    Field("Subject", TEXT, max_length=255),
    Field("Description", TEXT, max_length=32000),
    Field("Status", PICKLIST),
    Field("Priority", PICKLIST),
    Field("Type", PICKLIST),
    Field("TaskSubtype", PICKLIST, create_only=True,
          options=("Task", "Email", "LinkedIn", "List Email", "Call")),
    Field("ActivityDate", DATE),
    Field("WhoId", REFERENCE, note="the connector fills it with the matched Contact or Lead (who_field)"),
    Field("WhatId", REFERENCE),
    Field("OwnerId", REFERENCE),
    Field("CallType", PICKLIST, options=("Inbound", "Internal", "Outbound")),
    Field("CallDisposition", TEXT, max_length=255),
    Field("CallObject", TEXT, max_length=255),
    Field("CallDurationInSeconds", NUMBER),
    Field("IsReminderSet", BOOL),
    Field("ReminderDateTime", DATETIME),
    Field("Id", REFERENCE, read_only=True, note=_SF),
    Field("AccountId", REFERENCE, read_only=True, note="Salesforce derives it from WhatId or WhoId"),
    Field("CompletedDateTime", DATETIME, read_only=True, note="set when the Task is saved with a closed status"),
    Field("IsClosed", BOOL, read_only=True, note="follows Status"),
    Field("IsHighPriority", BOOL, read_only=True, note="follows Priority"),
    Field("IsArchived", BOOL, read_only=True, note=_SF),
    Field("IsDeleted", BOOL, read_only=True, note=_SF),
    Field("CreatedDate", DATETIME, read_only=True, note=_SF),
    Field("CreatedById", REFERENCE, read_only=True, note=_SF),
    Field("LastModifiedDate", DATETIME, read_only=True, note=_SF),
    Field("LastModifiedById", REFERENCE, read_only=True, note=_SF),
    Field("SystemModstamp", DATETIME, read_only=True, note=_SF),
)

# (crm, object name as written in the mapping) -> known fields
KNOWN_OBJECTS: dict[tuple[str, str], dict[str, Field]] = {
    ("hubspot", "communications"): HUBSPOT_COMMUNICATIONS,
    ("hubspot", "0-18"): HUBSPOT_COMMUNICATIONS,
    ("salesforce", "Task"): SALESFORCE_TASK,
}
DEFAULT_OBJECT = {"hubspot": "communications", "salesforce": "Task"}
HUBSPOT_OBJECTS = ("communications", "0-18")  # the HubSpot writer logs Communications only
# Standard objects a message could be logged to; a name in another case is a typo.
SALESFORCE_OBJECTS = ("Task", "Event", "Case", "Contact", "Lead", "Account", "Opportunity")


def known_fields(crm: str, obj: str) -> dict[str, Field] | None:
    """The fields of a standard object, or None for an object the connector does not know."""
    return KNOWN_OBJECTS.get((crm, obj))


def suggest(name: str, choices) -> str:
    """"; did you mean `x`?" for the closest of ``choices``, or nothing."""
    import difflib
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f"; did you mean `{close[0]}`?" if close else ""
