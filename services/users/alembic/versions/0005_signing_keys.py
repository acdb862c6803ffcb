"""signing keys: the RS256 keys access tokens are signed with, one generation after another

Revision ID: 0005_signing_keys
Revises: 0004_auth_hardening

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa

import shared.db  # noqa: F401  (column types)


# revision identifiers, used by Alembic.
revision: str = '0005_signing_keys'
down_revision: Union[str, Sequence[str], None] = '0004_auth_hardening'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    op.create_table('signing_keys',
    sa.Column('kid', sa.String(length=64), nullable=False),
    sa.Column('generation', sa.Integer(), nullable=False),
    sa.Column('private_pem', sa.Text(), nullable=False),
    sa.Column('created_at', shared.db.UTCDateTime(), nullable=False),
    sa.PrimaryKeyConstraint('kid'),
    sa.UniqueConstraint('generation')
    )


def downgrade() -> None:
    """Downgrade schema."""
    op.drop_table('signing_keys')
