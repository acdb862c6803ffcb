"""outbox retention: the highest event seq the retention has removed (0: none), one row

Readers of the feed resuming from before it learn that they missed events and must resync.

Revision ID: 0005_outbox_retention
Revises: 0004_credit_claims

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = '0005_outbox_retention'
down_revision: Union[str, Sequence[str], None] = '0004_credit_claims'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    table = op.create_table(
        'outbox_retention',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('pruned_through', sa.BigInteger(), server_default='0', nullable=False),
        sa.PrimaryKeyConstraint('id'),
    )
    op.bulk_insert(table, [{'id': 1, 'pruned_through': 0}])


def downgrade() -> None:
    """Downgrade schema."""
    op.drop_table('outbox_retention')
