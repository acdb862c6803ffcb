from services.users.app import MIGRATIONS_DIR, create_app
from services.users.commands import TASKS
from services.users.settings import UsersSettings
from shared.cli import alembic_migrations, run_cli

run_cli("services.users", UsersSettings, create_app, alembic_migrations(MIGRATIONS_DIR), tasks=TASKS)
