from services.webhooks import receiver, worker_app
from services.webhooks.app import MIGRATIONS_DIR, create_app
from services.webhooks.settings import WebhooksSettings
from shared.cli import run_cli

run_cli(
    "services.webhooks",
    WebhooksSettings,
    create_app,
    MIGRATIONS_DIR,
    commands={"worker": worker_app.main, "receiver": receiver.main},
)
