"""tenant quota: a tenant's own monthly request quota, given by an operator (`set-quota`)

Revision ID: 0007_tenant_quota
Revises: 0006_canonical_emails

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = '0007_tenant_quota'
down_revision: Union[str, Sequence[str], None] = '0006_canonical_emails'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    with op.batch_alter_table("tenants") as batch:
        batch.add_column(sa.Column("monthly_quota", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("tenants") as batch:
        batch.drop_column("monthly_quota")
