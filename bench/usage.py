"""What usage and quotas cost the gateway process per request, measured in-process as CPU time.

    .venv/bin/python -m bench.usage [--requests 20000] [--concurrency 50] [--rounds 5] [--redis-url URL]

Rows, each `--requests` calls made `--concurrency` at a time (so the edge's script batcher pipelines
them as it does under load), against a Redis of the machine (keys under a prefix of their own,
removed at the end):

- the rate limit's script with the plan's window alone (as before the monthly quota);
- the same script with the window and the monthly quota (what every tenant's request now runs);
- the metering's count of an answer (`Metering.count`, in the process) with its share of the writes
  to Redis (`Metering.flush`, one pipeline per 200 answers: 0.1 s at 2,000 answers a second);
- the count in the in-process store (the embedded gateway).

The figure is this process's CPU time (user + system) per call: the work the gateway's event loop
does for it, which moves far less with the machine's other load than a rate does. Redis's own time
is not in it. Rounds are interleaved; the table gives the median.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable

from prometheus_client import CollectorRegistry

from bench.common import redis_prefix
from gateway.app import create_redis
from gateway.edge.metering import MemoryUsageStore, Metering, RedisUsageStore
from gateway.edge.metrics import EdgeMetrics
from gateway.edge.ratelimit import MonthlyPolicies, Policy, RedisRateLimitStore
from gateway.edge.store import ScriptBatcher, StoreCaller
from gateway.settings import GatewaySettings, Quota
from shared.context import RequestContext
from shared.contract import Identity


async def measure(call: Callable[[int], Awaitable[object]], requests: int, concurrency: int) -> float:
    """CPU µs per call of `call(i)` for `requests` calls, `concurrency` at a time."""
    started = time.process_time()
    for first in range(0, requests, concurrency):
        await asyncio.gather(*(call(i) for i in range(first, min(requests, first + concurrency))))
    return (time.process_time() - started) / requests * 1e6


async def run(args: argparse.Namespace, prefix: str) -> dict[str, list[float]]:
    settings = GatewaySettings.model_construct(
        redis_url=args.redis_url, redis_timeout_seconds=5.0, redis_max_connections=64, redis_cluster=False
    )
    redis = create_redis(settings)
    scripts = ScriptBatcher(redis, timeout=5.0)
    metrics = EdgeMetrics(CollectorRegistry())
    counts = RedisRateLimitStore(scripts, prefix)
    plan = Policy("pro", Quota(10**9, 60))
    month = MonthlyPolicies().policy(10**9)
    redis_meter = Metering(
        RedisUsageStore(redis, prefix, 86400),
        StoreCaller("usage", io=True, mode="local", metrics=metrics),
        metrics,
    )
    memory_meter = Metering(
        MemoryUsageStore(86400), StoreCaller("usage", io=False, mode="local", metrics=metrics), metrics
    )
    tenants = [f"t:{uuid.uuid4()}" for _ in range(100)]
    contexts = [
        RequestContext(request_id="r", principal=Identity(subject="u", tenant_id=t[2:]), route="/v1/users/me")
        for t in tenants
    ]

    async def metered(meter: Metering, i: int) -> None:
        meter.count(contexts[i % 100], 200)
        if i % 200 == 199:
            await meter.flush()

    rows: dict[str, Callable[[int], Awaitable[object]]] = {
        "rate limit script, plan window alone": lambda i: counts.hit(tenants[i % 100], [plan]),
        "rate limit script, plan window + monthly quota": lambda i: counts.hit(tenants[i % 100], [plan, month]),
        "metering, Redis (Metering.count, written every 200)": lambda i: metered(redis_meter, i),
        "metering, in-process (Metering.count)": lambda i: metered(memory_meter, i),
    }
    results: dict[str, list[float]] = {name: [] for name in rows}
    try:
        for call in rows.values():  # warm-up: scripts loaded, connections open
            await measure(call, 2000, args.concurrency)
        for _ in range(args.rounds):
            for name, call in rows.items():
                results[name].append(await measure(call, args.requests, args.concurrency))
    finally:
        await scripts.aclose()
        await redis.aclose()
    return results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--redis-url", default=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"))
    args = parser.parse_args()
    with redis_prefix(args.redis_url) as prefix:
        results = asyncio.run(run(args, prefix))
    print(f"\n{args.requests} calls x {args.rounds} rounds, {args.concurrency} at a time; CPU µs per call\n")
    print("| row | CPU µs per call (median) | rounds |")
    print("|---|---|---|")
    for name, values in results.items():
        runs = ", ".join(f"{v:.1f}" for v in values)
        print(f"| {name} | {statistics.median(values):.1f} | {runs} |")


if __name__ == "__main__":
    main()
