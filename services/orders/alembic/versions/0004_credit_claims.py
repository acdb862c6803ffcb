"""credit claims: a pending order attempt holds its user's credit until the order is stored

Revision ID: 0004_credit_claims
Revises: 0003_attempt_caller

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = '0004_credit_claims'
down_revision: Union[str, Sequence[str], None] = '0003_attempt_caller'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    with op.batch_alter_table('order_attempts', schema=None) as batch_op:
        batch_op.add_column(sa.Column('user_id', sa.String(length=36), nullable=True))
        batch_op.add_column(sa.Column('credit_cents', sa.BigInteger(), nullable=True))
        batch_op.create_index('ix_order_attempts_user', ['tenant_id', 'user_id', 'state'], unique=False)
    with op.batch_alter_table('orders', schema=None) as batch_op:
        batch_op.create_index('ix_orders_tenant_user', ['tenant_id', 'user_id'], unique=False)


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table('orders', schema=None) as batch_op:
        batch_op.drop_index('ix_orders_tenant_user')
    with op.batch_alter_table('order_attempts', schema=None) as batch_op:
        batch_op.drop_index('ix_order_attempts_user')
        batch_op.drop_column('credit_cents')
        batch_op.drop_column('user_id')
