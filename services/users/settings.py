from __future__ import annotations

from typing import ClassVar

from pydantic import Field, SecretStr, model_validator

from shared.contract import MAX_CREDIT_LIMIT_CENTS, PROCESSES
from shared.settings import AccessTokenSettings, BaseServiceSettings, process_config, sqlite_url


class UsersSettings(BaseServiceSettings, AccessTokenSettings):
    model_config = process_config("users")
    secret_fields: ClassVar[tuple[str, ...]] = ("internal_token_secret", "jwt_secret")

    port: int = PROCESSES["users"].port
    database_url: str = sqlite_url("users")

    # RS256 signing key, PEM; the gateway holds the matching public key.
    jwt_private_key: SecretStr | None = None
    access_token_ttl_seconds: int = Field(default=3600, ge=60, le=86400)
    # How long a rotated API key keeps working, unless the rotation asks for another period.
    api_key_rotation_grace_seconds: int = Field(default=86400, ge=0, le=30 * 86400)

    # What a user's open orders may add up to, by the tenant's plan, unless an admin set the user's
    # own limit (PATCH /users/{id} with credit_limit_cents).
    credit_limit_free_cents: int = Field(default=100_000, ge=0, le=MAX_CREDIT_LIMIT_CENTS)
    credit_limit_pro_cents: int = Field(default=10_000_000, ge=0, le=MAX_CREDIT_LIMIT_CENTS)
    credit_limit_enterprise_cents: int = Field(default=100_000_000, ge=0, le=MAX_CREDIT_LIMIT_CENTS)

    def credit_limit_of(self, plan: str) -> int:
        """The default credit limit of a plan (an unknown plan has the smallest, the free plan's)."""
        limits = {
            "free": self.credit_limit_free_cents,
            "pro": self.credit_limit_pro_cents,
            "enterprise": self.credit_limit_enterprise_cents,
        }
        return limits.get(plan, self.credit_limit_free_cents)

    @model_validator(mode="after")
    def _key_for_algorithm(self) -> UsersSettings:
        if self.jwt_algorithm == "RS256" and self.jwt_private_key is None:
            raise ValueError("USERS_JWT_PRIVATE_KEY is required with RS256")
        if self.jwt_algorithm == "HS256" and self.jwt_secret is None:
            raise ValueError("USERS_JWT_SECRET is required with HS256")
        return self
