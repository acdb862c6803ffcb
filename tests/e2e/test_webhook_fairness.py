"""Tenants share the delivery workers fairly, and endpoints protect their receivers: the worker as a
real process on PostgreSQL, receivers on real sockets in this process.

One tenant's slow receivers hold requests open while another tenant's delivery is made: it arrives
while they are still held, receiver on another host or on the same one. An endpoint's rate limit is
measured as deliveries per second at its receiver, with two workers sharing it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator

import pytest

from tests.infra import Servers
from tests.webhook_support import HooksDb, Received, Receiver, Workers, eventually, hooks_db, http_answer

# Far beyond the time the tests wait: a slow receiver's request stays open until the test lets it go.
SLOW_TIMEOUT_SECONDS = 120
# What a fast delivery may take while another tenant's receivers hang, at most; a tenth of the
# time the slow receivers are made to hold their requests at least (HOLD_SECONDS).
FAST_BOUND_SECONDS = 2.0
HOLD_SECONDS = 20.0


@pytest.fixture
async def pg(migrated: Servers, tmp_path) -> AsyncIterator[HooksDb]:
    async with hooks_db(migrated, "postgresql", tmp_path) as found:
        yield found


@pytest.fixture
def workers(pg: HooksDb, tmp_path) -> Iterator[Workers]:
    running = Workers(pg, tmp_path)
    try:
        yield running
    finally:
        running.stop_all()


class Receivers:
    """A handler for every receiver of a test: requests to slow paths are held until released, the
    others answered at once; each arrival is noted with the time and what was held then."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.holding = 0
        self.most = 0
        self.slow_answered = 0
        self.fast: list[tuple[float, Received, int]] = []  # (monotonic arrival, request, slow ones held)

    async def __call__(self, request: Received, writer: asyncio.StreamWriter) -> bool:
        if request.path.startswith("/slow"):
            self.holding += 1
            self.most = max(self.most, self.holding)
            try:
                await self.release.wait()
            finally:
                self.holding -= 1
            self.slow_answered += 1
        else:
            self.fast.append((time.monotonic(), request, self.holding))
        writer.write(http_answer(204))
        await writer.drain()
        return True

    async def fast_arrival(self, count: int, timeout: float) -> tuple[float, int]:
        """When the `count`-th fast request arrived, and how many slow ones were held then."""
        await eventually(lambda: _at_least(lambda: len(self.fast), count), timeout)
        arrived, _, held = self.fast[count - 1]
        return arrived, held


async def _at_least(value, expected: int) -> bool:
    return value() >= expected


async def fast_latency(db: HooksDb, handler: Receivers, endpoint, timeout: float) -> tuple[float, int]:
    """Seconds from a delivery of `endpoint` becoming due to its arrival, and the slow requests held then."""
    count = len(handler.fast) + 1
    made = time.monotonic()
    await db.deliveries(endpoint)
    arrived, held = await handler.fast_arrival(count, timeout)
    return arrived - made, held


@pytest.mark.parametrize("place", ["another-host", "same-host"])
async def test_a_tenants_slow_receivers_do_not_delay_another_tenants_delivery(pg, workers, place):
    """Ten slow endpoints of one tenant, each with more due deliveries than the worker has slots,
    hold every request they get; another tenant's delivery goes out at once all the same.

    On another host the slow tenant may hold only its share of the worker's slots
    (WEBHOOKS_TENANT_CONCURRENCY, 8 of 32); on the same host (host:port) as the fast receiver, only
    its share of connections to that host (WEBHOOKS_TENANT_HOST_CONCURRENCY, 4), and the fast
    tenant's connection is not counted against it. The worker runs with its default bounds."""
    handler = Receivers()
    async with contextlib.AsyncExitStack() as stack:
        shared = await stack.enter_async_context(Receiver(handler))
        if place == "same-host":
            slow_urls = [f"http://127.0.0.1:{shared.port}/slow/{i}" for i in range(10)]
            fast_url = f"http://127.0.0.1:{shared.port}/fast"
        else:
            slow_receivers = [await stack.enter_async_context(Receiver(handler)) for _ in range(10)]
            slow_urls = [f"http://127.0.0.1:{r.port}/slow/{i}" for i, r in enumerate(slow_receivers)]
            fast = await stack.enter_async_context(Receiver(handler, host="127.0.0.2"))
            fast_url = f"http://127.0.0.2:{fast.port}/fast"
        await workers.started(
            WEBHOOKS_DELIVERY_TIMEOUT_SECONDS=str(SLOW_TIMEOUT_SECONDS),
            WEBHOOKS_DELIVERY_LEASE_SECONDS=str(SLOW_TIMEOUT_SECONDS + 10),
        )
        fast_endpoint = await pg.endpoint(fast_url)
        # The control: the fast tenant's delivery with nothing else going on.
        control, _ = await fast_latency(pg, handler, fast_endpoint, HOLD_SECONDS)

        slow_tenant = "slow-tenant"
        slow = [await pg.endpoint(url, tenant_id=slow_tenant) for url in slow_urls]
        held = []
        for endpoint in slow:
            held += await pg.deliveries(endpoint, 6)
        await eventually(lambda: _at_least(lambda: handler.holding, 4), HOLD_SECONDS)

        loaded, held_then = await fast_latency(pg, handler, fast_endpoint, HOLD_SECONDS)
        # It came while the slow tenant's requests were still held, none of them answered yet.
        assert held_then >= 4
        assert handler.slow_answered == 0
        assert loaded < FAST_BOUND_SECONDS + control, (loaded, control)
        # The slow tenant held no more than its share, whatever its backlog.
        assert handler.most <= (4 if place == "same-host" else 8), handler.most

        handler.release.set()

        async def all_delivered() -> bool:
            return set(await pg.statuses(held)) == {"succeeded"}

        await eventually(all_delivered, 120)
    assert handler.most <= (4 if place == "same-host" else 8), handler.most
    print(f"{place}: fast delivery {control:.3f}s alone, {loaded:.3f}s beside the slow tenant")


async def test_an_endpoints_rate_limit_spaces_its_deliveries_across_workers(pg, workers):
    """An endpoint limited to 4 deliveries per second, 17 of them due at once, two workers: they
    arrive at that rate, not faster (an unlimited endpoint's burst beside it arrives at once)."""
    rate, count = 4, 17
    arrivals: dict[str, list[float]] = {"/limited": [], "/unlimited": []}

    async def note(request: Received, writer: asyncio.StreamWriter) -> bool:
        arrivals[request.path].append(time.monotonic())
        writer.write(http_answer(204))
        await writer.drain()
        return True

    async with Receiver(note) as receiver:
        await workers.started(2)
        limited = await pg.endpoint(f"http://127.0.0.1:{receiver.port}/limited", rate_limit_per_second=rate)
        unlimited = await pg.endpoint(f"http://127.0.0.1:{receiver.port}/unlimited")
        deliveries = [*await pg.deliveries(limited, count), *await pg.deliveries(unlimited, count)]

        async def all_delivered() -> bool:
            return set(await pg.statuses(deliveries)) == {"succeeded"}

        await eventually(all_delivered, 120)
    limited_times = sorted(arrivals["/limited"])
    assert len(limited_times) == count
    span = limited_times[-1] - limited_times[0]
    per_second = (count - 1) / span
    # Sixteen intervals of a quarter second: four seconds, give or take the first attempt's start.
    assert per_second <= rate * 1.25, (per_second, span)
    assert per_second >= rate / 3, (per_second, span)
    busiest = max(sum(1 for t in limited_times if start <= t < start + 1) for start in limited_times)
    assert busiest <= 2 * rate, busiest
    # The control: beside it, the same workers sent the unlimited endpoint's burst far faster.
    unlimited_times = sorted(arrivals["/unlimited"])
    assert len(unlimited_times) == count
    assert unlimited_times[-1] - unlimited_times[0] < span / 2, (unlimited_times[-1] - unlimited_times[0], span)
    print(f"rate limit {rate}/s: {per_second:.2f} deliveries/s measured, at most {busiest} in one second")
