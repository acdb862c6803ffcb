from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

from services.users.emails import Email
from shared.contract import ALL_SCOPES, DEFAULT_PLAN, KEY_HASH_RE, MAX_CREDIT_LIMIT_CENTS, Plan, Role
from shared.schemas import PLAIN_TEXT_PATTERN

MAX_ROTATION_GRACE_SECONDS = 30 * 86400


class TenantCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"name": "Acme", "plan": "pro", "admin_email": "ada@example.com", "admin_password": "s3cret-pass"}
            ]
        },
    )

    name: str = Field(min_length=1, max_length=200, pattern=PLAIN_TEXT_PATTERN)
    plan: Plan = DEFAULT_PLAN
    admin_email: Email
    admin_password: str = Field(min_length=8, max_length=128)


class TenantOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    name: str
    plan: Plan


class UserCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"email": "grace@example.com", "password": "an0ther-pass", "role": "member"}]},
    )

    email: Email
    password: str = Field(min_length=8, max_length=128)
    role: Role = "member"


class UserOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    email: str
    role: Role
    tenant_id: str
    created_at: datetime
    # The limit in force: the user's own, else the default of the tenant's plan.
    credit_limit_cents: int
    # True when an admin set the user's own limit; False when it is the plan's default.
    credit_limit_custom: bool


class UserUpdate(BaseModel):
    """What an admin may change about a user. `credit_limit_cents: null` returns to the plan's default."""

    model_config = ConfigDict(extra="forbid")

    credit_limit_cents: int | None = Field(strict=True, ge=0, le=MAX_CREDIT_LIMIT_CENTS)


class TenantCreated(BaseModel):
    tenant: TenantOut
    user: UserOut


class TokenRequest(BaseModel):
    """The OAuth2 password form (`application/x-www-form-urlencoded`): the email as `username`."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"username": "ada@example.com", "password": "s3cret-pass"}]}
    )

    username: str = Field(max_length=320, pattern=PLAIN_TEXT_PATTERN)
    password: str = Field(max_length=128)


class TokenOut(BaseModel):
    access_token: str
    token_type: str = "bearer"
    expires_in: int


def _known_scopes(scopes: list[str]) -> list[str]:
    unknown = sorted(set(scopes) - ALL_SCOPES)
    if unknown:
        raise ValueError(f"unknown scopes {', '.join(unknown)}; known: {', '.join(sorted(ALL_SCOPES))}")
    return sorted(set(scopes))


class ApiKeyCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"name": "reporting", "scopes": ["orders:read"]}]}
    )

    name: str = Field(min_length=1, max_length=100, pattern=PLAIN_TEXT_PATTERN)
    scopes: Annotated[list[str], AfterValidator(_known_scopes)] = Field(min_length=1, max_length=len(ALL_SCOPES))


class ApiKeyRotate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # How long the old key keeps working; the service's default when omitted.
    grace_seconds: int | None = Field(default=None, ge=0, le=MAX_ROTATION_GRACE_SECONDS)


class ApiKeyOut(BaseModel):
    """A key as listings show it: never the key itself, only its last characters."""

    model_config = ConfigDict(from_attributes=True)

    id: str
    name: str
    scopes: list[str]
    hint: str
    tenant_id: str
    created_by: str
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None
    expires_at: datetime | None
    replaced_by: str | None

    @field_validator("scopes", mode="before")
    @classmethod
    def _scope_list(cls, scopes: object) -> object:
        # Stored space-separated, as in an OAuth `scope` claim.
        return sorted(set(scopes.split())) if isinstance(scopes, str) else scopes


class ApiKeyCreated(ApiKeyOut):
    """The one answer that holds the raw key."""

    api_key: str


class ApiKeyRotated(ApiKeyCreated):
    """The new key, and the old one with the end of its grace period."""

    previous: ApiKeyOut


class ApiKeyResolve(BaseModel):
    model_config = ConfigDict(extra="forbid")

    key_hash: str = Field(pattern=KEY_HASH_RE.pattern)


class ApiKeyResolved(BaseModel):
    """What the gateway needs to turn a key into an identity."""

    id: str
    tenant_id: str
    plan: Plan
    scopes: list[str]
    created_by: str
    # The tenant's own monthly request quota, where an operator set one (null: the plan's).
    monthly_quota: int | None = None
    expires_at: datetime | None
