from services.inventory.app import MIGRATIONS_DIR, create_app
from services.inventory.settings import InventorySettings
from shared.cli import alembic_migrations, run_cli

run_cli("services.inventory", InventorySettings, create_app, alembic_migrations(MIGRATIONS_DIR))
