"""Schema migrations (Alembic), for SQLite and PostgreSQL alike.

Every table in ``connector.store.metadata`` is created and changed only here. Startup
(``serve``, ``worker``, the web app) upgrades to the newest revision; ``mms-connector db
upgrade`` does the same on demand. To change the schema, edit the table in
``connector/store.py`` and run ``mms-connector db revision -m "what changed"``: it
writes a new file under ``versions/`` from the difference, to review and commit.
"""
from __future__ import annotations

import logging
from pathlib import Path

# Alembic logs each plugin it loads at INFO while it is imported; keep "Running upgrade ..."
# lines only (set before the import, or the lines are already out).
logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)

from alembic import command  # noqa: E402
from alembic.config import Config as AlembicConfig  # noqa: E402
from alembic.runtime.migration import MigrationContext  # noqa: E402
from alembic.script import ScriptDirectory  # noqa: E402
from sqlalchemy.engine import Engine  # noqa: E402

HERE = Path(__file__).resolve().parent
# Serializes schema upgrades across processes starting at once (PostgreSQL advisory lock id).
UPGRADE_LOCK_ID = 7261002


def alembic_config(engine: Engine | None = None) -> AlembicConfig:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(HERE))
    cfg.set_main_option("file_template", "%%(year)d%%(month).2d%%(day).2d_%%(rev)s_%%(slug)s")
    cfg.attributes["engine"] = engine
    return cfg


def upgrade(engine: Engine, revision: str = "heads") -> None:
    """Bring the database to ``revision`` (all heads: parallel branches both apply)."""
    command.upgrade(alembic_config(engine), revision)


def heads() -> set[str]:
    return set(ScriptDirectory.from_config(alembic_config()).get_heads())


def current(engine: Engine) -> set[str]:
    with engine.connect() as conn:
        return set(MigrationContext.configure(conn).get_current_heads())


def revision(message: str, empty: bool = False) -> str:
    """Write a migration for what ``connector.store.metadata`` has beyond the newest
    revision (diffed against a scratch SQLite database); returns the new files' paths, ""
    when nothing changed (``empty``: write one anyway, to fill in by hand)."""
    import tempfile

    from ..store import make_engine

    written = []
    if len(heads()) > 1:  # branches that landed in parallel: join them first
        written.append(command.merge(alembic_config(), "heads", message="merge parallel migrations"))
    with tempfile.TemporaryDirectory() as tmp:
        engine = make_engine(f"sqlite:///{tmp}/scratch.db")
        try:
            upgrade(engine)
            cfg = alembic_config(engine)
            cfg.attributes["empty"] = empty
            script = command.revision(cfg, message=message, autogenerate=True)
        finally:
            engine.dispose()
    written += [s for s in (script if isinstance(script, list) else [script]) if s is not None]
    return ", ".join(s.path for s in written)
