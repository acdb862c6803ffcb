from services.orders.app import MIGRATIONS_DIR, create_app
from services.orders.settings import OrdersSettings
from shared.cli import alembic_migrations, run_cli

run_cli("services.orders", OrdersSettings, create_app, alembic_migrations(MIGRATIONS_DIR))
