"""Idempotency: the same contract for the Redis and the in-process store, then the stage in an
in-process gateway in front of the real services."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis

from gateway.app import create_redis
from gateway.edge.idempotency import (
    IdempotencyStore,
    KeyedRequest,
    MemoryIdempotencyStore,
    RedisIdempotencyStore,
    StoredResponse,
)
from gateway.edge.store import ScriptBatcher
from tests.edge_support import (
    BACKENDS,
    PASSWORD,
    backend_settings,
    bearer,
    cluster_settings,
    gateway_settings,
    in_process_gateway,
    login,
    private_redis,
    private_redis_settings,
    signup,
    unique_prefix,
)
from tests.faults import HttpFaultProxy

# ---------------------------------------------------------------- the store contract


@pytest.fixture(params=BACKENDS)
async def store(request, infra) -> AsyncIterator[IdempotencyStore]:
    settings = backend_settings(request, infra)
    if not settings:
        yield MemoryIdempotencyStore()
        return
    # The gateway's own client: its pool (or cluster client) and timeouts.
    client = create_redis(gateway_settings(None, **settings))
    try:
        yield RedisIdempotencyStore(ScriptBatcher(client), settings["redis_key_prefix"])
    finally:
        await client.aclose()


RESPONSE = StoredResponse(
    201, [(b"content-type", b"application/json"), (b"location", b"/v1/x/1")], b'{"id":"1"}\x00\xff', True
)


async def test_a_claim_locks_with_its_fingerprint(store):
    assert (await store.claim(KeyedRequest("{t:a}:k", "fp1", "owner-1"), 30_000)).outcome == "acquired"
    assert (await store.claim(KeyedRequest("{t:a}:k", "fp1", "owner-2"), 30_000)).outcome == "in_flight"
    assert (await store.claim(KeyedRequest("{t:a}:k", "fp2", "owner-2"), 30_000)).outcome == "mismatch"
    # The owner asking again (a retried store call) still holds it.
    assert (await store.claim(KeyedRequest("{t:a}:k", "fp1", "owner-1"), 30_000)).outcome == "acquired"
    # Another key, or the same key of another tenant, is free.
    assert (await store.claim(KeyedRequest("{t:a}:other", "fp1", "owner-2"), 30_000)).outcome == "acquired"
    assert (await store.claim(KeyedRequest("{t:b}:k", "fp1", "owner-2"), 30_000)).outcome == "acquired"


async def test_a_completed_request_is_replayed_byte_for_byte(store):
    await store.claim(KeyedRequest("{t:a}:done", "fp", "owner"), 30_000)
    assert await store.complete("{t:a}:done", "owner", RESPONSE, 60_000)
    claim = await store.claim(KeyedRequest("{t:a}:done", "fp", "someone-else"), 30_000)
    assert claim.outcome == "done"
    assert claim.response == RESPONSE
    assert (await store.claim(KeyedRequest("{t:a}:done", "fp-other", "someone-else"), 30_000)).outcome == "mismatch"


async def test_an_outcome_without_body_is_kept_as_such(store):
    await store.claim(KeyedRequest("{t:a}:secret", "fp", "owner"), 30_000)
    kept = StoredResponse(201, [(b"cache-control", b"no-store")], b"", False)
    assert await store.complete("{t:a}:secret", "owner", kept, 60_000)
    claim = await store.claim(KeyedRequest("{t:a}:secret", "fp", "other"), 30_000)
    assert claim.outcome == "done"
    assert claim.response is not None
    assert not claim.response.replayable


async def test_only_the_owner_completes_or_releases(store):
    await store.claim(KeyedRequest("{t:a}:own", "fp", "owner"), 30_000)
    assert not await store.complete("{t:a}:own", "intruder", RESPONSE, 60_000)
    await store.release("{t:a}:own", "intruder")
    assert (await store.claim(KeyedRequest("{t:a}:own", "fp", "other"), 30_000)).outcome == "in_flight"
    await store.release("{t:a}:own", "owner")
    assert (await store.claim(KeyedRequest("{t:a}:own", "fp", "other"), 30_000)).outcome == "acquired"
    # A done record is never released.
    await store.complete("{t:a}:own", "other", RESPONSE, 60_000)
    await store.release("{t:a}:own", "other")
    assert (await store.claim(KeyedRequest("{t:a}:own", "fp", "third"), 30_000)).outcome == "done"


async def test_a_crashed_owners_lock_expires_and_records_expire(store):
    await store.claim(KeyedRequest("{t:a}:crash", "fp", "crashed"), 300)
    claimed_at = time.monotonic()  # the lock was taken by now

    async def outcome(fingerprint: str, owner: str) -> tuple[str, float]:
        sent = time.monotonic()
        return (await store.claim(KeyedRequest("{t:a}:crash", fingerprint, owner), 30_000)).outcome, sent

    # In flight until the lock's 300 ms are over; a retry sent after that takes the key.
    while (found := await outcome("fp", "retry"))[0] == "in_flight":
        assert found[1] - claimed_at < 0.3 + 0.002, "the lock outlived its 300 ms"
        assert found[1] - claimed_at < 60
        await asyncio.sleep(0.02)
    assert found[0] == "acquired"
    # The crashed owner cannot complete what is no longer its own.
    assert not await store.complete("{t:a}:crash", "crashed", RESPONSE, 60_000)
    assert await store.complete("{t:a}:crash", "retry", RESPONSE, 300)
    completed_at = time.monotonic()  # the record was written by now
    # Done, then forgotten when the record's 300 ms are over.
    while (found := await outcome("fp2", "later"))[0] == "mismatch":
        assert found[1] - completed_at < 0.3 + 0.002, "the record outlived its 300 ms"
        assert found[1] - completed_at < 60
        await asyncio.sleep(0.02)
    assert found[0] == "acquired"


async def test_the_in_process_store_keeps_its_answers_within_its_bound(caplog):
    """No flood of new keys grows the gateway without Redis past its bound: the oldest answers go
    first, the newest are still replayed, and a request in flight keeps its claim."""
    store = MemoryIdempotencyStore(max_bytes=20_000)
    answer = StoredResponse(201, [(b"content-type", b"application/json")], b"x" * 1_000, True)
    await store.claim(KeyedRequest("{t:a}:in-flight", "fp", "slow"), 30_000)
    for n in range(100):
        assert (await store.claim(KeyedRequest(f"{{t:a}}:{n}", "fp", "owner"), 30_000)).outcome == "acquired"
        assert await store.complete(f"{{t:a}}:{n}", "owner", answer, 60_000)
        # The answers kept (every one completed but those dropped: none has expired yet) hold no more
        # than the bound, their bodies alone.
        assert (n + 1 - store.evicted) * len(answer.body) <= store.max_bytes

    assert store.evicted > 0
    assert "the in-process idempotency store is full" in caplog.text
    # The oldest answers went first: each of the newest is replayed, each older one runs again (as after
    # the TTL). A repeat of a replayed key leaves its record as it was.
    kept = 100 - store.evicted
    outcomes = [(await store.claim(KeyedRequest(f"{{t:a}}:{n}", "fp", "other"), 30_000)).outcome for n in range(100)]
    assert outcomes == ["acquired"] * store.evicted + ["done"] * kept
    assert (await store.claim(KeyedRequest("{t:a}:in-flight", "fp", "other"), 30_000)).outcome == "in_flight"

    # The answer of the request claimed first but finished last is the newest one kept.
    assert await store.complete("{t:a}:in-flight", "slow", answer, 60_000)
    assert (await store.claim(KeyedRequest("{t:a}:in-flight", "fp", "other"), 30_000)).outcome == "done"

    # An expired answer gives its bytes back. The store is full (each answer kept drops the oldest), so
    # an answer kept in the expired one's place fits only in the bytes it gave back: none is dropped.
    await store.claim(KeyedRequest("{t:a}:short", "fp", "owner"), 30_000)
    assert await store.complete("{t:a}:short", "owner", answer, 1)
    await asyncio.sleep(0.01)
    assert (await store.claim(KeyedRequest("{t:a}:short", "fp", "later"), 30_000)).outcome == "acquired"
    evicted = store.evicted
    assert await store.complete("{t:a}:short", "later", answer, 60_000)
    assert store.evicted == evicted


async def test_redis_records_are_prefixed_and_hash_tagged(infra):
    client = Redis.from_url(infra.redis_url)
    prefix = unique_prefix(infra.redis_prefix)
    try:
        store = RedisIdempotencyStore(ScriptBatcher(client), prefix)
        await store.claim(KeyedRequest("{t:tenant-9}:abc", "fp", "owner"), 30_000)
        keys = [k.decode() async for k in client.scan_iter(match=prefix + "*")]
        assert keys == [f"{prefix}idem:{{t:tenant-9}}:abc"]
        assert 0 < await client.pttl(keys[0]) <= 30_000
    finally:
        await client.aclose()


# ---------------------------------------------------------------- the stage in a gateway


@pytest.fixture(params=["memory", "redis"])
def backend(request, infra) -> dict:
    """Settings that pick the store: in-process, or the session's Redis (the Redis Cluster has a
    test of its own below: the store contract above already runs on it)."""
    return backend_settings(request, infra)


async def users_served(stack, method: str, route: str) -> float:
    """How many requests the users service process answered on `route`, by its own /metrics."""
    async with httpx.AsyncClient(base_url=stack.url("users")) as users:
        text = (await users.get("/metrics")).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "http_requests_total"
        and sample.labels["method"] == method
        and sample.labels["route"] == route
    )


def new_user() -> dict:
    return {"email": f"idem-{uuid.uuid4().hex[:12]}@example.com", "password": PASSWORD, "role": "member"}


async def test_a_repeat_is_replayed_and_creates_nothing(stack, backend):
    async with in_process_gateway(gateway_settings(stack, **backend)) as gateway:
        admin = await signup(gateway)
        body = new_user()
        headers = {**admin.auth, "Idempotency-Key": "create-user-1"}
        first = await gateway.post("/v1/users", json=body, headers=headers)
        assert first.status_code == 201, first.text
        assert "idempotent-replayed" not in first.headers
        second = await gateway.post("/v1/users", json=body, headers=headers)
        assert second.status_code == 201
        assert second.headers["idempotent-replayed"] == "true"
        assert second.content == first.content
        assert second.headers["content-type"] == first.headers["content-type"]
        assert second.headers["x-request-id"] != first.headers["x-request-id"]
        # Without the key, the same body really runs again: the email is taken by the first.
        fresh = await gateway.post("/v1/users", json=body, headers=admin.auth)
        assert fresh.status_code == 409


async def test_the_same_key_for_another_request_is_422(stack, backend):
    async with in_process_gateway(gateway_settings(stack, **backend)) as gateway:
        admin = await signup(gateway)
        headers = {**admin.auth, "Idempotency-Key": "key-reuse"}
        assert (await gateway.post("/v1/users", json=new_user(), headers=headers)).status_code == 201
        other = await gateway.post("/v1/users", json=new_user(), headers=headers)
        assert other.status_code == 422
        assert other.json()["error_code"] == "IDEMPOTENCY_KEY_REUSED"
        # Scoped to method + path and tenant: the key is free elsewhere.
        key = await gateway.post("/v1/api-keys", json={"name": "k", "scopes": ["orders:read"]}, headers=headers)
        assert key.status_code == 201
        stranger = await signup(gateway)
        elsewhere = await gateway.post(
            "/v1/users", json=new_user(), headers={**stranger.auth, "Idempotency-Key": "key-reuse"}
        )
        assert elsewhere.status_code == 201
        assert "idempotent-replayed" not in elsewhere.headers


async def test_another_caller_of_the_tenant_is_never_handed_the_answer(stack, backend):
    # The replay comes before the route's scope check: a key that may not create users must not get
    # the admin's stored 201 by sending the admin's Idempotency-Key.
    async with in_process_gateway(gateway_settings(stack, **backend)) as gateway:
        admin = await signup(gateway)
        body = new_user()
        first = await gateway.post("/v1/users", json=body, headers={**admin.auth, "Idempotency-Key": "shared-key"})
        assert first.status_code == 201
        reader = await gateway.post("/v1/api-keys", json={"name": "r", "scopes": ["users:read"]}, headers=admin.auth)
        assert reader.status_code == 201, reader.text
        replay = await gateway.post(
            "/v1/users", json=body, headers={"X-API-Key": reader.json()["api_key"], "Idempotency-Key": "shared-key"}
        )
        assert replay.status_code == 403
        assert "idempotent-replayed" not in replay.headers
        assert replay.json()["required_scope"] == "users:write"


async def test_concurrent_repeats_run_once(stack, backend):
    async with in_process_gateway(gateway_settings(stack, **backend)) as gateway:
        admin = await signup(gateway)
        body = new_user()
        headers = {**admin.auth, "Idempotency-Key": str(uuid.uuid4())}
        creations_before = await users_served(stack, "POST", "/users")
        answers = await asyncio.gather(*(gateway.post("/v1/users", json=body, headers=headers) for _ in range(20)))
        created = [a for a in answers if a.status_code == 201]
        assert {a.status_code for a in answers} <= {201, 409}
        assert len([a for a in created if "idempotent-replayed" not in a.headers]) == 1
        assert len({a.json()["id"] for a in created}) == 1
        for conflict in (a for a in answers if a.status_code == 409):
            assert conflict.json()["error_code"] == "IDEMPOTENCY_KEY_IN_USE"
            assert conflict.headers["retry-after"] == "1"
        # The request reached the users service exactly once (its own count), and made one user.
        assert await users_served(stack, "POST", "/users") - creations_before == 1
        assert await login(gateway, body["email"])


async def test_a_refusal_about_the_caller_is_not_stored(stack, backend):
    async with in_process_gateway(gateway_settings(stack, **backend)) as gateway:
        admin = await signup(gateway)
        member_body = new_user()
        assert (await gateway.post("/v1/users", json=member_body, headers=admin.auth)).status_code == 201
        member = {"Authorization": f"Bearer {await login(gateway, member_body['email'])}"}
        body = new_user()
        key = {"Idempotency-Key": "refused-first"}
        # A member may not create users: 403, not kept, so the admin's identical request runs.
        assert (await gateway.post("/v1/users", json=body, headers={**key, **member})).status_code == 403
        created = await gateway.post("/v1/users", json=body, headers={**key, **admin.auth})
        assert created.status_code == 201
        assert "idempotent-replayed" not in created.headers


async def test_auth_failures_and_429s_never_reach_the_store(stack, infra):
    prefix = unique_prefix(infra.redis_prefix)
    settings = gateway_settings(stack, redis_url=infra.redis_url, redis_key_prefix=prefix, rate_limit_pro="1/60s")
    async with in_process_gateway(settings) as gateway:
        admin = await signup(gateway)
        key = {"Idempotency-Key": "never-kept"}
        unauthorized = await gateway.post("/v1/users", json=new_user(), headers={**key, "Authorization": "Bearer x"})
        assert unauthorized.status_code == 401
        assert (await gateway.get("/v1/users/me", headers=admin.auth)).status_code == 200
        limited = await gateway.post("/v1/users", json=new_user(), headers={**key, **admin.auth})
        assert limited.status_code == 429
    client = Redis.from_url(infra.redis_url)
    try:
        assert [k async for k in client.scan_iter(match=prefix + "idem:*")] == []
    finally:
        await client.aclose()


async def test_an_answer_with_a_secret_is_done_once_and_not_kept(stack, infra):
    prefix = unique_prefix(infra.redis_prefix)
    settings = gateway_settings(stack, redis_url=infra.redis_url, redis_key_prefix=prefix)
    async with in_process_gateway(settings) as gateway:
        admin = await signup(gateway)
        headers = {**admin.auth, "Idempotency-Key": "new-key"}
        body = {"name": "ci", "scopes": ["orders:read"]}
        first = await gateway.post("/v1/api-keys", json=body, headers=headers)
        assert first.status_code == 201
        raw = first.json()["api_key"]
        again = await gateway.post("/v1/api-keys", json=body, headers=headers)
        assert again.status_code == 409
        assert again.json()["error_code"] == "IDEMPOTENT_RESPONSE_NOT_STORED"
        listed = await gateway.get("/v1/api-keys", headers=admin.auth)
        assert len(listed.json()["items"]) == 1
    client = Redis.from_url(infra.redis_url)
    try:
        for key in [k async for k in client.scan_iter(match=prefix + "idem:*")]:
            record = await client.hgetall(key)
            assert raw.encode() not in b"".join(record.values())
    finally:
        await client.aclose()


async def test_bad_keys_are_400_and_anonymous_requests_pass_through(stack):
    async with in_process_gateway(gateway_settings(stack)) as gateway:
        admin = await signup(gateway)
        for bad in ("", "x" * 256, "tab\there", "é"):
            response = await gateway.post(
                "/v1/users", json=new_user(), headers={**admin.auth, "Idempotency-Key": bad.encode("utf-8")}
            )
            assert response.status_code == 400, bad
            assert response.json()["error_code"] == "INVALID_IDEMPOTENCY_KEY"
        tenant = {"name": "Anon", "plan": "free", "admin_email": new_user()["email"], "admin_password": PASSWORD}
        key = {"Idempotency-Key": "anonymous"}
        assert (await gateway.post("/v1/tenants", json=tenant, headers=key)).status_code == 201
        # No tenant to scope the key to: the request runs again (and the email is taken).
        assert (await gateway.post("/v1/tenants", json=tenant, headers=key)).status_code == 409
        # Only POST, PUT and PATCH are concerned.
        me = await gateway.get("/v1/users/me", headers={**admin.auth, "Idempotency-Key": "\t"})
        assert me.status_code == 200


async def test_an_oversized_body_is_413_before_a_key_is_taken(stack, infra):
    prefix = unique_prefix(infra.redis_prefix)
    settings = gateway_settings(stack, redis_url=infra.redis_url, redis_key_prefix=prefix, max_body_bytes=1000)
    async with in_process_gateway(settings) as gateway:
        admin = await signup(gateway)

        async def chunks():
            for _ in range(10):
                yield b"x" * 200

        response = await gateway.post(
            "/v1/users",
            content=chunks(),
            headers={**admin.auth, "Idempotency-Key": "big", "content-type": "application/json"},
        )
        assert response.status_code == 413
        assert response.json()["error_code"] == "PAYLOAD_TOO_LARGE"
    client = Redis.from_url(infra.redis_url)
    try:
        assert [k async for k in client.scan_iter(match=prefix + "idem:*")] == []
    finally:
        await client.aclose()


async def test_the_key_is_forwarded_to_the_service(stack):
    """The service sees the caller's key too (it keeps its own record of it), once: the replay is the
    gateway's. The users service is the real one, behind a fault injector that only records."""
    users = HttpFaultProxy(stack.url("users"))
    async with users, in_process_gateway(gateway_settings(stack, users_url=users.url)) as gateway:
        admin = await signup(gateway)
        headers = {**admin.auth, "Idempotency-Key": "forward-me"}
        user = new_user()
        first = await gateway.post("/v1/users", json=user, headers=headers)
        assert first.status_code == 201, first.text
        replay = await gateway.post("/v1/users", json=user, headers=headers)
        assert replay.headers["idempotent-replayed"] == "true"
    creations = [request for request in users.received if request[:2] == ("POST", "/users")]
    assert len(creations) == 1
    assert ("idempotency-key", "forward-me") in creations[0][2]


async def test_gateways_on_a_redis_cluster_replay_there(redis_cluster, infra):
    """Two gateways on the cluster (failing closed, so every answer below came from it): the second
    replays the first's answer, and refuses the key for another body."""
    settings = gateway_settings(
        None, rate_limit_enabled=False, idempotency_failure_mode="closed", **cluster_settings(redis_cluster, infra)
    )
    async with in_process_gateway(settings) as one, in_process_gateway(settings) as two:
        headers = {**bearer("pro"), "Idempotency-Key": "on-a-cluster"}
        first = await one.post("/v1/nothing-here", json={"n": 1}, headers=headers)
        assert first.status_code == 404
        again = await two.post("/v1/nothing-here", json={"n": 1}, headers=headers)
        assert again.status_code == 404
        assert again.headers["idempotent-replayed"] == "true"
        assert again.content == first.content
        other = await two.post("/v1/nothing-here", json={"n": 2}, headers=headers)
        assert other.status_code == 422
        assert other.json()["error_code"] == "IDEMPOTENCY_KEY_REUSED"


@pytest.mark.parametrize("mode", ["open", "closed"])
async def test_a_store_outage_follows_the_failure_mode(stack, mode):
    with private_redis() as server:
        settings = private_redis_settings(
            stack,
            server,
            rate_limit_enabled=False,
            idempotency_failure_mode=mode,
        )
        async with in_process_gateway(settings) as gateway:
            admin = await signup(gateway)
            server.stop()
            response = await gateway.post(
                "/v1/users", json=new_user(), headers={**admin.auth, "Idempotency-Key": "outage"}
            )
            if mode == "open":
                assert response.status_code == 201
            else:
                assert response.status_code == 503
                assert response.json()["error_code"] == "EDGE_STORE_UNAVAILABLE"
                assert response.json()["stage"] == "idempotency"
            # Requests without a key do not need the store.
            assert (await gateway.get("/v1/users/me", headers=admin.auth)).status_code == 200
            server.start()  # at the same address: a private socket nothing else can take
            body = new_user()
            headers = {**admin.auth, "Idempotency-Key": "after"}
            deadline = asyncio.get_running_loop().time() + 60
            while (first := await gateway.post("/v1/users", json=body, headers=headers)).status_code == 503:
                assert asyncio.get_running_loop().time() < deadline
                await asyncio.sleep(0.1)
            assert first.status_code == 201
            replay = await gateway.post("/v1/users", json=body, headers=headers)
            assert replay.headers["idempotent-replayed"] == "true"
