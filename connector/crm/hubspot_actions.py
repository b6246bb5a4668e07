"""Completing HubSpot custom workflow actions answered ``BLOCK`` (automation v4 callbacks).

With ``outbound.hubspot.complete_async`` a queued send is answered BLOCK, and the workflow
waits at the action until the connector calls
``POST /automation/v4/actions/callbacks/{callbackId}/complete`` with the send's outcome as
outputFields, so a branch after the action sees whether the MMS went out and why not.
"""
from __future__ import annotations

from hubspot.automation.actions import CallbackCompletionRequest

from .. import ratelimit
from ..config import Config
from .hubspot_api import HubSpotApi


class WorkflowActions:
    def __init__(self, config: Config, api: HubSpotApi | None = None):
        # The portal's budget is the CRM writer's: the runtime hands over its live writer's
        # client (one bucket, one daily-limit stop); without one, a client of its own, whose
        # bucket is the writers' through Redis in the scaled-out mode.
        self.api = api or HubSpotApi(config.hubspot, config.time_zone, bucket=ratelimit.bucket(config, "hubspot"),
                                     search_bucket=ratelimit.bucket(config, "hubspot", "search"))

    def complete(self, callback_id: str, output_fields: dict) -> None:
        """Raises TransientError to try again later, PermanentError when HubSpot refuses it."""
        self.api.call(self.api.action_callbacks.complete, callback_id=callback_id,
                      callback_completion_request=CallbackCompletionRequest(output_fields=output_fields))
