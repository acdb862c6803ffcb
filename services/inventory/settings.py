from __future__ import annotations

from shared.settings import BaseServiceSettings, process_config, service_database, service_port


class InventorySettings(BaseServiceSettings):
    model_config = process_config("inventory")

    port: int = service_port("inventory")
    database_url: str = service_database("inventory")
