"""The edge with every process real: two gateway processes sharing Redis, API keys end to end,
idempotent orders, a crashed gateway's lock, and the HTTP hygiene of the answers."""

from __future__ import annotations

import asyncio
import gzip
import json
import signal
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.settings import GatewaySettings
from scripts.devstack import Stack, free_port
from tests.conftest import ROOT
from tests.edge_support import (
    PASSWORD,
    Tenant,
    extra_gateways,
    gateway_settings,
    in_process_gateway,
    signup,
)
from tests.faults import HttpFaultProxy

# Every wait below ends on its condition; this deadline only fails a build that never gets there.
PATIENCE = 60.0


def gateway_setting(stack: Stack, name: str) -> float:
    """A gateway setting as the stack's gateway processes have it: their environment, else the default."""
    default = GatewaySettings.model_fields[name].default
    return float(stack.env.get(f"GATEWAY_{name.upper()}", default))


@pytest.fixture(scope="module")
def second_gateway(stack: Stack) -> Iterator[str]:
    """Another gateway process in front of the same services and the same Redis."""
    with extra_gateways(stack, 1) as urls:
        yield urls[0]


@pytest.fixture
async def other(second_gateway: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=second_gateway, timeout=30) as client:
        yield client


def problem(response: httpx.Response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["error_code"] == code, body
    return body


async def new_key(gateway: httpx.AsyncClient, tenant: Tenant, scopes: list[str], name: str = "ci") -> dict:
    response = await gateway.post("/v1/api-keys", json={"name": name, "scopes": scopes}, headers=tenant.auth)
    assert response.status_code == 201, response.text
    return response.json()


# ---------------------------------------------------------------- exact rate limits across processes


async def test_two_gateways_admit_exactly_the_quota(stack, gateway):
    tenant = await signup(gateway, plan="free")  # 100 requests per 60 s
    # A generous store deadline: on a busy test machine a late answer would fail open and blur what
    # this test is about, the count shared by both processes.
    with extra_gateways(stack, 2, env={"GATEWAY_REDIS_TIMEOUT_SECONDS": "5"}) as urls:
        limits = httpx.Limits(max_connections=400, max_keepalive_connections=400)
        async with (
            httpx.AsyncClient(base_url=urls[0], timeout=60, limits=limits) as first,
            httpx.AsyncClient(base_url=urls[1], timeout=60, limits=limits) as second,
        ):
            clients = (first, second)
            answers = await asyncio.gather(
                *(clients[i % 2].get("/v1/users/me", headers=tenant.auth) for i in range(300))
            )
    codes = [a.status_code for a in answers]
    assert codes.count(200) == 100, sorted(set(codes))
    assert codes.count(429) == 200
    refused = next(a for a in answers if a.status_code == 429)
    problem(refused, 429, "RATE_LIMITED")
    assert refused.json()["type"] == "https://portico.dev/problems/quota-exceeded"
    assert int(refused.headers["retry-after"]) >= 1
    # Both processes admitted some: the count really was shared.
    admitted_by = {a.request.url.port for a in answers if a.status_code == 200}
    assert len(admitted_by) == 2


# ---------------------------------------------------------------- idempotency across processes


async def test_fifty_concurrent_orders_with_one_key_create_one_order(gateway, other, migrated):
    tenant = await signup(gateway, plan="enterprise", infra=migrated)
    product = await gateway.post(
        "/v1/products",
        json={"sku": f"SKU-{uuid.uuid4().hex[:8]}", "name": "Lamp", "price_cents": 4200, "stock": 100},
        headers=tenant.auth,
    )
    assert product.status_code == 201, product.text
    product_id = product.json()["id"]
    body = {"items": [{"product_id": product_id, "quantity": 2}]}
    headers = {**tenant.auth, "Idempotency-Key": f"order-{uuid.uuid4()}"}
    clients = (gateway, other)
    answers = await asyncio.gather(*(clients[i % 2].post("/v1/orders", json=body, headers=headers) for i in range(50)))

    assert {a.status_code for a in answers} <= {201, 409}, [a.text for a in answers if a.status_code not in (201, 409)]
    orders = [a.json() for a in answers if a.status_code == 201]
    assert orders
    assert len({o["id"] for o in orders}) == 1
    assert all(o == orders[0] for o in orders)
    for conflict in (a for a in answers if a.status_code == 409):
        assert conflict.json()["error_code"] == "IDEMPOTENCY_KEY_IN_USE"

    listed = await gateway.get("/v1/orders", headers=tenant.auth)
    assert [o["id"] for o in listed.json()["items"]] == [orders[0]["id"]]
    stock = await gateway.get(f"/v1/products/{product_id}", headers=tenant.auth)
    assert stock.json()["stock"] == 98
    replay = await other.post("/v1/orders", json=body, headers=headers)
    assert replay.status_code == 201
    assert replay.headers["idempotent-replayed"] == "true"
    assert replay.json() == orders[0]


@pytest.fixture
async def users_proxy(stack: Stack) -> AsyncIterator[HttpFaultProxy]:
    """The stack's users service behind a fault injector."""
    async with HttpFaultProxy(stack.url("users")) as proxy:
        yield proxy


async def test_a_crashed_gateways_lock_expires(stack, gateway, users_proxy):
    # User creations reach the proxy and wait there: never forwarded, the user is never created.
    received = users_proxy.add("POST", "/users", action="answer", status=503, hold=True, times=1).seen
    tenant = await signup(gateway)
    crashing = Stack(
        ports={**stack.ports, "gateway": free_port()},
        env=stack.env,
        env_for={
            "gateway": {
                "GATEWAY_USERS_URL": users_proxy.url,
                "GATEWAY_HTTP_TIMEOUT_SECONDS": "2.5",
                "GATEWAY_IDEMPOTENCY_LOCK_SECONDS": "3",
            }
        },
        log_dir=stack.log_dir / "crashing-gateway" if stack.log_dir else None,
        cwd=ROOT,
    )
    crashing.start_one("gateway")
    try:
        async with httpx.AsyncClient(base_url=crashing.url(), timeout=30) as doomed:
            deadline = time.monotonic() + PATIENCE
            while True:
                try:
                    if (await doomed.get("/health/live")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert crashing.procs["gateway"].poll() is None, "the gateway exited; see its log"
                assert time.monotonic() < deadline
                await asyncio.sleep(0.1)
            body = {"email": f"crash-{uuid.uuid4().hex[:10]}@example.com", "password": PASSWORD, "role": "member"}
            headers = {**tenant.auth, "Idempotency-Key": "survives-a-crash"}
            in_flight = asyncio.ensure_future(doomed.post("/v1/users", json=body, headers=headers))
            await asyncio.wait_for(received.wait(), PATIENCE)
            # The lock is taken before the request goes upstream; the process dies holding it.
            crashing.procs["gateway"].send_signal(signal.SIGKILL)
            crashed_at = time.monotonic()
            with pytest.raises(httpx.TransportError):
                await in_flight
    finally:
        crashing.stop()

    retry = await gateway.post("/v1/users", json=body, headers=headers)
    problem(retry, 409, "IDEMPOTENCY_KEY_IN_USE")
    # The lock was taken before the crash and lives 3 s: a retry sent 3 s after the crash or later can
    # no longer meet it, however slow the machine is in answering.
    while True:
        sent_at = time.monotonic()
        retry = await gateway.post("/v1/users", json=body, headers=headers)
        if retry.status_code != 409:
            break
        assert sent_at - crashed_at < 3, "the lock outlived its GATEWAY_IDEMPOTENCY_LOCK_SECONDS"
        assert sent_at - crashed_at < PATIENCE
        await asyncio.sleep(0.2)
    assert retry.status_code == 201, retry.text
    assert "idempotent-replayed" not in retry.headers


# ---------------------------------------------------------------- API keys


async def test_an_api_key_from_creation_to_use(gateway, other):
    tenant = await signup(gateway)
    created = await gateway.post(
        "/v1/api-keys", json={"name": "reporting", "scopes": ["orders:read", "users:read"]}, headers=tenant.auth
    )
    assert created.status_code == 201, created.text
    assert created.headers["cache-control"] == "no-store"
    key = created.json()
    assert key["api_key"].startswith("sk_")
    assert key["scopes"] == ["orders:read", "users:read"]
    with_key = {"X-API-Key": key["api_key"]}

    for client in (gateway, other):
        me = await client.get("/v1/users/me", headers=with_key)
        assert me.status_code == 200, me.text
        assert me.json()["id"] == tenant.admin_id  # the key's creator
        assert me.headers["x-ratelimit-limit"] == "1000"  # the tenant's plan
        assert (await client.get("/v1/orders", headers=with_key)).status_code == 200
    refused = await gateway.post(
        "/v1/orders", json={"items": [{"product_id": str(uuid.uuid4()), "quantity": 1}]}, headers=with_key
    )
    assert problem(refused, 403, "INSUFFICIENT_SCOPE")["required_scope"] == "orders:write"
    problem(await gateway.get("/v1/products", headers=with_key), 403, "INSUFFICIENT_SCOPE")
    problem(
        await gateway.post("/v1/api-keys", json={"name": "child", "scopes": ["orders:read"]}, headers=with_key),
        403,
        "USER_REQUIRED",
    )
    problem(
        await gateway.get("/v1/users/me", headers={**with_key, "X-Tenant-Id": str(uuid.uuid4())}),
        403,
        "TENANT_MISMATCH",
    )
    assert (await gateway.get("/v1/users/me", headers={**with_key, "X-Tenant-Id": tenant.id})).status_code == 200
    problem(await gateway.get("/v1/users/me", headers={**with_key, **tenant.auth}), 400, "AMBIGUOUS_CREDENTIALS")
    for bad in ("sk_" + "A" * 43, "sk_short", "not-a-key", key["api_key"] + "x"):
        unknown = await gateway.get("/v1/users/me", headers={"X-API-Key": bad})
        problem(unknown, 401, "INVALID_API_KEY")
        assert unknown.headers["www-authenticate"].startswith("ApiKey")

    listed = await gateway.get("/v1/api-keys", headers=tenant.auth)
    assert listed.status_code == 200
    assert [k["id"] for k in listed.json()["items"]] == [key["id"]]
    assert key["api_key"] not in listed.text
    assert listed.json()["items"][0]["last_used_at"] is not None


async def test_a_revoked_key_is_refused_within_the_bound(stack, gateway, other):
    ttl = gateway_setting(stack, "api_key_cache_ttl_seconds")
    tenant = await signup(gateway)
    key = await new_key(gateway, tenant, ["users:read"])
    with_key = {"X-API-Key": key["api_key"]}
    # Both processes have the key in their cache, looked up before `cached_by`.
    assert (await gateway.get("/v1/users/me", headers=with_key)).status_code == 200
    assert (await other.get("/v1/users/me", headers=with_key)).status_code == 200
    cached_by = time.monotonic()

    revoked = await gateway.delete(f"/v1/api-keys/{key['id']}", headers=tenant.auth)
    assert revoked.status_code == 204
    # The process that revoked it forgets it at once.
    problem(await gateway.get("/v1/users/me", headers=with_key), 401, "INVALID_API_KEY")
    # Another process within the cache lifetime: a request sent after the cached entry's end is refused
    # whatever the machine's load (the entry was made before `cached_by`).
    while True:
        sent_at = time.monotonic()
        if (await other.get("/v1/users/me", headers=with_key)).status_code != 200:
            break
        assert sent_at - cached_by < ttl, "the revoked key outlived GATEWAY_API_KEY_CACHE_TTL_SECONDS"
        await asyncio.sleep(0.1)
    problem(await other.get("/v1/users/me", headers=with_key), 401, "INVALID_API_KEY")


async def test_rotation_keeps_the_old_key_for_its_grace_period(gateway, other):
    tenant = await signup(gateway)
    old = await new_key(gateway, tenant, ["users:read"])
    graceful = await gateway.post(f"/v1/api-keys/{old['id']}/rotate", json={"grace_seconds": 3600}, headers=tenant.auth)
    assert graceful.status_code == 201, graceful.text
    assert graceful.headers["cache-control"] == "no-store"
    new = graceful.json()
    for raw in (old["api_key"], new["api_key"]):
        for client in (gateway, other):
            assert (await client.get("/v1/users/me", headers={"X-API-Key": raw})).status_code == 200

    abrupt = await gateway.post(f"/v1/api-keys/{new['id']}/rotate", json={"grace_seconds": 0}, headers=tenant.auth)
    assert abrupt.status_code == 201
    problem(await gateway.get("/v1/users/me", headers={"X-API-Key": new["api_key"]}), 401, "INVALID_API_KEY")
    newest = abrupt.json()["api_key"]
    assert (await other.get("/v1/users/me", headers={"X-API-Key": newest})).status_code == 200


async def test_a_member_cannot_mint_a_key_wider_than_itself(gateway):
    tenant = await signup(gateway)
    email = f"member-{uuid.uuid4().hex[:10]}@example.com"
    made = await gateway.post(
        "/v1/users", json={"email": email, "password": PASSWORD, "role": "member"}, headers=tenant.auth
    )
    assert made.status_code == 201
    token = (await gateway.post("/v1/auth/token", data={"username": email, "password": PASSWORD})).json()
    member = {"Authorization": f"Bearer {token['access_token']}"}
    wide = await gateway.post("/v1/api-keys", json={"name": "x", "scopes": ["users:write"]}, headers=member)
    assert problem(wide, 403, "SCOPE_NOT_HELD")["missing_scopes"] == ["users:write"]
    narrow = await gateway.post("/v1/api-keys", json={"name": "x", "scopes": ["orders:write"]}, headers=member)
    assert narrow.status_code == 201


# ---------------------------------------------------------------- HTTP hygiene


async def test_answers_carry_security_and_cache_headers(gateway):
    tenant = await signup(gateway)
    me = await gateway.get("/v1/users/me", headers=tenant.auth)
    assert me.headers["x-content-type-options"] == "nosniff"
    assert me.headers["x-frame-options"] == "DENY"
    assert me.headers["referrer-policy"] == "no-referrer"
    assert me.headers["content-security-policy"] == "default-src 'none'; frame-ancestors 'none'"
    assert "strict-transport-security" not in me.headers  # not configured for TLS here
    assert me.headers["cache-control"] == "private, no-cache"
    assert "Authorization" in me.headers["vary"]
    unauthorized = await gateway.get("/v1/users/me", headers={"Authorization": "Bearer nope"})
    assert unauthorized.status_code == 401
    assert unauthorized.headers["x-content-type-options"] == "nosniff"

    token = await gateway.post("/v1/auth/token", data={"username": tenant.email, "password": PASSWORD})
    assert token.headers["cache-control"] == "no-store"
    hook = await gateway.post(
        "/v1/webhooks/endpoints",
        json={"url": "https://93.184.215.14/hooks/portico", "events": ["order.created"]},
        headers=tenant.auth,
    )
    assert hook.status_code == 201, hook.text
    assert hook.headers["cache-control"] == "no-store"


async def test_get_answers_have_an_etag_and_revalidate_with_304(gateway):
    tenant = await signup(gateway)
    first = await gateway.get("/v1/users/me", headers=tenant.auth)
    etag = first.headers["etag"]
    assert etag.startswith('W/"')
    same = await gateway.get("/v1/users/me", headers={**tenant.auth, "If-None-Match": etag})
    assert same.status_code == 304
    assert same.content == b""
    assert same.headers["etag"] == etag
    assert same.headers["cache-control"] == "private, no-cache"
    assert "x-ratelimit-remaining" in same.headers
    listed = await gateway.get("/v1/users/me", headers={**tenant.auth, "If-None-Match": 'W/"other", ' + etag})
    assert listed.status_code == 304
    changed = await gateway.get("/v1/users/me", headers={**tenant.auth, "If-None-Match": 'W/"stale"'})
    assert changed.status_code == 200
    assert changed.json() == first.json()


async def test_large_answers_are_gzipped_and_small_ones_are_not(gateway):
    tenant = await signup(gateway)
    for i in range(8):
        await new_key(gateway, tenant, ["orders:read"], name=f"key number {i} with a long descriptive name")
    listed = await gateway.get("/v1/api-keys", headers={**tenant.auth, "Accept-Encoding": "gzip"})
    assert listed.status_code == 200
    assert listed.headers["content-encoding"] == "gzip"
    assert "Accept-Encoding" in listed.headers["vary"]
    assert len(listed.json()["items"]) == 8  # httpx decodes it
    # The bytes on the wire, before httpx decodes them: a gzip stream of the same JSON.
    async with gateway.stream("GET", "/v1/api-keys", headers={**tenant.auth, "Accept-Encoding": "gzip"}) as raw:
        assert raw.status_code == 200
        wire = b"".join([chunk async for chunk in raw.aiter_raw()])
    assert wire[:2] == b"\x1f\x8b"
    assert int(raw.headers["content-length"]) == len(wire)
    assert json.loads(gzip.decompress(wire))["items"] == listed.json()["items"]
    small = await gateway.get("/v1/users/me", headers={**tenant.auth, "Accept-Encoding": "gzip"})
    assert len(small.content) < 500
    assert "content-encoding" not in small.headers
    plain = await gateway.get("/v1/api-keys", headers={**tenant.auth, "Accept-Encoding": "identity"})
    assert "content-encoding" not in plain.headers
    assert len(gzip.compress(plain.content)) < len(plain.content)


async def test_cors_trusted_hosts_and_hsts_from_settings(stack):
    settings = gateway_settings(
        stack,
        cors_allow_origins=["https://app.example.com"],
        trusted_hosts=["api.example.com", "*.internal.example.com"],
        hsts_max_age_seconds=31536000,
        hsts_include_subdomains=True,
    )
    async with in_process_gateway(settings) as client:
        host = {"Host": "api.example.com"}
        origin = {"Origin": "https://app.example.com"}
        preflight = await client.options(
            "/v1/orders",
            headers={
                **host,
                **origin,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "Authorization, Idempotency-Key, Content-Type",
            },
        )
        assert preflight.status_code == 204
        assert preflight.headers["access-control-allow-origin"] == "https://app.example.com"
        assert "POST" in preflight.headers["access-control-allow-methods"]
        assert preflight.headers["access-control-allow-headers"] == "authorization, idempotency-key, content-type"
        assert preflight.headers["access-control-max-age"] == "600"

        refused = await client.options(
            "/v1/orders",
            headers={**host, "Origin": "https://evil.example.net", "Access-Control-Request-Method": "POST"},
        )
        problem(refused, 403, "CORS_REFUSED")
        odd_header = await client.options(
            "/v1/orders",
            headers={
                **host,
                **origin,
                "Access-Control-Request-Method": "GET",
                "Access-Control-Request-Headers": "X-Evil",
            },
        )
        assert "x-evil" in problem(odd_header, 403, "CORS_REFUSED")["detail"]

        actual = await client.get("/v1/users/me", headers={**host, **origin})
        assert actual.status_code == 401  # CORS headers on errors too, so the browser can read them
        assert actual.headers["access-control-allow-origin"] == "https://app.example.com"
        assert "RateLimit" in actual.headers["access-control-expose-headers"]
        assert "Origin" in actual.headers["vary"]
        assert actual.headers["strict-transport-security"] == "max-age=31536000; includeSubDomains"
        foreign = await client.get("/v1/users/me", headers={**host, "Origin": "https://evil.example.net"})
        assert "access-control-allow-origin" not in foreign.headers

        assert (
            await client.get("/health/live", headers={"Host": "10.1.2.internal.example.com:8000"})
        ).status_code == 200
        bad_host = await client.get("/health/live", headers={"Host": "evil.example.net"})
        problem(bad_host, 400, "INVALID_HOST")
        assert bad_host.headers["x-content-type-options"] == "nosniff"
        apex = await client.get("/health/live", headers={"Host": "internal.example.com"})
        problem(apex, 400, "INVALID_HOST")


async def edge_samples(gateway: httpx.AsyncClient) -> Counter[tuple[str, tuple[tuple[str, str], ...]]]:
    """The gateway's edge counters as (name, labels) -> value."""
    text = (await gateway.get("/metrics")).text
    found: Counter[tuple[str, tuple[tuple[str, str], ...]]] = Counter()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.startswith("gateway_") and sample.name.endswith("_total"):
                found[(sample.name, tuple(sorted(sample.labels.items())))] += sample.value
    return found


async def test_edge_counters_are_exported(gateway):
    """Each edge counter moves by what the requests did, not just shows its name."""
    tenant = await signup(gateway)
    key = await new_key(gateway, tenant, ["users:read"])
    before = await edge_samples(gateway)

    for _ in range(2):
        assert (await gateway.get("/v1/users/me", headers={"X-API-Key": key["api_key"]})).status_code == 200
    unknown = {"X-API-Key": "sk_" + "B" * 43}
    assert (await gateway.get("/v1/users/me", headers=unknown)).status_code == 401
    body = {"email": f"count-{uuid.uuid4().hex[:10]}@example.com", "password": PASSWORD, "role": "member"}
    headers = {**tenant.auth, "Idempotency-Key": str(uuid.uuid4())}
    for _ in range(2):
        assert (await gateway.post("/v1/users", json=body, headers=headers)).status_code == 201

    after = await edge_samples(gateway)
    moved = {sample: after[sample] - before.get(sample, 0) for sample in after if after[sample] != before.get(sample)}

    def total(name: str, **labels: str) -> float:
        return sum(
            value
            for (n, sample_labels), value in moved.items()
            if n == name and labels.items() <= dict(sample_labels).items()
        )

    # Two lookups of the valid key (the second may come from the cache) and one of the unknown key.
    assert total("gateway_api_key_lookups_total", result="valid") == 2
    assert total("gateway_api_key_lookups_total", source="users", result="valid") >= 1
    assert total("gateway_api_key_lookups_total", result="invalid") == 1
    assert total("gateway_idempotency_total", outcome="stored") == 1
    assert total("gateway_idempotency_total", outcome="replayed") == 1
    # Every request above was admitted by the rate limit, under the tenant's plan or the key's.
    assert total("gateway_rate_limit_decisions_total", decision="admitted") >= 4
    assert total("gateway_rate_limit_decisions_total", decision="refused") == 0
