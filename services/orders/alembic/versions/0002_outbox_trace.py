"""outbox trace: the W3C trace context of the request that wrote each event

Revision ID: 0002_outbox_trace
Revises: 0001
Create Date: 2026-12-09 10:00:00.000000

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = '0002_outbox_trace'
down_revision: Union[str, Sequence[str], None] = '0001'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    # Events written before it have no trace to continue: NULL.
    with op.batch_alter_table('outbox', schema=None) as batch_op:
        batch_op.add_column(sa.Column('traceparent', sa.String(length=55), nullable=True))


def downgrade() -> None:
    # On SQLite the table is rebuilt: it keeps AUTOINCREMENT, so no seq is ever handed out twice.
    with op.batch_alter_table('outbox', schema=None, table_kwargs={'sqlite_autoincrement': True}) as batch_op:
        batch_op.drop_column('traceparent')
