from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import AnyHttpUrl, SecretStr, model_validator
from pydantic_settings import SettingsConfigDict

from shared.settings import BaseServiceSettings


class GatewaySettings(BaseServiceSettings):
    model_config = SettingsConfigDict(env_prefix="GATEWAY_", extra="ignore", frozen=True)
    secret_fields: ClassVar[tuple[str, ...]] = ("internal_token_secret", "jwt_secret")

    port: int = 8000
    # The gateway keeps no database of its own; this is unused and kept for the shared base.
    database_url: str = "sqlite+aiosqlite:///:memory:"

    users_url: AnyHttpUrl = AnyHttpUrl("http://127.0.0.1:8001")
    orders_url: AnyHttpUrl = AnyHttpUrl("http://127.0.0.1:8002")
    inventory_url: AnyHttpUrl = AnyHttpUrl("http://127.0.0.1:8003")
    webhooks_url: AnyHttpUrl = AnyHttpUrl("http://127.0.0.1:8004")

    # Unset: in-process stores (one gateway process). Set: Redis, shared by every gateway instance.
    redis_url: str | None = None
    # Every key the gateway writes starts with this, so several deployments (or test runs) can share
    # one Redis.
    redis_key_prefix: str = "portico:"

    # Verification of access tokens issued by the users service.
    jwt_algorithm: Literal["HS256", "RS256"] = "HS256"
    jwt_secret: SecretStr | None = SecretStr("dev-jwt-secret-change-me")
    jwt_public_key: str | None = None
    jwt_kid: str = "portico-1"
    jwt_issuer: str = "portico"
    # Tokens are accepted this many seconds past `exp` to absorb clock skew between hosts.
    jwt_leeway_seconds: int = 10

    ready_timeout_seconds: float = 2.0

    @model_validator(mode="after")
    def _key_for_algorithm(self) -> GatewaySettings:
        if self.jwt_algorithm == "RS256" and not self.jwt_public_key:
            raise ValueError("GATEWAY_JWT_PUBLIC_KEY is required with RS256")
        if self.jwt_algorithm == "HS256" and self.jwt_secret is None:
            raise ValueError("GATEWAY_JWT_SECRET is required with HS256")
        return self

    def service_urls(self) -> dict[str, str]:
        return {
            "users": str(self.users_url),
            "orders": str(self.orders_url),
            "inventory": str(self.inventory_url),
            "webhooks": str(self.webhooks_url),
        }
