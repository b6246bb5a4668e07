"""merge parallel migrations

Revision ID: 2a2ac3f7b5a9
Revises: cac6d24a75e9, ef438ef56880
Create Date: 2026-11-27 03:40:38.482130

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = '2a2ac3f7b5a9'
down_revision: Union[str, Sequence[str], None] = ('cac6d24a75e9', 'ef438ef56880')
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    pass


def downgrade() -> None:
    """Downgrade schema."""
    pass
