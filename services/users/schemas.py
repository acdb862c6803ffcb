from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, JsonValue, field_validator
from pydantic.config import JsonDict

from services.users.emails import Email
from shared.contract import ALL_SCOPES, DEFAULT_PLAN, KEY_HASH_RE, MAX_CREDIT_LIMIT_CENTS, Plan, Role
from shared.schemas import PLAIN_TEXT_PATTERN, with_examples

MAX_ROTATION_GRACE_SECONDS = 30 * 86400

# Example values, one per resource, so the examples of the reference fit together.
EXAMPLE_TENANT_ID = "b7e3c1d2-4f5a-4e6b-9c8d-7a6b5c4d3e2f"
EXAMPLE_USER_ID = "7c9e6679-7425-40de-944b-e07fc1f90ae7"
EXAMPLE_KEY_ID = "1f0e3dad-9990-4e64-a0b4-4f6e0a7c3c21"
EXAMPLE_TENANT: JsonDict = {"id": EXAMPLE_TENANT_ID, "name": "Acme", "plan": "pro"}
EXAMPLE_USER: JsonDict = {
    "id": EXAMPLE_USER_ID,
    "email": "ada@example.com",
    "role": "admin",
    "tenant_id": EXAMPLE_TENANT_ID,
    "created_at": "2026-01-31T09:30:00Z",
    "credit_limit_cents": 100000,
    "credit_limit_custom": False,
}
EXAMPLE_KEY: JsonDict = {
    "id": EXAMPLE_KEY_ID,
    "name": "reporting",
    "scopes": ["orders:read"],
    "hint": "x7Qa",
    "tenant_id": EXAMPLE_TENANT_ID,
    "created_by": EXAMPLE_USER_ID,
    "created_at": "2026-01-31T09:45:00Z",
    "last_used_at": None,
    "revoked_at": None,
    "expires_at": None,
    "replaced_by": None,
}
EXAMPLE_RAW_KEY = "sk_Jb3xw0cKq1Z9nR2mT8vY4uL6pS5oE7aH3gF1dC0x7Qa"


class TenantCreate(BaseModel):
    model_config = with_examples(
        {"name": "Acme", "plan": "pro", "admin_email": "ada@example.com", "admin_password": "s3cret-pass"},
        extra="forbid",
    )

    name: str = Field(min_length=1, max_length=200, pattern=PLAIN_TEXT_PATTERN)
    plan: Plan = DEFAULT_PLAN
    admin_email: Email
    admin_password: str = Field(min_length=8, max_length=128)


class TenantOut(BaseModel):
    model_config = with_examples(EXAMPLE_TENANT, from_attributes=True)

    id: str
    name: str
    plan: Plan


class UserCreate(BaseModel):
    model_config = with_examples(
        {"email": "grace@example.com", "password": "an0ther-pass", "role": "member"}, extra="forbid"
    )

    email: Email
    password: str = Field(min_length=8, max_length=128)
    role: Role = "member"


class UserOut(BaseModel):
    model_config = with_examples(EXAMPLE_USER, from_attributes=True)

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

    model_config = with_examples({"credit_limit_cents": 250000}, extra="forbid")

    credit_limit_cents: int | None = Field(strict=True, ge=0, le=MAX_CREDIT_LIMIT_CENTS)


class TenantCreated(BaseModel):
    model_config = with_examples({"tenant": EXAMPLE_TENANT, "user": EXAMPLE_USER})

    tenant: TenantOut
    user: UserOut


class TokenRequest(BaseModel):
    """The OAuth2 password form (`application/x-www-form-urlencoded`): the email as `username`."""

    model_config = with_examples({"username": "ada@example.com", "password": "s3cret-pass"})

    # An empty field is no field in a form (FastAPI reads it as missing): at least one character.
    username: str = Field(min_length=1, max_length=320, pattern=PLAIN_TEXT_PATTERN)
    password: str = Field(min_length=1, max_length=128)


class TokenOut(BaseModel):
    model_config = with_examples(
        {
            "access_token": "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiI3YzllNjY3OSJ9.3q2-7w",
            "token_type": "bearer",
            "expires_in": 3600,
        }
    )

    access_token: str
    token_type: str = "bearer"
    expires_in: int


SCOPE_NAMES: list[JsonValue] = [*sorted(ALL_SCOPES)]


def _known_scopes(scopes: list[str]) -> list[str]:
    unknown = sorted(set(scopes) - ALL_SCOPES)
    if unknown:
        raise ValueError(f"unknown scopes {', '.join(unknown)}; known: {', '.join(sorted(ALL_SCOPES))}")
    return sorted(set(scopes))


class ApiKeyCreate(BaseModel):
    model_config = with_examples({"name": "reporting", "scopes": ["orders:read"]}, extra="forbid")

    name: str = Field(min_length=1, max_length=100, pattern=PLAIN_TEXT_PATTERN)
    scopes: Annotated[list[str], AfterValidator(_known_scopes)] = Field(
        min_length=1,
        max_length=len(ALL_SCOPES),
        # The schema names the scopes there are, which the validator checks.
        json_schema_extra={"items": {"type": "string", "enum": SCOPE_NAMES}},
    )


class ApiKeyRotate(BaseModel):
    model_config = with_examples({"grace_seconds": 86400}, extra="forbid")

    # How long the old key keeps working; the service's default when omitted.
    grace_seconds: int | None = Field(default=None, ge=0, le=MAX_ROTATION_GRACE_SECONDS)


class ApiKeyOut(BaseModel):
    """A key as listings show it: never the key itself, only its last characters."""

    model_config = with_examples(EXAMPLE_KEY, from_attributes=True)

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

    model_config = with_examples({**EXAMPLE_KEY, "api_key": EXAMPLE_RAW_KEY})

    api_key: str


class ApiKeyRotated(ApiKeyCreated):
    """The new key, and the old one with the end of its grace period."""

    model_config = with_examples(
        {
            **EXAMPLE_KEY,
            "id": "6d1b8f3e-2c4a-4e9b-8f7d-3a2b1c0d9e8f",
            "created_at": "2026-02-28T10:00:00Z",
            "api_key": EXAMPLE_RAW_KEY,
            "previous": {
                **EXAMPLE_KEY,
                "expires_at": "2026-03-01T10:00:00Z",
                "replaced_by": "6d1b8f3e-2c4a-4e9b-8f7d-3a2b1c0d9e8f",
            },
        }
    )

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


class Jwks(BaseModel):
    """A JSON Web Key Set (RFC 7517): the public keys access tokens are signed with, by `kid`."""

    model_config = with_examples(
        {
            "keys": [
                {
                    "kty": "RSA",
                    "use": "sig",
                    "alg": "RS256",
                    "kid": "2026-01-31",
                    "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6t",
                    "e": "AQAB",
                }
            ]
        }
    )

    keys: list[dict[str, Any]]
