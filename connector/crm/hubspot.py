"""HubSpot: one Communications object (SMS channel) per message, on the contact's timeline."""
from __future__ import annotations

from ..events import MessageEvent
from ..mapping import Mapping
from .base import DeliveryContext, entry_kind, template_context

NAME = "hubspot"
CONTACT_PLACEHOLDER = "{contact_id}"
COMMUNICATION_TO_CONTACT = 81  # HUBSPOT_DEFINED association type id


def render(event: MessageEvent, ctx: DeliveryContext, operation: str, mapping: Mapping,
           contact_id: str = CONTACT_PLACEHOLDER, object_id: str = "{communication_id}") -> dict:
    """The request HubSpot receives for this event (create or update)."""
    props = mapping.render(entry_kind(event, operation), template_context(event, ctx))
    props = {k: ("" if v is None else str(v)) for k, v in props.items()}
    if operation == "update":
        return {"method": "PATCH", "path": f"/crm/v3/objects/communications/{object_id}",
                "body": {"properties": props}}
    return {"method": "POST", "path": "/crm/v3/objects/communications",
            "body": {"properties": props, "associations": [{
                "to": {"id": contact_id},
                "types": [{"associationCategory": "HUBSPOT_DEFINED",
                           "associationTypeId": COMMUNICATION_TO_CONTACT}]}]}}
