from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import SettingsConfigDict

from shared.settings import BaseServiceSettings


class UsersSettings(BaseServiceSettings):
    model_config = SettingsConfigDict(env_prefix="USERS_", extra="ignore", frozen=True)
    secret_fields: ClassVar[tuple[str, ...]] = ("internal_token_secret", "jwt_secret")

    port: int = 8001
    database_url: str = "sqlite+aiosqlite:///./var/users.db"

    jwt_algorithm: Literal["HS256", "RS256"] = "HS256"
    # HS256 signing secret (shared with the gateway); unused with RS256.
    jwt_secret: SecretStr | None = SecretStr("dev-jwt-secret-change-me")
    # RS256 signing key, PEM; the gateway holds the matching public key.
    jwt_private_key: SecretStr | None = None
    jwt_kid: str = "portico-1"
    jwt_issuer: str = "portico"
    access_token_ttl_seconds: int = Field(default=3600, ge=60, le=86400)
    # How long a rotated API key keeps working, unless the rotation asks for another period.
    api_key_rotation_grace_seconds: int = Field(default=86400, ge=0, le=30 * 86400)

    @model_validator(mode="after")
    def _key_for_algorithm(self) -> UsersSettings:
        if self.jwt_algorithm == "RS256" and self.jwt_private_key is None:
            raise ValueError("USERS_JWT_PRIVATE_KEY is required with RS256")
        if self.jwt_algorithm == "HS256" and self.jwt_secret is None:
            raise ValueError("USERS_JWT_SECRET is required with HS256")
        return self
