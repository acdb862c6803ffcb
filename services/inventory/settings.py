from __future__ import annotations

from pydantic_settings import SettingsConfigDict

from shared.settings import BaseServiceSettings


class InventorySettings(BaseServiceSettings):
    model_config = SettingsConfigDict(env_prefix="INVENTORY_", extra="ignore", frozen=True)

    port: int = 8003
    database_url: str = "sqlite+aiosqlite:///./var/inventory.db"
