"""credit limit: a user's own limit on what their open orders may add up to (null: the plan's default)

Revision ID: 0003_credit_limit
Revises: 0002

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = '0003_credit_limit'
down_revision: Union[str, Sequence[str], None] = '0002'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    with op.batch_alter_table('users', schema=None) as batch_op:
        batch_op.add_column(sa.Column('credit_limit_cents', sa.BigInteger(), nullable=True))
        batch_op.create_check_constraint('ck_users_credit_limit_not_negative', 'credit_limit_cents >= 0')


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table('users', schema=None) as batch_op:
        batch_op.drop_constraint('ck_users_credit_limit_not_negative', type_='check')
        batch_op.drop_column('credit_limit_cents')
