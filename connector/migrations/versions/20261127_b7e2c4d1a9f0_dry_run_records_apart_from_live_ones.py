"""dry-run records apart from live ones

Dry-run entries were kept under the CRM's own name with a "dry-run-<message id>"
placeholder id, which a live writer took for its own entry after a switch to live mode.
They move to "<crm>:dry-run", where DryRunWriter now keeps them.

Revision ID: b7e2c4d1a9f0
Revises: 6a98bd146ee3
Create Date: 2026-11-27 05:20:00

"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op


# revision identifiers, used by Alembic.
revision: str = 'b7e2c4d1a9f0'
down_revision: Union[str, Sequence[str], None] = '6a98bd146ee3'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


records = sa.table("crm_records", sa.column("target", sa.String), sa.column("object_id", sa.String))
SUFFIX = ":dry-run"


def upgrade() -> None:
    op.execute(records.update()
               .where(records.c.object_id.like("dry-run-%"), ~records.c.target.like(f"%{SUFFIX}"))
               .values(target=records.c.target + SUFFIX))


def downgrade() -> None:
    op.execute(records.update().where(records.c.target.like(f"%{SUFFIX}"))
               .values(target=sa.func.substr(records.c.target, 1, sa.func.length(records.c.target) - len(SUFFIX))))
