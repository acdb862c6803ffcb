from services.webhooks.app import MIGRATIONS_DIR, WORKER, create_app, create_worker_app
from services.webhooks.settings import WebhooksSettings
from shared.cli import Served, alembic_migrations, run_cli


def worker_port(settings: WebhooksSettings) -> int:
    return settings.worker_port


delivery_worker: Served[WebhooksSettings] = Served(WORKER.name, create_worker_app, worker_port)
run_cli(
    "services.webhooks",
    WebhooksSettings,
    create_app,
    alembic_migrations(MIGRATIONS_DIR),
    workers={WORKER.command: delivery_worker},
)
