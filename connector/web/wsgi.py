"""WSGI entry for running web processes under gunicorn (the scaled-out mode):

    MMS_CONNECTOR_CONFIG=config.yaml gunicorn -w 2 -b 0.0.0.0:8080 connector.web.wsgi:app

Serves webhooks only: CRM work runs in ``mms-connector worker`` processes.
"""
from __future__ import annotations

import os
import sys

from ..config import ConfigError, find_config_file, load_config
from ..runtime import Runtime, freeze_startup_heap, setup_logging
from . import create_app

try:
    config = load_config(find_config_file(os.environ.get("MMS_CONNECTOR_CONFIG") or None))
except ConfigError as exc:
    sys.stderr.write(f"Config {exc.path or ''} is not valid:\n" + "".join(f"  {e}\n" for e in exc.errors))
    # 3 is gunicorn's "worker failed to boot": its master stops with the message above
    # instead of forking a new worker that fails the same way, many times a second.
    raise SystemExit(3) from None
setup_logging(config)
app = create_app(config, Runtime(config))
freeze_startup_heap()
