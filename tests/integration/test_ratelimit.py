"""Rate limiting: the same contract for the Redis and the in-process store, then the stage in an
in-process gateway in front of the real services: headers, 429s, policies, and Redis failing."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
from redis.asyncio import Redis, RedisCluster
from redis.crc import key_slot
from redis.exceptions import RedisClusterException

from gateway.app import create_app, create_redis
from gateway.edge.idempotency import KeyedRequest, RedisIdempotencyStore
from gateway.edge.periods import current_month
from gateway.edge.ratelimit import MemoryRateLimitStore, Policy, RateLimitStore, RedisRateLimitStore
from gateway.edge.store import ScriptBatcher
from gateway.settings import Quota
from tests.edge_support import (
    BACKENDS,
    backend_settings,
    bearer,
    cluster_settings,
    concurrently,
    gateway_settings,
    in_process_gateway,
    private_redis,
    private_redis_settings,
    signup,
    unique_prefix,
)
from tests.faults import eventually

# ---------------------------------------------------------------- the store contract


@pytest.fixture(params=BACKENDS)
async def store(request, infra) -> AsyncIterator[RateLimitStore]:
    settings = backend_settings(request, infra)
    if not settings:
        yield MemoryRateLimitStore()
        return
    # The gateway's own client: its pool (or cluster client) and timeouts.
    client = create_redis(gateway_settings(None, **settings))
    try:
        yield RedisRateLimitStore(ScriptBatcher(client), settings["redis_key_prefix"])
    finally:
        await client.aclose()


def policy(limit: int, window: int = 60, name: str = "p") -> Policy:
    return Policy(name, Quota(limit, window))


def monthly_policy(limit: int) -> str:
    """The monthly quota's member of RateLimit-Policy: its window is this calendar month's length."""
    return f'"monthly";q={limit};w={current_month().seconds}'


async def test_concurrent_hits_admit_exactly_the_limit(store):
    quota = policy(100)
    verdicts = await concurrently(store.hit("t:exact", [quota]) for _ in range(300))
    admitted = [v for v in verdicts if v.admitted]
    assert len(admitted) == 100
    assert sorted(v.states[0].remaining for v in admitted) == list(range(100))
    refused = [v for v in verdicts if not v.admitted]
    assert all(v.states[0].remaining == 0 for v in refused)
    assert all(v.states[0].retry_after_ms > 0 for v in refused)


async def test_every_policy_counts_or_none_does(store):
    wide, narrow = policy(5, name="wide"), policy(3, name="narrow")
    results = [await store.hit("t:both", [wide, narrow]) for _ in range(5)]
    assert [r.admitted for r in results] == [True, True, True, False, False]
    refused = results[-1]
    assert refused.tightest.policy == narrow
    assert refused.states[0].retry_after_ms == 0  # the wide policy did not refuse
    # Refused requests were not counted against the wide policy: 3 of 5 used, 2 left.
    alone = await store.hit("t:both", [wide])
    assert alone.admitted
    assert alone.states[0].remaining == 1


async def test_callers_and_policies_are_counted_apart(store):
    one = policy(1)
    assert (await store.hit("t:a", [one])).admitted
    assert not (await store.hit("t:a", [one])).admitted
    assert (await store.hit("t:b", [one])).admitted
    assert (await store.hit("t:a", [policy(1, name="other")])).admitted


async def test_the_window_slides_and_retry_after_is_right(store):
    """Retry-after is a promise in both directions, whatever the machine's load: no request is
    admitted before it, and every request sent after it is."""
    quota = policy(4, window=1)
    first = [await store.hit("t:slide", [quota]) for _ in range(4)]
    assert all(v.admitted for v in first)
    assert 0 < first[-1].states[0].reset_ms <= 1000
    refused_sent = time.monotonic()
    refused = await store.hit("t:slide", [quota])
    refused_received = time.monotonic()
    assert not refused.admitted
    # All four are in the current window: the next one gets through once that window has ended and
    # enough of it has slid out: after (window - elapsed) + window * (1 - (limit - 1) / count).
    promised = refused.states[0].retry_after_ms / 1000
    assert 1.0 < promised <= 1.25 + 0.05
    deadline = refused_received + promised

    # Refused requests are not counted, so asking again changes nothing: ask until admitted.
    while True:
        sent = time.monotonic()
        verdict = await store.hit("t:slide", [quota])
        if verdict.admitted:
            admitted_received = time.monotonic()
            break
        assert sent < deadline + 0.002, "refused although sent after the promised retry-after"
        # Each refusal promises no later than the first one did (within the clocks' millisecond).
        assert 0 < verdict.states[0].retry_after_ms / 1000 <= deadline - sent + 0.002
        await asyncio.sleep(0.05)
    assert admitted_received - refused_sent >= promised - 0.002, "admitted before the promised retry-after"

    # Two whole windows without a request: the full quota is back (a busy machine only waits longer).
    silent_from = time.monotonic()
    await asyncio.sleep(2.1)
    assert time.monotonic() - silent_from >= 2.1
    assert all([(await store.hit("t:slide", [quota])).admitted for _ in range(4)])


async def test_redis_keys_are_prefixed_hash_tagged_and_expire(infra):
    client = Redis.from_url(infra.redis_url)
    prefix = unique_prefix(infra.redis_prefix)
    try:
        store = RedisRateLimitStore(ScriptBatcher(client), prefix)
        await store.hit("t:tenant-1", [policy(10, 30, "pro"), policy(5, 30, "GET /v1/users/me")])
        keys = sorted([k.decode() async for k in client.scan_iter(match=prefix + "*")])
        assert keys == [f"{prefix}rl:{{t:tenant-1}}:GET:/v1/users/me", f"{prefix}rl:{{t:tenant-1}}:pro"]
        for key in keys:
            assert 0 < await client.pttl(key) <= 60_000
    finally:
        await client.aclose()


async def test_the_script_is_loaded_once_then_called_by_its_digest():
    with private_redis() as server:
        client = Redis.from_url(server.url)
        try:
            store = RedisRateLimitStore(ScriptBatcher(client), "p:")
            for _ in range(20):
                await store.hit("t:x", [policy(100)])
            stats = await client.info("commandstats")
        finally:
            await client.aclose()
    assert stats["cmdstat_evalsha"]["calls"] >= 20
    assert "cmdstat_eval" not in stats
    # One failed EVALSHA (unknown script), one SCRIPT LOAD, then EVALSHA only.
    assert stats["cmdstat_script|load"]["calls"] == 1


# ---------------------------------------------------------------- the stage in a gateway


@pytest.fixture(params=["memory", "redis"])
def backend(request, infra) -> dict:
    """Settings that pick the store: in-process, or the session's Redis (the Redis Cluster has a
    test of its own below: the store contract above already runs on it)."""
    return backend_settings(request, infra)


async def test_answers_carry_the_draft_headers(stack, backend):
    async with in_process_gateway(gateway_settings(stack, **backend)) as gateway:
        tenant = await signup(gateway, plan="pro")
        me = await gateway.get("/v1/users/me", headers=tenant.auth)
        assert me.status_code == 200, me.text
        # The monthly quota is the second policy (`t`: the seconds left in the month).
        assert me.headers["ratelimit-policy"] == f'"pro";q=1000;w=60, {monthly_policy(10_000_000)}'
        assert me.headers["ratelimit"].startswith('"pro";r=999;t=60, "monthly";r=9999999;t=')
        assert me.headers["x-ratelimit-limit"] == "1000"
        assert me.headers["x-ratelimit-remaining"] == "999"
        assert me.headers["x-ratelimit-reset"] == "60"
        again = await gateway.get("/v1/users/me", headers=tenant.auth)
        assert again.headers["x-ratelimit-remaining"] == "998"
        # Errors count and carry the headers too.
        missing = await gateway.get(f"/v1/users/{uuid.uuid4()}", headers=tenant.auth)
        assert missing.status_code == 404
        assert missing.headers["x-ratelimit-remaining"] == "997"


async def test_a_spent_quota_is_429_quota_exceeded_with_retry_after(stack, backend):
    settings = gateway_settings(stack, rate_limit_free="3/60s", **backend)
    async with in_process_gateway(settings) as gateway:
        tenant = await signup(gateway, plan="free")
        answers = [await gateway.get("/v1/users/me", headers=tenant.auth) for _ in range(4)]
        assert [a.status_code for a in answers] == [200, 200, 200, 429]
        refused = answers[-1]
        assert refused.headers["content-type"] == "application/problem+json"
        problem = refused.json()
        assert problem["type"] == "https://portico.dev/problems/quota-exceeded"
        assert problem["status"] == 429
        assert problem["error_code"] == "RATE_LIMITED"
        assert problem["policy"] == "free"
        assert problem["limit"] == 3
        assert problem["window_seconds"] == 60
        assert problem["request_id"] == refused.headers["x-request-id"]
        retry_after = int(refused.headers["retry-after"])
        assert 60 <= retry_after <= 120
        assert problem["retry_after"] == retry_after
        assert refused.headers["x-ratelimit-remaining"] == "0"
        assert refused.headers["ratelimit"].startswith(f'"free";r=0;t={retry_after}, "monthly";r=99997;t=')
        # Another tenant is not affected.
        other = await signup(gateway, plan="free")
        assert (await gateway.get("/v1/users/me", headers=other.auth)).status_code == 200


async def test_quotas_follow_the_plan(stack, backend):
    settings = gateway_settings(
        stack, rate_limit_free="2/60s", rate_limit_pro="3/60s", rate_limit_enterprise="4/60s", **backend
    )
    async with in_process_gateway(settings) as gateway:
        for plan, limit in (("free", 2), ("pro", 3), ("enterprise", 4), ("gold", 2)):
            headers = bearer(plan)
            codes = [(await gateway.get("/v1/nothing-here", headers=headers)).status_code for _ in range(limit + 1)]
            assert codes == [404] * limit + [429], plan


async def test_anonymous_callers_are_limited_per_client_address(stack, backend):
    settings = gateway_settings(stack, rate_limit_anonymous="2/60s", trusted_proxies=["127.0.0.1"], **backend)
    async with in_process_gateway(settings) as gateway:
        codes = [(await gateway.get("/v1/users/me")).status_code for _ in range(3)]
        assert codes == [401, 401, 429]
        refused = await gateway.get("/v1/users/me")
        assert refused.json()["policy"] == "anonymous"
        # Behind a trusted proxy, the address the proxy saw is the client.
        forwarded = {"X-Forwarded-For": "198.51.100.7"}
        assert (await gateway.get("/v1/users/me", headers=forwarded)).status_code == 401
        # The left-most entries are the client's own words and are not believed.
        spoofed = {"X-Forwarded-For": "203.0.113.1, 198.51.100.7"}
        assert (await gateway.get("/v1/users/me", headers=spoofed)).status_code == 401
        assert (await gateway.get("/v1/users/me", headers=spoofed)).status_code == 429
        # Probes and scrapes are never limited.
        for path in ("/health/live", "/metrics", "/health/live"):
            assert (await gateway.get(path)).status_code == 200


async def test_route_policies_count_on_top_of_the_plan(stack, backend):
    settings = gateway_settings(stack, rate_limit_routes={"GET /v1/users/me": "2/60s"}, **backend)
    async with in_process_gateway(settings) as gateway:
        tenant = await signup(gateway, plan="pro")
        first = await gateway.get("/v1/users/me", headers=tenant.auth)
        assert first.headers["ratelimit-policy"] == (
            f'"pro";q=1000;w=60, "GET /v1/users/me";q=2;w=60, {monthly_policy(10_000_000)}'
        )
        assert first.headers["ratelimit"].startswith('"pro";r=999;t=60, "GET /v1/users/me";r=1;t=60, "monthly";')
        # The X- headers describe the tightest policy.
        assert first.headers["x-ratelimit-limit"] == "2"
        assert first.headers["x-ratelimit-remaining"] == "1"
        assert (await gateway.get("/v1/users/me", headers=tenant.auth)).status_code == 200
        refused = await gateway.get("/v1/users/me", headers=tenant.auth)
        assert refused.status_code == 429
        assert refused.json()["policy"] == "GET /v1/users/me"
        # Other routes still work and the refused request did not use the plan's quota.
        other = await gateway.get(f"/v1/users/{tenant.admin_id}", headers=tenant.auth)
        assert other.status_code == 200
        assert other.headers["ratelimit"].startswith('"pro";r=997;t=60, "monthly";r=9999997;t=')


def test_a_route_policy_for_a_route_that_does_not_exist_stops_the_start():
    with pytest.raises(ValueError, match="not a route"):
        create_app(gateway_settings(None, rate_limit_routes={"GET /v1/nope": "1/60s"}))
    with pytest.raises(ValueError, match="quota"):
        gateway_settings(None, rate_limit_pro="lots")


# ---------------------------------------------------------------- Redis failing


async def store_errors(gateway: httpx.AsyncClient) -> float:
    metrics = (await gateway.get("/metrics")).text
    total = 0.0
    for line in metrics.splitlines():
        if line.startswith("gateway_store_errors_total{") and 'stage="rate_limit"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


@pytest.mark.parametrize("mode", ["open", "closed"])
async def test_redis_down_follows_the_failure_mode_within_the_timeout_and_recovers(stack, mode):
    with private_redis() as server:
        settings = private_redis_settings(
            stack,
            server,
            rate_limit_failure_mode=mode,
            idempotency_enabled=False,
        )
        async with in_process_gateway(settings) as gateway:
            headers = bearer("pro")
            up = await gateway.get("/v1/nothing-here", headers=headers)
            assert up.status_code == 404
            assert up.headers["x-ratelimit-remaining"] == "999"

            server.stop()  # its socket now refuses at once
            for _ in range(3):
                down = await gateway.get("/v1/nothing-here", headers=headers)
                assert "x-ratelimit-remaining" not in down.headers
                if mode == "open":
                    assert down.status_code == 404
                else:
                    assert down.status_code == 503
                    assert down.json()["error_code"] == "EDGE_STORE_UNAVAILABLE"
                    assert down.json()["stage"] == "rate_limit"
                    assert down.headers["retry-after"] == "1"
            assert await store_errors(gateway) >= 3

            server.start()  # an empty Redis at the same address: counters start over

            async def counted_again() -> bool:
                back = await gateway.get("/v1/nothing-here", headers=headers)
                return back.status_code == 404 and "x-ratelimit-remaining" in back.headers

            await eventually(counted_again, timeout=60, interval=0.1)


async def timed_get(gateway: httpx.AsyncClient, path: str, headers: dict[str, str]) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    response = await gateway.get(path, headers=headers)
    return response, time.monotonic() - started


async def test_a_hung_redis_costs_at_most_the_timeout(stack):
    """Requests never wait for a hung Redis: every one is answered while it is still hung (so by its
    own deadline, not by Redis coming back), and each gave up on the store by that deadline.

    What a request costs is measured against a control: the same ten requests at once while Redis
    answers, just before. Hung, each may cost what the control cost plus one wait of the timeout;
    it is held to twice both, a margin for the machine's load that still refuses a request which
    waited the timeout twice over and more (one deadline per request's Redis batch, not one per call)."""
    timeout = 0.5
    with private_redis() as server:
        settings = private_redis_settings(stack, server, redis_timeout_seconds=timeout)
        async with in_process_gateway(settings) as gateway:
            headers = bearer("pro")
            assert "x-ratelimit-limit" in (await gateway.get("/v1/nothing-here", headers=headers)).headers
            control = await asyncio.gather(*(timed_get(gateway, "/v1/nothing-here", headers) for _ in range(10)))
            assert [a.status_code for a, _ in control] == [404] * 10
            server.pause()
            try:
                timed = await asyncio.wait_for(
                    asyncio.gather(*(timed_get(gateway, "/v1/nothing-here", headers) for _ in range(10))), 60
                )
                # Still hung at this point: no answer above can have come from Redis waking up.
                assert server.proc is not None
                assert server.proc.poll() is None
            finally:
                server.resume()
            answers = [a for a, _ in timed]
            assert [a.status_code for a in answers] == [404] * 10
            assert await store_errors(gateway) >= 10
            slowest_control = max(took for _, took in control)
            slowest = max(took for _, took in timed)
            assert slowest <= 2 * (timeout + slowest_control), (slowest, slowest_control)

            async def counted_in_redis_again() -> bool:
                # Local counting also sends the headers: look for the caller's counter in Redis itself.
                probe = str(uuid.uuid4())
                await gateway.get("/v1/nothing-here", headers=bearer("pro", tenant_id=probe))
                return bool(server.client().keys(f"*{probe}*"))

            await eventually(counted_in_redis_again, timeout=60, interval=0.1)


async def test_local_mode_keeps_every_quota_per_instance_while_redis_is_down_then_shares_again(stack, caplog):
    """Two gateway instances on one Redis (a private one, killed and restarted). While it is down each
    counts its own traffic against the same quotas; once it is back they count together again."""
    caplog.set_level("INFO", logger="portico.gateway.edge")
    with private_redis() as server:
        settings = private_redis_settings(
            stack,
            server,
            rate_limit_free="4/60s",
            rate_limit_routes={"POST /v1/auth/token": "2/60s"},
            idempotency_enabled=False,
        )
        assert settings.rate_limit_failure_mode == "local"  # the default
        async with in_process_gateway(settings) as one, in_process_gateway(settings) as two:

            async def codes(pairs) -> list[int]:
                return [(await gw.get("/v1/nothing-here", headers=headers)).status_code for gw, headers in pairs]

            shared = bearer("free")
            assert await codes([(one, shared), (two, shared)] * 3) == [404, 404, 404, 404, 429, 429]

            server.stop()
            tenant = bearer("free")
            for gateway in (one, two):
                answers = [await gateway.get("/v1/nothing-here", headers=tenant) for _ in range(5)]
                assert [a.status_code for a in answers] == [404, 404, 404, 404, 429]
                assert answers[0].headers["x-ratelimit-remaining"] == "3"
                assert answers[-1].json()["policy"] == "free"
                assert int(answers[-1].headers["retry-after"]) > 0
                # The login route's own quota holds too (the users service answers 422 to an empty form).
                logins = [(await gateway.post("/v1/auth/token", data={})).status_code for _ in range(3)]
                assert logins == [422, 422, 429]
                metrics = (await gateway.get("/metrics")).text
                assert 'gateway_store_errors_total{outcome="fail_local",stage="rate_limit"}' in metrics
                assert await store_errors(gateway) >= 8

            server.start()  # empty: shared counts start over
            # Each instance tries Redis again a second after its last failure; wait until both count there.
            deadline = time.monotonic() + 60
            for gateway in (one, two):
                while True:
                    probe = str(uuid.uuid4())
                    await gateway.get("/v1/nothing-here", headers=bearer("free", tenant_id=probe))
                    if server.client().keys(f"*rl:{{t:{probe}}}*"):
                        break
                    assert time.monotonic() < deadline, "the gateway did not go back to Redis"
                    await asyncio.sleep(0.2)
            together = bearer("free")
            assert await codes([(one, together), (two, together)] * 3) == [404, 404, 404, 404, 429, 429]

    failures = [
        r
        for r in caplog.records
        if "counted by this gateway process alone" in r.getMessage() and getattr(r, "edge_stage", "") == "rate_limit"
    ]
    assert 1 <= len(failures) <= 4, [r.getMessage() for r in failures]  # throttled: not one per request
    assert any("answers again" in r.getMessage() for r in caplog.records)


# ---------------------------------------------------------------- Redis Cluster


async def test_on_a_cluster_each_call_stays_in_one_slot_and_callers_spread_over_the_nodes(redis_cluster, infra):
    """The rate-limit script touches several keys per call and the idempotency scripts one: the hash
    tag (`{t:<tenant>}`, `{a:<address>}`) keeps each call's keys in one slot, which is what makes the
    multi-key script legal on a cluster, while different callers land on different nodes."""
    client = create_redis(gateway_settings(None, redis_url=redis_cluster.url, redis_cluster=True))
    assert isinstance(client, RedisCluster)
    prefix = unique_prefix(infra.redis_prefix)
    scripts = ScriptBatcher(client)
    rate, idempotency = RedisRateLimitStore(scripts, prefix), RedisIdempotencyStore(scripts, prefix)
    policies = [policy(10, name="pro"), policy(5, name="POST /v1/auth/token"), policy(3, name="GET /v1/users/me")]
    try:
        tenants = [str(uuid.uuid4()) for _ in range(30)]
        subjects = [f"t:{t}" for t in tenants] + [f"a:203.0.113.{i}" for i in range(10)] + ["a:2001:db8::7"]
        for subject in subjects:
            assert (await rate.hit(subject, policies)).admitted
            assert len({key_slot(rate.key(subject, p).encode()) for p in policies}) == 1, subject
        for tenant in tenants:
            scope_key = f"{{t:{tenant}}}:{uuid.uuid4().hex}"
            assert (await idempotency.claim(KeyedRequest(scope_key, "fp", "owner"), 30_000)).outcome == "acquired"
            assert key_slot(idempotency.key(scope_key).encode()) == key_slot(
                rate.key(f"t:{tenant}", policies[0]).encode()
            )
        sizes = [await client.dbsize(target_nodes=node) for node in client.get_primaries()]
        assert len(sizes) == 3
        assert all(size > 0 for size in sizes), sizes
        # Without the tag, two callers' keys in one script is what the cluster client refuses.
        with pytest.raises(RedisClusterException, match="same key slot"):
            await client.eval("return 1", 2, f"{prefix}rl:t:one:pro", f"{prefix}rl:t:two:pro")
    finally:
        await client.aclose()


async def test_on_a_cluster_redirects_do_not_break_the_calls_in_flight(redis_cluster, infra):
    """A client whose slot map is out of date (a slot moved to another node, or a burst of calls sent
    before the client had read the map) is answered MOVED by the node it asked. The gateway's client
    follows each redirect and patches its map; it must not close every node's connections, which
    would fail the other callers' calls in flight on them."""
    client = create_redis(gateway_settings(None, **cluster_settings(redis_cluster, infra)))
    assert isinstance(client, RedisCluster)
    store = RedisRateLimitStore(ScriptBatcher(client), unique_prefix(infra.redis_prefix))
    quota = policy(1000)
    try:
        await store.hit("t:moved", [quota])  # the client has read the map and loaded the script
        slot = key_slot(store.key("t:moved", quota).encode())
        owner = client.nodes_manager.slots_cache[slot][0]
        elsewhere = next(node for node in client.get_primaries() if node.name != owner.name)
        client.nodes_manager.slots_cache[slot] = [elsewhere]
        verdicts = await concurrently(store.hit("t:moved", [quota]) for _ in range(300))
        assert all(v.admitted for v in verdicts)
        assert sorted(v.states[0].remaining for v in verdicts) == list(range(1000 - 301, 1000 - 1))
        assert client.nodes_manager.slots_cache[slot][0].name == owner.name
    finally:
        await client.aclose()


async def test_gateways_on_a_redis_cluster_count_there(redis_cluster, infra):
    """Two gateways on the cluster (failing closed, so every answer below came from it) share the count."""
    cluster = cluster_settings(redis_cluster, infra)
    settings = gateway_settings(
        None, rate_limit_free="3/60s", rate_limit_failure_mode="closed", idempotency_enabled=False, **cluster
    )
    async with in_process_gateway(settings) as one, in_process_gateway(settings) as two:
        tenant = str(uuid.uuid4())
        headers = bearer("free", tenant_id=tenant)
        answers = [await gateway.get("/v1/nothing-here", headers=headers) for gateway in (one, two, one, two)]
        assert [a.status_code for a in answers] == [404, 404, 404, 429]
        assert [a.headers["x-ratelimit-remaining"] for a in answers] == ["2", "1", "0", "0"]
    client = RedisCluster.from_url(redis_cluster.url)
    try:
        keys = [k.decode() async for k in client.scan_iter(match=f"{cluster['redis_key_prefix']}*")]
    finally:
        await client.aclose()
    # The plan's window, the monthly quota and the usage of the hour: all in the tenant's slot.
    prefix = cluster["redis_key_prefix"]
    assert len(keys) == 3, keys
    assert all(f"{{t:{tenant}}}" in key for key in keys), keys
    assert {key.removeprefix(prefix).split(":", 1)[0] for key in keys} == {"rl", "usage"}
    assert f"{prefix}rl:{{t:{tenant}}}:free" in keys


def test_a_key_prefix_with_braces_is_refused():
    with pytest.raises(ValueError, match="redis_key_prefix"):
        gateway_settings(None, redis_key_prefix="{portico}:")
