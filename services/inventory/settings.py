from __future__ import annotations

from pydantic import Field

from shared.contract import PROCESSES
from shared.settings import BaseServiceSettings, process_config, sqlite_url


class InventorySettings(BaseServiceSettings):
    model_config = process_config("inventory")

    port: int = Field(default=PROCESSES["inventory"].port, description="The port the inventory service listens on.")
    database_url: str = Field(
        default=sqlite_url("inventory"),
        description=(
            "The inventory database: a SQLite file under ./var by default, `postgresql+asyncpg://...` for PostgreSQL."
        ),
    )
