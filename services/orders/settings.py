from __future__ import annotations

from pydantic_settings import SettingsConfigDict

from shared.settings import BaseServiceSettings


class OrdersSettings(BaseServiceSettings):
    model_config = SettingsConfigDict(env_prefix="ORDERS_", extra="ignore", frozen=True)

    port: int = 8002
    database_url: str = "sqlite+aiosqlite:///./var/orders.db"
