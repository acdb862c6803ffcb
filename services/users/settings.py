from __future__ import annotations

import os
from typing import Annotated, ClassVar

from pydantic import (
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    SecretStr,
    field_validator,
    model_validator,
)

from shared.contract import MAX_CREDIT_LIMIT_CENTS, PLANS
from shared.settings import (
    AccessTokenSettings,
    AtLeastOne,
    BaseServiceSettings,
    ListSetting,
    process_config,
    service_database,
    service_port,
)

# What anyone may choose at sign-up unless the deployment says otherwise (USERS_SIGNUP_PLANS).
DEFAULT_SIGNUP_PLANS: tuple[str, ...] = ("free", "pro")
CreditLimit = Annotated[int, Field(ge=0, le=MAX_CREDIT_LIMIT_CENTS)]


class UsersSettings(BaseServiceSettings, AccessTokenSettings):
    model_config = process_config("users")
    secret_fields: ClassVar[tuple[str, ...]] = ("internal_token_secret", "jwt_secret")

    port: int = service_port("users")
    database_url: str = service_database("users")

    jwt_private_key: SecretStr | None = None
    """RS256: keys are kept in the database, rotated and published as a JWKS (services/users/signing.py). This PEM, when
    given, is the first of them (with `jwt_kid`); otherwise one is generated."""
    jwt_key_rotation_seconds: PositiveFloat = 30 * 86400
    """RS256: how old the newest signing key gets before the next is made."""
    jwt_key_activation_seconds: NonNegativeFloat = 60
    """RS256: how long a new key is published before it signs; keep it above the gateways' GATEWAY_JWKS_REFRESH_SECONDS
    plus `jwt_key_refresh_seconds`."""
    jwt_key_refresh_seconds: PositiveFloat = 30
    """RS256: how often each instance reads the signing keys again."""
    access_token_ttl_seconds: Annotated[int, Field(ge=60, le=86400)] = 3600
    """The lifetime of an access token."""
    api_key_rotation_grace_seconds: Annotated[int, Field(ge=0, le=30 * 86400)] = 86400
    """How long a rotated API key keeps working, unless the rotation asks for another period."""

    password_hash_concurrency: AtLeastOne = Field(
        default_factory=lambda: os.cpu_count() or 1, json_schema_extra={"default_text": "the CPU cores"}
    )
    """Password hashes and checks (argon2, in threads) run at most this many at once; default: the CPU cores. No
    database connection is held while a password is hashed or verified."""
    password_hash_queue: NonNegativeInt = 32
    """Logins and sign-ups waiting for a hashing slot; beyond it they are refused with 503 and Retry-After."""
    password_hash_queue_timeout_seconds: PositiveFloat = 5.0
    """A caller that waited this long without its turn is refused the same way (keep it below the gateway's
    GATEWAY_HTTP_TIMEOUT_SECONDS, so the client gets the 503 rather than a 504)."""
    login_free_failures: NonNegativeInt = 5
    """Per account: this many consecutive wrong passwords are free (an attempt counts as one until its password proves
    good); each further one makes the next attempt wait 1 s, 2 s, 4 s, ... up to `login_max_delay_seconds` (429 with
    Retry-After meanwhile)."""
    login_max_delay_seconds: Annotated[int, Field(ge=1, le=3600)] = 60
    """The longest a throttled account waits for its next login."""
    signup_plans: ListSetting = Field(default_factory=lambda: list(DEFAULT_SIGNUP_PLANS), min_length=1)
    """The plans self-service sign-up (POST /v1/tenants, anonymous) may choose, comma-separated; another plan is refused
    with 403 PLAN_NOT_SELF_SERVICE and given by an operator (`python -m services.users set-plan <tenant_id> <plan>`)."""
    credit_limit_free_cents: CreditLimit = 100_000
    """What a user's open orders may add up to on the free plan, unless an admin set the user's own limit
    (PATCH /users/{id} with credit_limit_cents)."""
    credit_limit_pro_cents: CreditLimit = 10_000_000
    """The same on the pro plan."""
    credit_limit_enterprise_cents: CreditLimit = 100_000_000
    """The same on the enterprise plan."""

    def credit_limit_of(self, plan: str) -> int:
        """The default credit limit of a plan (an unknown plan has the smallest, the free plan's)."""
        limits = {
            "free": self.credit_limit_free_cents,
            "pro": self.credit_limit_pro_cents,
            "enterprise": self.credit_limit_enterprise_cents,
        }
        return limits.get(plan, self.credit_limit_free_cents)

    @field_validator("signup_plans")
    @classmethod
    def _known_plans(cls, plans: list[str]) -> list[str]:
        unknown = sorted(set(plans) - set(PLANS))
        if unknown:
            raise ValueError(f"unknown plans {', '.join(unknown)}; known: {', '.join(PLANS)}")
        # In the plans' own order, each once, whatever order the setting gave.
        return [plan for plan in PLANS if plan in plans]

    @model_validator(mode="after")
    def _key_for_algorithm(self) -> UsersSettings:
        if self.jwt_algorithm == "HS256" and self.jwt_secret is None:
            raise ValueError("USERS_JWT_SECRET is required with HS256")
        return self
