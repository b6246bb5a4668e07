"""Salesforce: one record (a completed Task by default) per message on the Contact or Lead."""
from __future__ import annotations

from ..events import MessageEvent
from ..mapping import Mapping
from .base import DeliveryContext, entry_kind, template_context

NAME = "salesforce"
WHO_PLACEHOLDER = "{who_id}"
API_VERSION = "59.0"


def render(event: MessageEvent, ctx: DeliveryContext, operation: str, mapping: Mapping,
           who_id: str = WHO_PLACEHOLDER, object_id: str = "{record_id}") -> dict:
    """The request Salesforce receives for this event (create or update)."""
    sobject = mapping.object or "Task"
    fields = mapping.render(entry_kind(event, operation), template_context(event, ctx))
    base = f"/services/data/v{API_VERSION}/sobjects/{sobject}"
    if operation == "update":
        return {"method": "PATCH", "path": f"{base}/{object_id}", "body": fields}
    who_field = mapping.options.get("who_field", "WhoId")
    if who_field:
        fields[who_field] = who_id
    return {"method": "POST", "path": f"{base}/", "body": fields}
