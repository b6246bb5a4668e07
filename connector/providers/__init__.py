"""Provider adapters: parse and authenticate inbound webhooks, send messages."""
from . import aircall

PARSERS = {aircall.NAME: aircall.parse}
