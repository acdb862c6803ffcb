"""attempt caller: an Idempotency-Key is scoped to the tenant and the caller, not the tenant alone

Attempts recorded before have no caller. Those of a placed order take the order's user (the subject of
a user's token; a key placed with an API key then answers its creator's repeats instead of the key's);
the others, attempts still running or being given up, take an empty caller that no request matches.
Either way the gateway, which has always scoped keys to the caller, still answers repeats for the
keys' lifetime.

Revision ID: 0003_attempt_caller
Revises: 0002_outbox_trace

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = '0003_attempt_caller'
down_revision: Union[str, Sequence[str], None] = '0002_outbox_trace'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    with op.batch_alter_table('order_attempts', schema=None) as batch_op:
        batch_op.add_column(sa.Column('caller', sa.String(length=64), server_default='', nullable=False))
    op.execute(
        "UPDATE order_attempts SET caller = "
        "(SELECT orders.user_id FROM orders WHERE orders.id = order_attempts.id) "
        "WHERE EXISTS (SELECT 1 FROM orders WHERE orders.id = order_attempts.id)"
    )
    with op.batch_alter_table('order_attempts', schema=None) as batch_op:
        batch_op.drop_constraint('uq_order_attempts_tenant_key', type_='unique')
        batch_op.create_unique_constraint(
            'uq_order_attempts_caller_key', ['tenant_id', 'caller', 'idempotency_key']
        )


def downgrade() -> None:
    """Downgrade schema."""
    # Keys of one tenant used by several callers cannot all stay: keep the oldest attempt of each.
    op.execute(
        "DELETE FROM order_attempts WHERE idempotency_key IS NOT NULL AND EXISTS ("
        "SELECT 1 FROM order_attempts AS older WHERE older.tenant_id = order_attempts.tenant_id "
        "AND older.idempotency_key = order_attempts.idempotency_key "
        "AND (older.created_at < order_attempts.created_at "
        "OR (older.created_at = order_attempts.created_at AND older.id < order_attempts.id)))"
    )
    with op.batch_alter_table('order_attempts', schema=None) as batch_op:
        batch_op.drop_constraint('uq_order_attempts_caller_key', type_='unique')
        batch_op.create_unique_constraint('uq_order_attempts_tenant_key', ['tenant_id', 'idempotency_key'])
        batch_op.drop_column('caller')
