"""Failed authentication is limited per client address, whatever credential comes with it, before any
upstream call: in-process gateways in front of the real services (PostgreSQL), counting in Redis
(and alone while Redis is down)."""

from __future__ import annotations

import secrets
import uuid

import httpx
import pytest

from shared.contract import API_KEY_PREFIX
from tests.edge_support import (
    PASSWORD,
    bearer,
    gateway_settings,
    in_process_gateway,
    private_redis,
    private_redis_settings,
    signup,
    unique_prefix,
)


def from_address(address: str) -> dict[str, str]:
    # The in-process gateway's peer is 127.0.0.1, a trusted proxy in these tests: the address the
    # proxy names is the client.
    return {"X-Forwarded-For": address}


def random_address() -> str:
    return f"2001:db8::{secrets.token_hex(2)}:{secrets.token_hex(2)}"


async def served(stack, route: str) -> float:
    """How many requests the users service answered on `route` (its own /metrics)."""
    async with httpx.AsyncClient(base_url=stack.url("users")) as users:
        text = (await users.get("/metrics")).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("http_requests_total{") and f'route="{route}"' in line
    )


def unknown_key() -> str:
    return API_KEY_PREFIX + secrets.token_urlsafe(32)


def assert_limited(response: httpx.Response) -> None:
    assert response.status_code == 429, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["error_code"] == "TOO_MANY_AUTH_FAILURES"
    assert body["limit"] == 3
    assert 1 <= int(response.headers["retry-after"]) <= 120


@pytest.fixture
def settings(stack, infra):
    return gateway_settings(
        stack,
        redis_url=infra.redis_url,
        redis_key_prefix=unique_prefix(infra.redis_prefix),
        auth_failure_limit="3/60s",
        trusted_proxies=["127.0.0.1"],
    )


async def test_bad_tokens_and_keys_share_one_budget_per_address(stack, settings):
    async with in_process_gateway(settings) as gateway:
        tenant = await signup(gateway)
        attacker = from_address(random_address())
        codes = [
            (await gateway.get("/v1/users/me", headers={**attacker, "Authorization": "Bearer nope"})).status_code,
            (await gateway.get("/v1/users/me", headers={**attacker, "X-API-Key": "malformed"})).status_code,
            (await gateway.get("/v1/users/me", headers={**attacker, "X-API-Key": unknown_key()})).status_code,
        ]
        assert codes == [401, 401, 401]
        assert_limited(await gateway.get("/v1/users/me", headers={**attacker, "Authorization": "Bearer nope"}))
        # Past the budget an unknown key is refused before the users service is asked.
        resolved = await served(stack, "/api-keys/resolve")
        for _ in range(5):
            assert_limited(await gateway.get("/v1/users/me", headers={**attacker, "X-API-Key": unknown_key()}))
        assert await served(stack, "/api-keys/resolve") == resolved
        # A credential that verifies is not held up, even from that address; other addresses are not affected.
        assert (await gateway.get("/v1/users/me", headers={**attacker, **tenant.auth})).status_code == 200
        other = from_address(random_address())
        answer = await gateway.get("/v1/users/me", headers={**other, "Authorization": "Bearer nope"})
        assert answer.status_code == 401
        metrics = (await gateway.get("/metrics")).text
        assert 'gateway_auth_failures_total{outcome="refused"}' in metrics


async def test_wrong_passwords_are_limited_per_address_whatever_token_comes_with_them(stack, settings):
    async with in_process_gateway(settings) as gateway:
        victim = await signup(gateway)
        own = await signup(gateway)  # the attacker's own throwaway tenant
        attacker = {**from_address(random_address()), **own.auth}
        for _ in range(3):
            wrong = await gateway.post(
                "/v1/auth/token", data={"username": victim.email, "password": "guess-123"}, headers=attacker
            )
            assert wrong.status_code == 401, wrong.text
        logins = await served(stack, "/auth/token")
        for password in ("guess-456", PASSWORD):
            refused = await gateway.post(
                "/v1/auth/token", data={"username": victim.email, "password": password}, headers=attacker
            )
            assert_limited(refused)
        # Refused before the users service was asked.
        assert await served(stack, "/auth/token") == logins
        # The owner, from another address, logs in.
        owner = await gateway.post(
            "/v1/auth/token",
            data={"username": victim.email, "password": PASSWORD},
            headers=from_address(random_address()),
        )
        assert owner.status_code == 200, owner.text


async def test_sign_up_is_limited_per_address_and_taken_emails_count(stack, settings):
    async with in_process_gateway(settings) as gateway:
        existing = await signup(gateway)
        prober = {**from_address(random_address()), **bearer("enterprise")}
        for _ in range(3):
            taken = await gateway.post(
                "/v1/tenants",
                json={"name": "Probe", "admin_email": existing.email, "admin_password": PASSWORD},
                headers=prober,
            )
            assert taken.status_code == 409
            # The route's quota counts per address too, whatever token is sent (not under the token's tenant).
            assert taken.json()["error_code"] == "EMAIL_TAKEN"
        fresh = f"new-{uuid.uuid4().hex[:10]}@example.com"
        assert_limited(
            await gateway.post(
                "/v1/tenants", json={"name": "Probe", "admin_email": fresh, "admin_password": PASSWORD}, headers=prober
            )
        )


async def test_taken_emails_at_user_creation_count_against_the_address(stack, settings):
    """An admin probing which emails have accounts (in any tenant) by creating users spends the
    address's budget as a sign-up would: a valid token does not lift it."""
    async with in_process_gateway(settings) as gateway:
        elsewhere = await signup(gateway)
        prober = await signup(gateway)
        headers = {**from_address(random_address()), **prober.auth}
        user = {"email": elsewhere.email, "password": PASSWORD, "role": "member"}
        for _ in range(3):
            taken = await gateway.post("/v1/users", json=user, headers=headers)
            assert taken.status_code == 409, taken.text
            assert taken.json()["error_code"] == "EMAIL_TAKEN"
        before = await served(stack, "/users")
        assert_limited(await gateway.post("/v1/users", json=user, headers=headers))
        # Refused before the users service was asked.
        assert await served(stack, "/users") == before
        # Reading with the same token is not held up: only routes whose answers count are.
        assert (await gateway.get("/v1/users/me", headers=headers)).status_code == 200


async def test_login_route_quota_counts_per_address_even_with_a_token(stack, infra):
    settings = gateway_settings(
        stack,
        redis_url=infra.redis_url,
        redis_key_prefix=unique_prefix(infra.redis_prefix),
        rate_limit_routes={"POST /v1/auth/token": "2/60s"},
        trusted_proxies=["127.0.0.1"],
    )
    async with in_process_gateway(settings) as gateway:
        address = from_address(random_address())
        codes = []
        for _ in range(3):
            # A fresh tenant's token each time: it must not give the address a fresh quota.
            headers = {**address, **bearer("enterprise")}
            codes.append((await gateway.post("/v1/auth/token", data={}, headers=headers)).status_code)
        assert codes == [422, 422, 429]


async def test_unknown_keys_cannot_evict_known_ones(stack, settings):
    settings = settings.model_copy(
        update={"api_key_cache_size": 4, "api_key_negative_cache_size": 4, "api_key_cache_ttl_seconds": 300}
    )
    async with in_process_gateway(settings) as gateway:
        tenant = await signup(gateway)
        created = await gateway.post(
            "/v1/api-keys", json={"name": "good", "scopes": ["users:read"]}, headers=tenant.auth
        )
        assert created.status_code == 201
        good = {"X-API-Key": created.json()["api_key"]}
        assert (await gateway.get("/v1/users/me", headers=good)).status_code == 200
        resolved = await served(stack, "/api-keys/resolve")
        # Many addresses, each within its budget, flood distinct unknown keys.
        for _ in range(12):
            flood = await gateway.get(
                "/v1/users/me", headers={**from_address(random_address()), "X-API-Key": unknown_key()}
            )
            assert flood.status_code == 401
        assert await served(stack, "/api-keys/resolve") == resolved + 12
        # The good key is still remembered: no call to the users service.
        assert (await gateway.get("/v1/users/me", headers=good)).status_code == 200
        assert await served(stack, "/api-keys/resolve") == resolved + 12


async def test_the_failure_limit_holds_while_redis_is_down(stack):
    with private_redis() as server:
        settings = private_redis_settings(
            stack,
            server,
            auth_failure_limit="3/60s",
            rate_limit_failure_mode="open",  # even where the plan quotas fail open
            idempotency_enabled=False,
            trusted_proxies=["127.0.0.1"],
        )
        async with in_process_gateway(settings) as gateway:
            server.stop()
            attacker = {**from_address(random_address()), "Authorization": "Bearer nope"}
            codes = [(await gateway.get("/v1/users/me", headers=attacker)).status_code for _ in range(3)]
            assert codes == [401, 401, 401]
            assert_limited(await gateway.get("/v1/users/me", headers=attacker))
            metrics = (await gateway.get("/metrics")).text
            assert 'gateway_store_errors_total{outcome="fail_local",stage="auth_failures"}' in metrics
