"""The adaptive limit's rules (`shared/admission.py`): plan shares, the queue and its order, and the
limit following latency. Times are given, never waited for, except the queue's own timeout."""

from __future__ import annotations

import asyncio
import time

import orjson
from prometheus_client import CollectorRegistry

from shared.admission import RANK_OF, AdaptiveLimit, AdmissionMetrics, LimitSettings, Shedder, parse_deadline

FREE, PRO, ENTERPRISE = RANK_OF["free"], RANK_OF["pro"], RANK_OF["enterprise"]
SHARES = {"anonymous": 0.5, "free": 0.5, "pro": 0.75, "enterprise": 1.0}


def fixed(limit: int, *, queue: int = 0, wait: float = 0.0) -> LimitSettings:
    return LimitSettings(
        initial_limit=limit,
        min_limit=limit,
        max_limit=limit,
        rtt_tolerance=1.5,
        smoothing=0.2,
        window_seconds=0.0,
        queue_size=queue,
        queue_timeout_seconds=wait,
        retry_after_seconds=1,
    )


def test_each_plan_fills_only_its_share_of_the_limit():
    gate = AdaptiveLimit(fixed(8), shares=SHARES)
    assert [gate.enter(FREE) for _ in range(5)] == [True] * 4 + [False]
    assert [gate.enter(PRO) for _ in range(3)] == [True, True, False]
    assert [gate.enter(ENTERPRISE) for _ in range(3)] == [True, True, False]
    assert gate.in_flight == 8
    gate.leave(time.perf_counter())
    assert not gate.enter(FREE)
    assert gate.enter(ENTERPRISE)


async def test_a_freed_slot_goes_to_the_best_plan_waiting_and_a_full_queue_refuses_the_lower_plans():
    gate = AdaptiveLimit(fixed(2, queue=2, wait=30.0), shares={"free": 1.0, "pro": 1.0, "enterprise": 1.0})
    assert gate.enter(ENTERPRISE)
    assert gate.enter(ENTERPRISE)
    free = asyncio.ensure_future(gate.wait(FREE))
    pro = asyncio.ensure_future(gate.wait(PRO))
    await asyncio.sleep(0)
    # The queue is full: an enterprise request takes the newest lower-ranked place (the pro one's
    # would be taken only once no free one waits).
    enterprise = asyncio.ensure_future(gate.wait(ENTERPRISE))
    await asyncio.sleep(0)
    assert await free == "limit"
    gate.leave(time.perf_counter())
    assert await enterprise is None
    assert not pro.done()
    gate.leave(time.perf_counter())
    assert await pro is None
    assert gate.in_flight == 2
    assert gate._queued == 0


async def test_requests_that_wait_out_their_time_leave_the_queue():
    gate = AdaptiveLimit(fixed(1, queue=3, wait=0.01), shares=SHARES)
    assert gate.enter(ENTERPRISE)
    for _ in range(3):
        assert await asyncio.gather(*(gate.wait(ENTERPRISE) for _ in range(3))) == ["queue_timeout"] * 3
    assert gate._queued == 0
    cancelled = asyncio.ensure_future(gate.wait(ENTERPRISE))
    await asyncio.sleep(0)
    cancelled.cancel()
    await asyncio.gather(cancelled, return_exceptions=True)
    assert gate._queued == 0
    gate.leave(time.perf_counter())
    assert gate.in_flight == 0


def run_window(gate: AdaptiveLimit, requests: int, rtt: float) -> None:
    """`requests` in progress at once, each ending after `rtt` seconds (given, not waited)."""
    for _ in range(requests):
        assert gate.enter(ENTERPRISE)
    for _ in range(requests):
        gate.leave(time.perf_counter() - rtt)


def test_the_limit_grows_while_latency_holds_and_shrinks_when_it_rises():
    settings = LimitSettings(
        initial_limit=40,
        min_limit=10,
        max_limit=200,
        rtt_tolerance=1.5,
        smoothing=0.2,
        window_seconds=0.0,
        queue_size=0,
        queue_timeout_seconds=0.0,
        retry_after_seconds=1,
    )
    gate = AdaptiveLimit(settings)
    for _ in range(20):
        run_window(gate, int(gate.limit), 0.010)
    grown = gate.limit
    assert grown > 40
    for _ in range(3):
        run_window(gate, int(gate.limit), 0.100)
    assert gate.limit < grown / 2
    assert gate.limit >= settings.min_limit


def test_a_few_slow_requests_do_not_cut_the_limit_and_most_do():
    """A window's latency is its median: a tenth of its requests waiting out a one-second timeout
    leave the limit alone, half of them cut it."""
    settings = LimitSettings(40, 10, 200, 1.5, 0.2, 3600.0, 0, 0.0, 1)
    gate = AdaptiveLimit(settings)

    def window(slow: int) -> None:
        for _ in range(40):
            assert gate.enter(ENTERPRISE)
        for n in range(40):
            gate.leave(time.perf_counter() - (1.0 if n < slow else 0.010))
        gate._update(time.perf_counter())  # the window ends

    for _ in range(10):
        window(0)
    steady = gate.limit
    for _ in range(5):
        window(4)
    assert gate.limit >= steady
    before = gate.limit
    window(30)
    assert gate.limit < before


def test_an_idle_process_keeps_its_limit():
    gate = AdaptiveLimit(LimitSettings(50, 10, 1000, 1.5, 0.2, 0.0, 0, 0.0, 1))
    for _ in range(50):
        run_window(gate, 2, 0.5)
    assert gate.limit == 50


def test_deadlines_parse_or_are_ignored():
    assert parse_deadline(b"1765101234.567") == 1765101234.567
    for value in (None, b"soon", b"nan", b"inf", b""):
        assert parse_deadline(value) is None


async def test_a_limit_lowered_by_an_overload_that_is_over_starts_again_from_the_initial_limit():
    gate = AdaptiveLimit(LimitSettings(50, 10, 1000, 1.5, 0.2, 0.0, 0, 0.0, 1))
    for _ in range(5):
        run_window(gate, int(gate.limit), 0.010)
    for _ in range(5):
        run_window(gate, int(gate.limit), 1.0)
    lowered = int(gate.limit)
    assert lowered < 50
    for _ in range(lowered):
        assert gate.enter(ENTERPRISE)
    # Still busy: the lowered limit holds.
    assert await gate.wait(ENTERPRISE) == "limit"
    gate._busy_at -= 60  # a minute without using it
    assert await gate.wait(ENTERPRISE) is None
    assert gate.limit == 50


async def test_refuses_says_what_wait_would_answer_without_waiting():
    gate = AdaptiveLimit(fixed(2, queue=1, wait=30.0), shares=SHARES)
    assert not gate.refuses(FREE)
    assert gate.enter(ENTERPRISE)
    assert gate.refuses(FREE) is False  # the queue has room: `wait` decides
    assert gate.enter(ENTERPRISE)
    waiting = asyncio.ensure_future(gate.wait(FREE))
    await asyncio.sleep(0)
    # The queue is full of a free request: another free one is refused, a pro one may take its place.
    assert gate.refuses(FREE)
    assert not gate.refuses(PRO)
    gate.leave(time.perf_counter())
    gate.leave(time.perf_counter())
    assert await waiting is None
    assert not gate.refuses(FREE)
    no_queue = AdaptiveLimit(fixed(1), shares=SHARES)
    assert no_queue.enter(ENTERPRISE)
    assert no_queue.refuses(ENTERPRISE)


def test_the_shedder_admits_or_refuses_as_the_limit_would_and_never_sheds_the_probes():
    metrics = AdmissionMetrics(CollectorRegistry())
    gate = AdaptiveLimit(fixed(4), metrics, shares=SHARES)
    ranks = {b"free": FREE, b"enterprise": ENTERPRISE}
    shedder = Shedder(
        gate,
        metrics,
        rank=lambda method, path, raw: ranks[dict(raw)[b"plan"]],
        exempt={"/health/ready", "/metrics"},
        headers=[(b"x-content-type-options", b"nosniff")],
        max_body=1000,
    )
    free, enterprise = [(b"plan", b"free")], [(b"plan", b"enterprise")]
    # Admitted while there is room: the slot is taken, until released.
    assert shedder.admit(b"GET", "/v1/users/me", free) is True
    assert shedder.admit(b"GET", "/v1/users/me", enterprise) is True
    assert gate.in_flight == 2
    # Half the limit in use: free callers are refused, enterprise ones admitted; the probes, the
    # scrape and a body the app refuses (413) are left to the app, untouched.
    refused = shedder.admit(b"GET", "/v1/users/me", free)
    assert isinstance(refused, tuple)
    assert shedder.admit(b"GET", "/health/ready", free) is False
    assert shedder.admit(b"GET", "/metrics", free) is False
    assert shedder.admit(b"POST", "/v1/orders", [*free, (b"content-length", b"1001")]) is False
    assert shedder.admit(b"GET", "/v1/users/me", enterprise) is True
    assert gate.in_flight == 3
    head, body = refused
    lines = dict(line.split(b": ", 1) for line in head.split(b"\r\n") if line)
    problem = orjson.loads(body)
    assert problem["error_code"] == "OVERLOADED"
    assert problem["status"] == 503
    assert problem["request_id"].encode() == lines[b"x-request-id"]
    assert len(lines[b"x-request-id"]) == 32
    assert lines[b"content-type"] == b"application/problem+json"
    assert lines[b"content-length"] == str(len(body)).encode()
    assert lines[b"retry-after"] == b"1"
    assert lines[b"x-content-type-options"] == b"nosniff"
    # A client's own request id is kept, as the app keeps it; a malformed one is replaced.
    mine = shedder.admit(b"GET", "/v1/users/me", [*free, (b"x-request-id", b"client-id-0001")])
    assert isinstance(mine, tuple)
    assert orjson.loads(mine[1])["request_id"] == "client-id-0001"
    assert b"content-length: %d\r\n" % len(mine[1]) in mine[0]
    bad = shedder.admit(b"GET", "/v1/users/me", [*free, (b"x-request-id", b"no spaces allowed")])
    assert isinstance(bad, tuple)
    assert orjson.loads(bad[1])["request_id"] not in {"no spaces allowed", problem["request_id"]}
    assert metrics.shed.labels(reason="limit", plan="free")._value.get() == 3
    # A browser's request (with `Origin`) is left to the app, whose refusal carries CORS headers.
    browsers = Shedder(gate, metrics, rank=lambda method, path, raw: FREE, app_decides=[b"origin"])
    assert browsers.admit(b"GET", "/v1/users/me", [(b"origin", b"https://app.example")]) is False
    assert isinstance(browsers.admit(b"GET", "/v1/users/me", free), tuple)
    for _ in range(3):
        shedder.release(time.perf_counter())
    assert gate.in_flight == 0
    # Services rank every request alike.
    service = Shedder(gate, metrics)
    assert [service.admit(b"GET", "/products", []) for _ in range(4)] == [True] * 4
    assert isinstance(service.admit(b"GET", "/products", []), tuple)
    assert metrics.shed.labels(reason="limit", plan="all")._value.get() == 1
