from services.webhooks.app import MIGRATIONS_DIR, create_app
from services.webhooks.settings import WebhooksSettings
from shared.cli import alembic_migrations, run_cli

run_cli("services.webhooks", WebhooksSettings, create_app, alembic_migrations(MIGRATIONS_DIR))
