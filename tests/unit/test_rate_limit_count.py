"""`RateLimits.count`, the one admission path of requests and WebSocket connections, on the
in-process store: what it counts, and what it leaves alone."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry

from gateway.edge.metrics import EdgeMetrics
from gateway.edge.ratelimit import MemoryRateLimitStore, RateLimiter, RateLimits
from gateway.edge.store import StoreCaller
from gateway.settings import GatewaySettings, Quota
from shared.contract import Identity
from tests.conftest import JWT_SECRET

TENANT = Identity(subject="u", tenant_id="t", plan="free")


def stage(**settings: Any) -> RateLimits:
    metrics = EdgeMetrics(CollectorRegistry())
    limiter = RateLimiter(MemoryRateLimitStore(), StoreCaller("rate_limit", io=False, mode="local", metrics=metrics))
    return RateLimits(GatewaySettings(jwt_secret=JWT_SECRET, **settings), limiter, metrics, {})


def scope(path: str) -> dict[str, Any]:
    return {"type": "http", "method": "GET", "path": path, "headers": [], "client": ("127.0.0.1", 1)}


async def test_a_request_counts_and_the_spent_quota_refuses() -> None:
    limits = stage(rate_limit_free=Quota(2, 60))
    attributes: dict[str, Any] = {}
    counted = [await limits.count(scope("/v1/users/me"), TENANT, "/v1/users/me", attributes) for _ in range(3)]
    assert all(c.counted and c.verdict is not None for c in counted)
    assert [c.refusal is None for c in counted] == [True, True, False]
    assert attributes["portico.rate_limit.decision"] == "refused"


async def test_an_exempt_path_asks_nothing_of_the_store() -> None:
    limits = stage(rate_limit_free=Quota(1, 60))
    attributes: dict[str, Any] = {}
    for _ in range(3):
        counted = await limits.count(scope("/health/ready"), TENANT, None, attributes)
        assert (counted.counted, counted.verdict, counted.refusal) == (False, None, None)
    assert attributes == {}
    # Nothing of the tenant's quota went to the exempt path.
    assert (await limits.count(scope("/v1/users/me"), TENANT, "/v1/users/me", attributes)).refusal is None
