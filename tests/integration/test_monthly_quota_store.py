"""The monthly quota in the rate limit's stores: the same contract for Redis (single and cluster) and
the in-process store. A calendar policy admits exactly its limit under concurrency, counts with the
windows or not at all, reports each threshold from the request that reached it until it is marked
published, and a limit of -1 counts without refusing."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator

import pytest

from gateway.app import create_redis
from gateway.edge.metering import MemoryThresholdMarks, RedisThresholdMarks, ThresholdMarks
from gateway.edge.ratelimit import MONTHLY, MemoryRateLimitStore, Policy, RateLimitStore, RedisRateLimitStore
from gateway.edge.store import ScriptBatcher
from gateway.settings import Quota
from tests.edge_support import BACKENDS, backend_settings, concurrently, gateway_settings


@pytest.fixture(params=BACKENDS)
async def stores(request, infra) -> AsyncIterator[tuple[RateLimitStore, ThresholdMarks]]:
    settings = backend_settings(request, infra)
    if not settings:
        memory = MemoryRateLimitStore()
        yield memory, MemoryThresholdMarks(memory)
        return
    client = create_redis(gateway_settings(None, **settings))
    try:
        counts = RedisRateLimitStore(ScriptBatcher(client), settings["redis_key_prefix"])
        yield counts, RedisThresholdMarks(client, counts)
    finally:
        await client.aclose()


def monthly(limit: int, left_seconds: int = 3600) -> Policy:
    period = f"test-{uuid.uuid4().hex[:8]}"
    return Policy(
        MONTHLY, Quota(limit, 30 * 86400), period=period, period_end_ms=int(time.time() * 1000) + left_seconds * 1000
    )


def window(limit: int) -> Policy:
    return Policy("window", Quota(limit, 60))


async def test_a_monthly_quota_admits_exactly_its_limit_and_each_threshold_is_reached_once(stores):
    store, marks = stores
    quota = monthly(10)
    subject = f"t:{uuid.uuid4()}"
    verdicts = await concurrently(store.hit(subject, [window(1000), quota]) for _ in range(30))
    admitted = [v for v in verdicts if v.admitted]
    assert len(admitted) == 10
    # The monthly state is the second; its remaining tells which request each was.
    by_count = {10 - v.states[1].remaining: v for v in admitted}
    assert sorted(by_count) == list(range(1, 11))
    pending = {n: {p.key: flags for p, flags in v.pending}.get(quota.key, 0) for n, v in by_count.items()}
    # Nothing before 80% (8 of 10); the 80% one pending from the 8th on; the 100% one from the 10th.
    assert [pending[n] for n in range(1, 11)] == [0] * 7 + [1, 1, 3]
    refused = [v for v in verdicts if not v.admitted]
    assert len(refused) == 20
    for verdict in refused:
        state = verdict.states[1]
        assert state.remaining == 0
        # Until the period ends: an hour here.
        assert 3_500_000 < state.retry_after_ms <= 3_600_000
        assert verdict.tightest.policy == quota
        assert {p.key: f for p, f in verdict.pending}[quota.key] == 3
    assert await marks.threshold_count(subject, quota, 80) == 8
    assert await marks.threshold_count(subject, quota, 100) == 10
    assert await marks.used(subject, quota) == 10

    # Published, a threshold is no longer reported.
    await marks.mark_published(subject, quota, 80)
    again = await store.hit(subject, [window(1000), quota])
    assert not again.admitted
    assert [(p.key, f) for p, f in again.pending] == [(quota.key, 2)]
    await marks.mark_published(subject, quota, 100)
    assert (await store.hit(subject, [window(1000), quota])).pending == ()


async def test_the_month_and_the_window_count_together_or_not_at_all(stores):
    store, marks = stores
    quota, narrow = monthly(5), window(2)
    subject = f"t:{uuid.uuid4()}"
    codes = [(await store.hit(subject, [narrow, quota])).admitted for _ in range(4)]
    assert codes == [True, True, False, False]
    # The window's refusals did not use the month.
    assert await marks.used(subject, quota) == 2
    spent = monthly(1)
    assert (await store.hit(subject + "x", [window(100), spent])).admitted
    refused = await store.hit(subject + "x", [window(100), spent])
    assert not refused.admitted
    # Nor did the month's refusal use the window.
    assert refused.states[0].remaining == 99


async def test_an_unlimited_month_counts_and_never_refuses(stores):
    store, marks = stores
    quota = monthly(-1)
    subject = f"t:{uuid.uuid4()}"
    verdicts = [await store.hit(subject, [window(1000), quota]) for _ in range(5)]
    assert all(v.admitted for v in verdicts)
    # Not a policy clients see, and no thresholds.
    assert all([s.policy.name for s in v.states] == ["window"] for v in verdicts)
    assert all(v.pending == () for v in verdicts)
    assert await marks.used(subject, quota) == 5
