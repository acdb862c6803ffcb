from __future__ import annotations

from shared.contract import PROCESSES
from shared.settings import BaseServiceSettings, process_config, sqlite_url


class InventorySettings(BaseServiceSettings):
    model_config = process_config("inventory")

    port: int = PROCESSES["inventory"].port
    """The port the inventory service listens on."""
    database_url: str = sqlite_url("inventory")
    """The inventory database: a SQLite file under ./var by default, `postgresql+asyncpg://...` for PostgreSQL."""
