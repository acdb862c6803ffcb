from services.orders.app import MIGRATIONS_DIR, create_app
from services.orders.settings import OrdersSettings
from shared.cli import run_cli

run_cli("services.orders", OrdersSettings, create_app, MIGRATIONS_DIR)
