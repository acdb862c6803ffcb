"""fairness and protection: claim indexes, endpoint rate limits and failure tracking, retention

Revision ID: 0004_fairness_and_protection
Revises: 0003_event_trace
Create Date: 2026-12-16 10:00:00.000000

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa

import shared.db


# revision identifiers, used by Alembic.
revision: str = '0004_fairness_and_protection'
down_revision: Union[str, Sequence[str], None] = '0003_event_trace'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    with op.batch_alter_table('webhook_endpoints', schema=None) as batch_op:
        batch_op.add_column(sa.Column('rate_limit_per_second', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('rate_next_at', shared.db.UTCDateTime(), nullable=True))
        batch_op.add_column(sa.Column('consecutive_failures', sa.Integer(), nullable=False, server_default='0'))
        batch_op.add_column(sa.Column('failing_since', shared.db.UTCDateTime(), nullable=True))
    # Failures before this revision were not counted: every endpoint starts with a clean record.
    with op.batch_alter_table('webhook_endpoints', schema=None) as batch_op:
        batch_op.alter_column('consecutive_failures', server_default=None)

    with op.batch_alter_table('webhook_deliveries', schema=None) as batch_op:
        batch_op.create_index(
            'ix_webhook_deliveries_status_tenant_next', ['status', 'tenant_id', 'next_attempt_at'], unique=False
        )
        batch_op.create_index('ix_webhook_deliveries_lease', ['lease_expires_at'], unique=False)
        batch_op.create_index('ix_webhook_deliveries_created', ['created_at'], unique=False)

    with op.batch_alter_table('webhook_delivery_attempts', schema=None) as batch_op:
        batch_op.add_column(sa.Column('next_attempt_at', shared.db.UTCDateTime(), nullable=True))

    with op.batch_alter_table('webhook_events', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_webhook_events_received_at'), ['received_at'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('webhook_events', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_webhook_events_received_at'))

    with op.batch_alter_table('webhook_delivery_attempts', schema=None) as batch_op:
        batch_op.drop_column('next_attempt_at')

    with op.batch_alter_table('webhook_deliveries', schema=None) as batch_op:
        batch_op.drop_index('ix_webhook_deliveries_created')
        batch_op.drop_index('ix_webhook_deliveries_lease')
        batch_op.drop_index('ix_webhook_deliveries_status_tenant_next')

    with op.batch_alter_table('webhook_endpoints', schema=None) as batch_op:
        batch_op.drop_column('failing_since')
        batch_op.drop_column('consecutive_failures')
        batch_op.drop_column('rate_next_at')
        batch_op.drop_column('rate_limit_per_second')
