from __future__ import annotations

import os
from typing import ClassVar

from pydantic import Field, SecretStr, model_validator

from shared.contract import MAX_CREDIT_LIMIT_CENTS, PROCESSES
from shared.settings import AccessTokenSettings, BaseServiceSettings, process_config, sqlite_url


class UsersSettings(BaseServiceSettings, AccessTokenSettings):
    model_config = process_config("users")
    secret_fields: ClassVar[tuple[str, ...]] = ("internal_token_secret", "jwt_secret")

    port: int = Field(default=PROCESSES["users"].port, description="The port the users service listens on.")
    database_url: str = Field(
        default=sqlite_url("users"),
        description=(
            "The users database: a SQLite file under ./var by default, `postgresql+asyncpg://...` for PostgreSQL."
        ),
    )

    jwt_private_key: SecretStr | None = Field(
        default=None,
        description=(
            "RS256: keys are kept in the database, rotated and published as a JWKS (services/users/signing.py). "
            "This PEM, when given, is the first of them (with `jwt_kid`); otherwise one is generated."
        ),
    )
    jwt_key_rotation_seconds: float = Field(
        default=30 * 86400, gt=0, description="RS256: how old the newest signing key gets before the next is made."
    )
    jwt_key_activation_seconds: float = Field(
        default=60,
        ge=0,
        description=(
            "RS256: how long a new key is published before it signs; keep it above the gateways' "
            "GATEWAY_JWKS_REFRESH_SECONDS plus `jwt_key_refresh_seconds`."
        ),
    )
    jwt_key_refresh_seconds: float = Field(
        default=30, gt=0, description="RS256: how often each instance reads the signing keys again."
    )
    access_token_ttl_seconds: int = Field(default=3600, ge=60, le=86400, description="The lifetime of an access token.")
    api_key_rotation_grace_seconds: int = Field(
        default=86400,
        ge=0,
        le=30 * 86400,
        description="How long a rotated API key keeps working, unless the rotation asks for another period.",
    )

    password_hash_concurrency: int = Field(
        default_factory=lambda: os.cpu_count() or 1,
        ge=1,
        # The default depends on the machine: the settings reference names it instead of a number.
        json_schema_extra={"default_text": "the CPU cores"},
        description=(
            "Password hashes and checks (argon2, in threads) run at most this many at once; default: the CPU "
            "cores. No database connection is held while a password is hashed or verified."
        ),
    )
    password_hash_queue: int = Field(
        default=32,
        ge=0,
        description=(
            "Logins and sign-ups waiting for a hashing slot; beyond it they are refused with 503 and Retry-After."
        ),
    )
    password_hash_queue_timeout_seconds: float = Field(
        default=5.0,
        gt=0,
        description=(
            "A caller that waited this long without its turn is refused the same way (keep it below the gateway's "
            "GATEWAY_HTTP_TIMEOUT_SECONDS, so the client gets the 503 rather than a 504)."
        ),
    )
    login_free_failures: int = Field(
        default=5,
        ge=0,
        description=(
            "Per account: this many consecutive wrong passwords are free; each further one makes the next attempt "
            "wait 1 s, 2 s, 4 s, ... up to `login_max_delay_seconds` (429 with Retry-After meanwhile)."
        ),
    )
    login_max_delay_seconds: int = Field(
        default=60, ge=1, le=3600, description="The longest a throttled account waits for its next login."
    )
    credit_limit_free_cents: int = Field(
        default=100_000,
        ge=0,
        le=MAX_CREDIT_LIMIT_CENTS,
        description=(
            "What a user's open orders may add up to on the free plan, unless an admin set the user's own limit "
            "(PATCH /users/{id} with credit_limit_cents)."
        ),
    )
    credit_limit_pro_cents: int = Field(
        default=10_000_000, ge=0, le=MAX_CREDIT_LIMIT_CENTS, description="The same on the pro plan."
    )
    credit_limit_enterprise_cents: int = Field(
        default=100_000_000, ge=0, le=MAX_CREDIT_LIMIT_CENTS, description="The same on the enterprise plan."
    )

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
        if self.jwt_algorithm == "HS256" and self.jwt_secret is None:
            raise ValueError("USERS_JWT_SECRET is required with HS256")
        return self
