"""reservation user: the user an order's reservation is for, so a user's reservations can be listed

Revision ID: 0003_reservation_user
Revises: 0002_stock_bounds

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = '0003_reservation_user'
down_revision: Union[str, Sequence[str], None] = '0002_stock_bounds'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    with op.batch_alter_table('reservations', schema=None) as batch_op:
        batch_op.add_column(sa.Column('user_id', sa.String(length=64), nullable=True))
        batch_op.create_index('ix_reservations_tenant_user', ['tenant_id', 'user_id', 'created_at', 'id'], unique=False)


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table('reservations', schema=None) as batch_op:
        batch_op.drop_index('ix_reservations_tenant_user')
        batch_op.drop_column('user_id')
