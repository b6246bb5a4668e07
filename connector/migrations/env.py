"""Alembic environment: runs inside the connector's own engine (see __init__.py)."""
from __future__ import annotations

from alembic import context
from sqlalchemy import inspect, text

from connector.migrations import UPGRADE_LOCK_ID
from connector.store import make_engine, metadata

# The revision that created the tables databases made before migrations existed have.
BASELINE = "c0a1f3e5b7d9"

def _skip_empty(ctx, revision, directives) -> None:
    """`db revision` with nothing changed writes no file (unless asked for an empty one,
    to fill in by hand: a data migration)."""
    if context.config.attributes.get("empty") or not getattr(context.config.cmd_opts, "autogenerate", True):
        return
    if directives and directives[0].upgrade_ops.is_empty():
        directives[:] = []


engine = context.config.attributes.get("engine")
if engine is None:  # plain `alembic -x url=...` use
    engine = make_engine(context.get_x_argument(as_dictionary=True)["url"])

with engine.connect() as conn:
    # One transaction for the lot (SQLite's DDL is transactional too under our engine):
    # a failed upgrade leaves the schema as it was.
    with conn.begin():
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": UPGRADE_LOCK_ID})
        tables = set(inspect(conn).get_table_names())
        context.configure(connection=conn, target_metadata=metadata, transactional_ddl=True,
                          render_as_batch=conn.dialect.name == "sqlite",
                          process_revision_directives=_skip_empty)
        if "inbox" in tables and "alembic_version" not in tables:
            # Made by create_all before migrations: it already has the baseline tables.
            context.get_context().stamp(context.script, BASELINE)
        context.run_migrations()
