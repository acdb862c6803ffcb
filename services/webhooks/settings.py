from __future__ import annotations

from pydantic_settings import SettingsConfigDict

from shared.settings import BaseServiceSettings


class WebhooksSettings(BaseServiceSettings):
    model_config = SettingsConfigDict(env_prefix="WEBHOOKS_", extra="ignore", frozen=True)

    port: int = 8004
    database_url: str = "sqlite+aiosqlite:///./var/webhooks.db"
