"""What a sales rep reads: the template variables and the built-in message bodies.

``build_context`` is the documented variable set mapping templates render over.
The bodies follow the MMS article: up to 4 previews, a "+N more" counter, a link to
every attachment, one "Download all" link, and an alert for media that cannot be
received. Phone-supplied text is escaped in the HTML body (Jinja autoescape).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from zoneinfo import ZoneInfo

from jinja2 import Environment, StrictUndefined
from markupsafe import Markup, escape

from . import phones
from .events import STATUS_LABELS, MessageEvent
from .mms import format_limit

MAX_PREVIEWS = 4
UNSUPPORTED_ALERT = "Some media cannot be received due to unsupported format."
UNAVAILABLE_ALERT = "Some media is unavailable due to an error"
SUPPORTED_TYPES = {"image/png", "image/jpeg", "image/gif", "application/pdf"}


@dataclass
class MediaView:
    """One attachment as the CRM entry shows it."""
    name: str
    type: str
    link: str
    size: int | None = None
    supported: bool = True
    available: bool = True
    reason: str = ""

    @property
    def is_image(self) -> bool:
        return self.type.startswith("image/")


def default_media_views(event: MessageEvent) -> list[MediaView]:
    """Before media is fetched: provider links, support judged by the declared type."""
    views = []
    for i, m in enumerate(event.media, 1):
        ctype = (m.content_type or "").split(";")[0].strip().lower()
        if ctype == "image/jpg":
            ctype = "image/jpeg"
        views.append(MediaView(name=m.file_name or f"attachment-{i}", type=ctype, link=m.url,
                               supported=ctype in SUPPORTED_TYPES,
                               reason="" if ctype in SUPPORTED_TYPES else "unsupported format"))
    return views


def preview_media_views(event: MessageEvent, public_base_url: str) -> tuple[list[MediaView], str]:
    """For `preview`: the links live entries carry, with placeholders for the signed tokens.

    Media is not fetched, so support is judged by the declared type and sizes are unknown.
    """
    base = public_base_url.rstrip("/")
    views = default_media_views(event)
    for i, v in enumerate(views):
        v.link = f"{base}/media/{{media_token_{i}}}" if v.supported else ""
    offered = any(v.supported for v in views)
    return views, f"{base}/media/{{media_token_all}}" if offered else ""


def build_context(event: MessageEvent, media: list[MediaView], *, download_all_link: str = "",
                  record: dict | None = None, time_zone: str = "UTC") -> dict:
    tz = ZoneInfo(time_zone)
    local_time: datetime = event.occurred_at.astimezone(tz)
    offered = [m for m in media if m.supported and m.available]
    previews = offered[:MAX_PREVIEWS]
    ctx = {
        "time_zone": time_zone,
        "provider": event.provider,
        "event": event.event,
        "kind": event.kind,
        "message": {
            "id": event.message_id,
            "direction": event.direction,
            "status": event.status,
            "status_label": STATUS_LABELS.get(event.status, event.status.title()),
            "provider_status": event.provider_status,
            "channel": event.channel,
            "text": event.text,
            "time": local_time,
            "time_iso": local_time.isoformat(timespec="seconds"),
            "timestamp_ms": event.occurred_at_ms,
            "date": local_time.date().isoformat(),
        },
        "line": {
            "e164": event.line,
            "national": phones.national(event.line) if event.line else "",
            "international": phones.international(event.line) if event.line else "",
            "name": event.line_name,
            "country": event.line_country,
        },
        "external": {
            "e164": event.external,
            "national": phones.national(event.external),
            "international": phones.international(event.external),
            "country": phones.region_of(event.external) or "",
        },
        "record": record or {"id": "", "type": ""},
        "media": [asdict(m) | {"is_image": m.is_image} for m in media],
        "media_count": len(media),
        "previews": [asdict(m) | {"is_image": m.is_image} for m in previews],
        "more_count": max(0, len(offered) - MAX_PREVIEWS),
        # Too large or of an unsupported type: never offered (MMS article's alert).
        "unsupported_count": sum(1 for m in media if not m.supported),
        "has_unsupported": any(not m.supported for m in media),
        "unsupported_alert": UNSUPPORTED_ALERT,
        # Supported, but the provider's file could not be fetched, or it expired.
        "unavailable_count": sum(1 for m in media if m.supported and not m.available),
        "has_unavailable": any(m.supported and not m.available for m in media),
        "unavailable_alert": UNAVAILABLE_ALERT,
        "download_all_link": download_all_link if offered else "",
    }
    ctx["body_html"] = Markup(_HTML.render(**ctx).strip())
    ctx["body_text"] = _TEXT.render(**ctx).strip()
    return ctx


_env_html = Environment(autoescape=True, undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
_env_html.globals["size_label"] = format_limit


def _lines(text) -> Markup:
    """Escaped text whose line breaks show: a new line is only white space in HTML."""
    return Markup("<br>\n").join(escape(line) for line in str(text).replace("\r\n", "\n").split("\n"))


_env_html.filters["lines"] = _lines
_env_text = Environment(autoescape=False, undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)

_HTML = _env_html.from_string("""
<p><strong>{{ 'MMS' if message.channel == 'mms' else 'SMS' }} {{ 'received from' if message.direction == 'inbound' else 'sent to' }} {{ external.e164 }}</strong> {{ 'on' if message.direction == 'inbound' else 'from' }} line {{ line.name ~ ' ' if line.name }}{{ line.e164 }} &middot; {{ message.status_label }}</p>
{% if message.text %}<p>{{ message.text|lines }}</p>{% endif %}
{% if previews %}
<p>{% for m in previews %}{% if m.is_image %}<a href="{{ m.link }}"><img src="{{ m.link }}" alt="{{ m.name }}" width="120"></a>{% else %}<a href="{{ m.link }}">{{ m.name }}</a>{% endif %} {% endfor %}{% if more_count %}<strong>+{{ more_count }} more</strong>{% endif %}</p>
{% endif %}
{% if media %}
<p>Attachments ({{ media_count }}):</p>
<ul>
{% for m in media %}
{% if m.supported and m.available %}<li><a href="{{ m.link }}">{{ m.name }}</a> ({{ m.type }}{{ ', ' ~ size_label(m.size) if m.size }})</li>
{% elif not m.supported %}<li>{{ m.name }}: cannot be received</li>
{% else %}<li>{{ m.name }}: unavailable</li>
{% endif %}
{% endfor %}
</ul>
{% if download_all_link %}<p><a href="{{ download_all_link }}">Download all</a></p>{% endif %}
{% if has_unsupported %}<p>&#9888; {{ unsupported_alert }}</p>{% endif %}
{% if has_unavailable %}<p>&#9888; {{ unavailable_alert }}</p>{% endif %}
{% endif %}
""")

_TEXT = _env_text.from_string("""
{{ 'MMS' if message.channel == 'mms' else 'SMS' }} {{ 'received from' if message.direction == 'inbound' else 'sent to' }} {{ external.e164 }} {{ 'on' if message.direction == 'inbound' else 'from' }} line {{ line.name ~ ' ' if line.name }}{{ line.e164 }} - {{ message.status_label }}
{% if message.text %}

{{ message.text }}
{% endif %}
{% if media %}

Attachments: {{ media_count }}
{% for m in media %}
{% if m.supported and m.available %}- {{ m.name }}: {{ m.link }}
{% elif not m.supported %}- {{ m.name }}: cannot be received
{% else %}- {{ m.name }}: unavailable
{% endif %}
{% endfor %}
{% if download_all_link %}Download all: {{ download_all_link }}
{% endif %}
{% if has_unsupported %}{{ unsupported_alert }}
{% endif %}
{% if has_unavailable %}{{ unavailable_alert }}
{% endif %}
{% endif %}
""")
