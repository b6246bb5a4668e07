"""Inbound attachments that stay reachable: fetched once into a media store, served by
signed links under ``server.public_base_url``, zipped for "Download all", purged after
``media.retention_days``."""
from .service import UNAVAILABLE_TEXT, Attachment, MediaService

__all__ = ["MediaService", "Attachment", "UNAVAILABLE_TEXT"]
