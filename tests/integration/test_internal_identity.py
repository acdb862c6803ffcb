"""The internal identity token at a real service (the users service in-process on PostgreSQL): every
claim its checks rely on is required, its lifetime is bounded, and a refusal says nothing about why."""

from __future__ import annotations

import time
from typing import Any

import pytest
from jose import jwt

from shared.contract import IDENTITY_ALGORITHM, IDENTITY_HEADER, IDENTITY_ISSUER
from tests.conftest import INTERNAL_SECRET
from tests.orders_support import bootstrap_tenant

GENERIC_DETAIL = "The internal identity token is invalid."
TTL = 60  # the test services' INTERNAL_TOKEN_TTL_SECONDS (the default)


def token(claims: dict[str, Any], *, drop: str | None = None) -> dict[str, str]:
    if drop is not None:
        claims = {name: value for name, value in claims.items() if name != drop}
    return {IDENTITY_HEADER: jwt.encode(claims, INTERNAL_SECRET, algorithm=IDENTITY_ALGORITHM)}


@pytest.fixture
async def claims(users_client, signer) -> dict[str, Any]:
    admin = await bootstrap_tenant(users_client, signer)
    now = int(time.time())
    return {
        "sub": admin.subject,
        "tid": admin.tenant_id,
        "scope": " ".join(sorted(admin.scopes)),
        "plan": admin.plan,
        "role": admin.role,
        "iss": IDENTITY_ISSUER,
        "aud": "users",
        "iat": now,
        "exp": now + TTL,
    }


async def refused(users_client, headers: dict[str, str]) -> None:
    response = await users_client.get("/users/me", headers=headers)
    assert response.status_code == 401, response.text
    problem = response.json()
    assert problem["error_code"] == "INVALID_INTERNAL_IDENTITY"
    # Nothing of the library's reason reaches the caller.
    assert problem["detail"] == GENERIC_DETAIL
    assert response.headers["www-authenticate"].startswith("PorticoInternal")


async def test_a_well_formed_token_is_accepted(users_client, claims):
    response = await users_client.get("/users/me", headers=token(claims))
    assert response.status_code == 200, response.text
    assert response.json()["id"] == claims["sub"]


@pytest.mark.parametrize("claim", ["iss", "aud", "sub", "iat", "exp"])
async def test_a_token_without_a_required_claim_is_refused(users_client, claims, claim):
    await refused(users_client, token(claims, drop=claim))


async def test_a_token_living_longer_than_the_configured_lifetime_is_refused(users_client, claims):
    now = int(time.time())
    await refused(users_client, token({**claims, "iat": now, "exp": now + 3600}))
    # Dated in the future, with a lifetime that looks right: it would be good for a year.
    later = now + 365 * 86400
    await refused(users_client, token({**claims, "iat": later, "exp": later + TTL}))
    # Within the lifetime and a few seconds of clock skew: fine.
    ok = await users_client.get("/users/me", headers=token({**claims, "iat": now + 2, "exp": now + 2 + TTL}))
    assert ok.status_code == 200, ok.text


async def test_wrong_audience_issuer_or_key_and_garbage_say_nothing_more(users_client, claims):
    await refused(users_client, token({**claims, "aud": "orders"}))
    await refused(users_client, token({**claims, "aud": ["orders", "inventory"]}))
    await refused(users_client, token({**claims, "iss": "someone"}))
    await refused(users_client, token({**claims, "exp": int(time.time()) - 60}))
    forged = jwt.encode(claims, "another-secret-" * 4, algorithm=IDENTITY_ALGORITHM)
    await refused(users_client, {IDENTITY_HEADER: forged})
    await refused(users_client, {IDENTITY_HEADER: "not-a-token"})
