"""stock bounds: a product's stock is at most 1,000,000,000 units, in the database too

Rows already above the maximum (a release used to add without the bound) are brought down to it, and
each such change is kept as a stock adjustment, so the product's history says what happened.

Revision ID: 0002_stock_bounds
Revises: 0001

"""
import uuid
from datetime import UTC, datetime
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa

import shared.db


# revision identifiers, used by Alembic.
revision: str = '0002_stock_bounds'
down_revision: Union[str, Sequence[str], None] = '0001'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

# Written out rather than imported: a migration keeps meaning what it meant when it was written.
MAX_STOCK = 1_000_000_000
CONSTRAINT = "ck_products_stock_at_most_max"

products = sa.table(
    "products",
    sa.column("id", sa.String),
    sa.column("tenant_id", sa.String),
    sa.column("stock", sa.BigInteger),
    sa.column("updated_at", shared.db.UTCDateTime()),
)
adjustments = sa.table(
    "stock_adjustments",
    sa.column("id", sa.String),
    sa.column("tenant_id", sa.String),
    sa.column("product_id", sa.String),
    sa.column("delta", sa.BigInteger),
    sa.column("reason", sa.String),
    sa.column("stock_after", sa.BigInteger),
    sa.column("created_at", shared.db.UTCDateTime()),
)


def upgrade() -> None:
    """Upgrade schema."""
    connection = op.get_bind()
    now = datetime.now(UTC)
    over = connection.execute(
        sa.select(products.c.id, products.c.tenant_id, products.c.stock).where(products.c.stock > MAX_STOCK)
    ).all()
    for product in over:
        connection.execute(
            adjustments.insert().values(
                id=str(uuid.uuid4()),
                tenant_id=product.tenant_id,
                product_id=product.id,
                delta=MAX_STOCK - product.stock,
                reason="stock above the maximum brought down to it",
                stock_after=MAX_STOCK,
                created_at=now,
            )
        )
        connection.execute(
            products.update().where(products.c.id == product.id).values(stock=MAX_STOCK, updated_at=now)
        )
    with op.batch_alter_table("products", schema=None) as batch_op:
        batch_op.create_check_constraint(CONSTRAINT, f"stock <= {MAX_STOCK}")


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table("products", schema=None) as batch_op:
        batch_op.drop_constraint(CONSTRAINT, type_="check")
