"""auth hardening: consecutive wrong passwords per user, and until when the next login waits

Revision ID: 0004_auth_hardening
Revises: 0003_credit_limit

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa

import shared.db  # noqa: F401  (column types)


# revision identifiers, used by Alembic.
revision: str = '0004_auth_hardening'
down_revision: Union[str, Sequence[str], None] = '0003_credit_limit'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    op.add_column('users', sa.Column('failed_logins', sa.Integer(), server_default='0', nullable=False))
    op.add_column('users', sa.Column('login_blocked_until', shared.db.UTCDateTime(), nullable=True))


def downgrade() -> None:
    """Downgrade schema."""
    op.drop_column('users', 'login_blocked_until')
    op.drop_column('users', 'failed_logins')
