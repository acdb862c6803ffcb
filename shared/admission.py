"""Admission control and deadlines: how a process stays useful when more work arrives than it can do.

Adaptive concurrency limit
--------------------------
Every process admits at most `limit` requests in progress. The limit is not fixed: it follows the
latency of the requests it admits, as Netflix's `Gradient2Limit` (and Envoy's `adaptive_concurrency`
filter) does. Each window (`ADMISSION_WINDOW_SECONDS`) the median time of the requests finished in
it is the short RTT (a median, as Envoy's filter takes a percentile, p50 by default: a few requests
that waited out a timeout or a lost packet would move a mean, and cut the limit for everyone); an
exponential average of the short RTTs is the long RTT, the process's latency when it is not
overloaded: it follows a rise slowly (over some 600 windows, so that an overload does
not become the new normal while it lasts) and a fall quickly (over some 10). Then, once per window:

    gradient  = clamp(tolerance * long_rtt / short_rtt, 0.5, 1.0)
    new_limit = limit * gradient + sqrt(limit)            # sqrt(limit): room to probe upwards
    limit     = clamp(limit * (1 - smoothing) + new_limit * smoothing, min_limit, max_limit)

While latency stays within `tolerance` of the long RTT the limit grows by sqrt(limit) per window
(smoothed); when requests start to wait for the CPU, the pool or a slow upstream, short RTT rises,
the gradient falls below one and the limit shrinks with it, at most halving per window. The limit
does not move while the process uses less than half of it (its latency would say nothing about the
limit); once the process has not used half of it for a while, a request that would be refused resets
it to the initial limit (an overload that lowered it is over).

Past the limit a request may wait in a short queue (`ADMISSION_QUEUE_SIZE` requests, each at most
`ADMISSION_QUEUE_TIMEOUT_SECONDS`); a slot that frees goes to the waiting request of the highest
rank. Without a slot or a place in the queue, or after its wait, the request is answered at once with
503 `OVERLOADED` and `Retry-After`, before any costly work.

Priority
--------
Each request has a rank, its caller's plan (`anonymous`, `free`, `pro`, `enterprise`), and each rank a
share of the limit: a request is admitted while the requests in progress are fewer than its plan's
share of the limit (`GATEWAY_ADMISSION_PLAN_SHARES`, default anonymous and free 0.2, pro 0.4,
enterprise 1.0). So when the process fills up, anonymous and free requests are the first refused
(at a fifth of the limit), pro next, and enterprise only when the whole limit is in use; a freed
slot goes to the best-ranked request waiting. Services admit every request alike (the gateway ranked
them).

Deadlines
---------
The gateway gives each request its own timeout budget and sends every service it calls the time
left as `X-Request-Deadline: <unix seconds with milliseconds>`; a service passes it on to the
services it calls. A service refuses a request whose deadline has passed with 504
`DEADLINE_EXCEEDED` before its route runs (no SQL, no call), since the caller has given up on it.

The cost on the hot path is one comparison and two counter updates to admit, and a subtraction, an
append and two comparisons to release (the limit is recomputed once per window, sorting its times): see
`bench/overload.py --micro` and `docs/benchmarks/overload.md`.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import math
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge
from starlette.types import ASGIApp, Receive, Scope, Send

from shared.asgi import declared_length, find_headers, header
from shared.contract import PLANS, PROBE_PATHS
from shared.errors import DeadlineExceeded, Overloaded, PorticoError, problem_message, retry_in
from shared.metrics import LabelCache, samples_directory
from shared.request_id import CLIENT_REQUEST_ID, REQUEST_ID_HEADER, new_request_id, request_id_of
from shared.settings import ProcessSettings, settings_group

DEADLINE_HEADER = b"x-request-deadline"
DEADLINE_HEADER_NAME = "X-Request-Deadline"
# Ranks, lowest first: who is refused first when the process fills up.
RANKS: tuple[str, ...] = ("anonymous", *PLANS)
RANK_OF: dict[str, int] = {name: rank for rank, name in enumerate(RANKS)}
TOP_RANK = len(RANKS) - 1
# The `plan` label of a service's refusals: services do not rank requests.
UNRANKED = "all"
# Why a request was refused (`portico_requests_shed_total{reason}`).
SHED_LIMIT = "limit"
SHED_QUEUE_TIMEOUT = "queue_timeout"
SHED_DEADLINE = "deadline"
# Never refused: the probes (an overloaded process is alive and ready, it is only busy) and the scrape.
EXEMPT_PATHS = frozenset(PROBE_PATHS)

# The deadline of the request being served (Unix seconds), which every call it makes carries on.
deadline_var: contextvars.ContextVar[float | None] = contextvars.ContextVar("portico_deadline", default=None)

# Gradient2's fixed parts: the gradient's floor (the limit at most halves per window) and how much
# faster the long RTT forgets when it is more than twice the short one.
MIN_GRADIENT = 0.5
LONG_RTT_DECAY = 0.95
# Windows the long RTT averages over when latency rises (Gradient2's 600: a minute of 0.1 s windows),
# and when it falls.
LONG_WINDOWS = 600
FAST_WINDOWS = 10
# A limit lowered by an overload goes back to the initial limit once the process has not used it for
# this many windows (and at least this long): a burst after a quiet spell is measured afresh.
IDLE_WINDOWS = 50
MIN_IDLE_SECONDS = 5.0
# The request times a window keeps for its median: the first this many (bounded memory at any rate).
WINDOW_SAMPLES = 4096


class AdmissionMetrics:
    """`portico_concurrency_limit`, `portico_requests_in_progress` and
    `portico_requests_shed_total{reason,plan}` of one process."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.limit = Gauge(
            "portico_concurrency_limit",
            "The adaptive limit of requests in progress (the sum over workers).",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.in_progress = Gauge(
            "portico_requests_in_progress",
            "Requests admitted and not yet answered (probes and /metrics not counted).",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.shed = Counter(
            "portico_requests_shed_total",
            "Requests refused before any work: 503 OVERLOADED past the limit (reason limit, or queue_timeout "
            "after waiting in the queue) or 504 DEADLINE_EXCEEDED (reason deadline), by the caller's plan "
            f"(`{UNRANKED}` in services, which do not rank requests).",
            ("reason", "plan"),
            registry=registry,
        )
        self._shed = LabelCache(self.shed)

    def count_shed(self, reason: str, plan: str) -> None:
        self._shed(reason, plan).inc()


@dataclass(frozen=True, slots=True)
class LimitSettings:
    """The `admission_*` settings of a process, each named here without the prefix."""

    initial_limit: int
    min_limit: int
    max_limit: int
    rtt_tolerance: float
    smoothing: float
    window_seconds: float
    queue_size: int
    queue_timeout_seconds: float
    retry_after_seconds: int

    @classmethod
    def of(cls, settings: ProcessSettings) -> LimitSettings:
        return settings_group(cls, settings, "admission_")


class AdaptiveLimit:
    """The limit of one process, the requests it has in progress and the queue waiting for them.

    `enter(rank)` admits at once or says no; `wait(rank)` queues a request that was said no to;
    `leave(started)` ends an admitted request and feeds its time to the limit. Not thread-safe: one
    event loop per process."""

    def __init__(
        self,
        settings: LimitSettings,
        metrics: AdmissionMetrics | None = None,
        shares: Mapping[str, float] | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        # The gauges read this object when scraped (nothing to do per request), except under several
        # workers (Prometheus' multiprocess mode), where only values written to the shared files count:
        # then each request counts itself in and out.
        self._counted: Gauge | None = None
        if metrics is not None:
            if samples_directory() is not None:
                self._counted = metrics.in_progress
            else:
                metrics.in_progress.set_function(lambda: self.in_flight)
                metrics.limit.set_function(lambda: int(self.limit))
        self.shares = tuple((shares or {}).get(name, 1.0) for name in RANKS)
        self.limit = float(settings.initial_limit)
        self.in_flight = 0
        # The most requests in progress at once in this window: whether the limit was used at all.
        self._peak = 0
        # How many requests of each rank may be in progress, from the limit and the rank's share.
        self.ceilings: list[int] = [0] * len(RANKS)
        self.lowest_ceiling = 0
        self._waiting: list[deque[asyncio.Future[bool]]] = [deque() for _ in RANKS]
        self._queued = 0
        self._long_rtt = 0.0
        # The times of the requests finished in this window.
        self._samples: list[float] = []
        self._window_end = 0.0
        # When the process last used at least half its limit (`time.perf_counter()`).
        self._busy_at = time.perf_counter()
        self._set_ceilings()

    def _set_ceilings(self) -> None:
        limit = self.limit
        # At least one request of every rank may run, so no caller is refused forever by a tiny limit.
        self.ceilings = [max(1, int(limit * share)) for share in self.shares]
        # Below this many requests in progress, no request of any rank is refused.
        self.lowest_ceiling = min(self.ceilings)
        if self._counted is not None:
            assert self.metrics is not None
            self.metrics.limit.set(int(limit))

    def enter(self, rank: int) -> bool:
        """Admits a request of `rank` if there is room for it now."""
        in_flight = self.in_flight
        if in_flight >= self.ceilings[rank]:
            return False
        in_flight += 1
        self.in_flight = in_flight
        if in_flight > self._peak:
            self._peak = in_flight
        if self._counted is not None:
            self._counted.inc()
        return True

    async def wait(self, rank: int) -> str | None:
        """Queues a request that `enter` refused, for a slot it may take: None once it has one, else
        why it is refused (`limit`: no room in the queue; `queue_timeout`: its wait ran out). A full
        queue makes room for a request by refusing the newest waiting request of a lower rank."""
        if self._reset_due():
            # The limit was lowered by an overload that is long over: the process starts again from
            # its initial limit rather than refuse a burst on an old measurement.
            self.limit = float(self.settings.initial_limit)
            self._set_ceilings()
            if self.enter(rank):
                return None
        if self.settings.queue_timeout_seconds <= 0:
            return SHED_LIMIT
        if self._queued >= self.settings.queue_size and not self._evict_below(rank):
            return SHED_LIMIT
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        waiting = self._waiting[rank]
        waiting.append(future)
        self._queued += 1
        try:
            async with asyncio.timeout(self.settings.queue_timeout_seconds):
                slot = await future
        except TimeoutError:
            # A slot handed over just as the wait ran out is the request's all the same.
            if future.done() and not future.cancelled():
                return None if future.result() else SHED_LIMIT
            return SHED_QUEUE_TIMEOUT
        except BaseException:
            if future.done() and not future.cancelled() and future.result():
                self.cancelled_slot()
            raise
        finally:
            if future.cancelled() or not future.done():
                # Timed out or cancelled while waiting (the task's cancellation cancels the future it
                # waits on): it leaves the queue without a slot, unless `_wake` took it out already.
                future.cancel()
                try:
                    waiting.remove(future)
                except ValueError:
                    pass
                else:
                    self._queued -= 1
        # True: `_wake` handed this request its slot (and counted it) before waking it; False: a
        # request of a higher rank took its place in the queue.
        return None if slot else SHED_LIMIT

    def refuses(self, rank: int) -> bool:
        """Whether a request of `rank` arriving now would be refused without waiting: no room for it,
        no place in the queue, no request of a lower rank waiting that it could take the place of, and
        no reset of the limit due (`wait` decides those cases). Changes nothing."""
        if self.in_flight < self.ceilings[rank]:
            return False
        if self._reset_due():
            return False
        if self.settings.queue_timeout_seconds <= 0:
            return True
        if self._queued < self.settings.queue_size:
            return False
        return not any(self._waiting[lower] for lower in range(rank))

    def _reset_due(self) -> bool:
        """Whether the limit is below the initial one and the process has not used it for
        `IDLE_WINDOWS` windows: the overload that lowered it is over."""
        if self.limit >= self.settings.initial_limit:
            return False
        idle = max(IDLE_WINDOWS * self.settings.window_seconds, MIN_IDLE_SECONDS)
        return time.perf_counter() - self._busy_at > idle

    def _evict_below(self, rank: int) -> bool:
        """Refuses the newest waiting request of the lowest rank below `rank`, if any."""
        for lower in range(rank):
            waiting = self._waiting[lower]
            while waiting:
                future = waiting.pop()
                self._queued -= 1
                if not future.done():
                    future.set_result(False)
                    return True
        return False

    def leave(self, started: float) -> None:
        """Ends an admitted request that began at `started` (`time.perf_counter()`)."""
        now = time.perf_counter()
        self.in_flight -= 1
        if self._counted is not None:
            self._counted.dec()
        samples = self._samples
        if len(samples) < WINDOW_SAMPLES:
            samples.append(now - started)
        if now >= self._window_end:
            self._update(now)
        if self._queued:
            self._wake()

    def cancelled_slot(self) -> None:
        """A request handed a slot while waiting was cancelled before it could use it: the slot is freed."""
        self.in_flight -= 1
        if self._counted is not None:
            self._counted.dec()
        if self._queued:
            self._wake()

    def _wake(self) -> None:
        """Hands free slots to the waiting requests, best rank first, oldest first."""
        for rank in range(TOP_RANK, -1, -1):
            waiting = self._waiting[rank]
            ceiling = self.ceilings[rank]
            while waiting and self.in_flight < ceiling:
                future = waiting.popleft()
                self._queued -= 1
                if future.done():
                    continue
                self.in_flight += 1
                if self._counted is not None:
                    self._counted.inc()
                future.set_result(True)

    def _update(self, now: float) -> None:
        """Once a window: the gradient of the long RTT over this window's median, and the new limit."""
        settings = self.settings
        samples, peak = self._samples, self._peak
        self._window_end = now + settings.window_seconds
        self._samples, self._peak = [], self.in_flight
        if not samples:
            return
        samples.sort()
        short = max(samples[len(samples) // 2], 1e-6)
        long = self._long_rtt
        if long == 0.0:
            long = short
        elif short > long:
            # Slowly up: sustained overload must not become the new normal within one overload.
            long += (short - long) / LONG_WINDOWS
        else:
            # Quickly down: the process is faster again (a spike is over, a slow dependency recovered).
            long += (short - long) / FAST_WINDOWS
            if long > 2 * short:
                long *= LONG_RTT_DECAY
        self._long_rtt = long
        limit = self.limit
        if peak < limit / 2:
            # The process is not using its limit: its latency says nothing about a larger one.
            return
        self._busy_at = now
        gradient = max(MIN_GRADIENT, min(1.0, settings.rtt_tolerance * long / short))
        proposed = limit * gradient + math.sqrt(limit)
        limit = limit * (1 - settings.smoothing) + proposed * settings.smoothing
        self.limit = max(float(settings.min_limit), min(float(settings.max_limit), limit))
        self._set_ceilings()

    def retry_after(self) -> str:
        return str(self.settings.retry_after_seconds)


def parse_deadline(value: bytes | None) -> float | None:
    """The Unix time an `X-Request-Deadline` names; None when there is none or it is not a number
    (a malformed deadline is ignored, as a missing one is: it only ever shortens work)."""
    if value is None:
        return None
    try:
        deadline = float(value)
    except ValueError:
        return None
    return deadline if math.isfinite(deadline) else None


def format_deadline(deadline: float) -> str:
    return f"{deadline:.3f}"


def time_left() -> float | None:
    """Seconds until the current request's deadline (negative once it passed); None without one."""
    deadline = deadline_var.get()
    return None if deadline is None else deadline - time.time()


def check_deadline(what: str) -> None:
    """Raises 504 `DEADLINE_EXCEEDED` when the current request's deadline has passed: `what` is the
    work that is not started."""
    left = time_left()
    if left is not None and left <= 0:
        raise DeadlineExceeded(f"The request's deadline passed before {what}.")


async def send_refusal(send: Send, error: PorticoError, request_id: str | None) -> None:
    headers, body = problem_message(error, request_id)
    await send({"type": "http.response.start", "status": error.status_code, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


def overloaded(retry_after: str) -> Overloaded:
    return Overloaded("The service is overloaded; retry after the time in Retry-After.", headers=retry_in(retry_after))


# Where a process's lifespan state holds its `Shedder`, for the server's protocol.
SHEDDER_KEY = "shedder"
# In a request's scope: the server's protocol admitted it (`Shedder`) and holds its slot until the
# request's task ends; the app's admission stage lets it through.
ADMITTED = "portico.admitted"
# A request's rank from its method, path and raw headers (the gateway's: the caller's plan).
Ranker = Callable[[bytes, str, Sequence[tuple[bytes, bytes]]], int]
# The methods whose requests carry no body.
BODYLESS = frozenset({b"GET", b"HEAD", b"OPTIONS", b"DELETE"})


class Shedder:
    """Refuses a request in the server's HTTP protocol (`shared/serving/protocol.py`), from its head
    alone, when the limit would refuse it without waiting: the 503 `OVERLOADED` is written to the
    connection before any ASGI scope, task or stage exists for it.

    Under overload most arrivals are refused, so what a refusal costs decides how much of the CPU is
    left for the requests admitted: through the app's stages a refusal costs about a fifth of an
    answer, here a few percent (`bench/overload.py --micro`). A request the limit may still queue, or
    a path that is never shed, goes on to the app's own admission stage, which decides it as before.

    Such a refusal is counted in `portico_requests_shed_total{reason="limit"}` and carries
    `Retry-After`, `X-Request-ID` and `headers` (the gateway's security headers); it is not traced or
    access-logged (at thousands a second either would cost more than the refusal). A request with a
    header named in `app_decides` (the gateway's `Origin`, when CORS is on: its refusal carries CORS
    headers) goes on to the app."""

    __slots__ = (
        "_body_after",
        "_body_before",
        "_head",
        "app_decides",
        "exempt",
        "limit",
        "max_body",
        "metrics",
        "rank",
    )

    def __init__(
        self,
        limit: AdaptiveLimit,
        metrics: AdmissionMetrics,
        *,
        rank: Ranker | None = None,
        exempt: Iterable[str] = EXEMPT_PATHS,
        headers: Sequence[tuple[bytes, bytes]] = (),
        app_decides: Iterable[bytes] = (),
        max_body: int | None = None,
    ) -> None:
        self.limit = limit
        self.metrics = metrics
        # None: every request has the top rank (services do not rank requests).
        self.rank = rank
        self.exempt = frozenset(exempt)
        self.app_decides = frozenset(app_decides)
        # A request declaring a larger body is left to the app, which refuses it (413) without a slot.
        self.max_body = max_body
        # The answer is the same but for its request id: what stands around it is built once.
        marker = "0" * len(new_request_id())
        problem_headers, body = problem_message(overloaded(limit.retry_after()), marker)
        self._body_before, _, self._body_after = body.partition(marker.encode("ascii"))
        lines = [
            name + b": " + value + b"\r\n" for name, value in (*problem_headers, *headers) if name != b"content-length"
        ]
        self._head = b"".join(lines)

    def admit(self, method: bytes, path: str, headers: Sequence[tuple[bytes, bytes]]) -> bool | tuple[bytes, bytes]:
        """Decides a request (`method`, `path` as the app's scope has it, `headers` with names in
        lower case) as its head arrives. True: admitted, its slot taken (the protocol marks the
        request's scope `ADMITTED` and gives the slot back with `release` when its task ends); False:
        the app's stage decides (a path never shed, a request that may wait in the queue, or one
        whose declared body the app refuses); else the header lines and body of its 503."""
        limit = self.limit
        if path in self.exempt:
            return False
        if (
            self.max_body is not None
            and method not in BODYLESS
            and declared_length(find_headers(headers, b"content-length")[0]) > self.max_body
        ):
            return False
        if limit.in_flight < limit.lowest_ceiling:
            # Room for any plan (the usual case): no need to know the caller's.
            return limit.enter(0)
        if self.app_decides and any(name in self.app_decides for name, _ in headers):
            return False
        rank = TOP_RANK if self.rank is None else self.rank(method, path, headers)
        if limit.enter(rank):
            return True
        if not limit.refuses(rank):
            return False
        self.metrics.count_shed(SHED_LIMIT, UNRANKED if self.rank is None else RANKS[rank])
        (sent,) = find_headers(headers, REQUEST_ID_HEADER)
        request_id = sent if sent is not None and CLIENT_REQUEST_ID.match(sent) else new_request_id().encode("ascii")
        body = self._body_before + request_id + self._body_after
        head = b"%scontent-length: %d\r\n%s: %s\r\n" % (self._head, len(body), REQUEST_ID_HEADER, request_id)
        return head, body

    def release(self, started: float) -> None:
        """Gives back the slot of a request admitted at `started` (`time.perf_counter()`)."""
        self.limit.leave(started)


class AdmissionMiddleware:
    """A service's admission stage (pure ASGI), inside the observability stage so that refusals are
    counted, logged and traced like any answer: the deadline first (504 `DEADLINE_EXCEEDED`), then
    the limit (503 `OVERLOADED`), before the body is read or any route runs. Probes and `/metrics`
    pass untouched; the admitted request's deadline is current while it runs, for the calls it makes."""

    def __init__(self, app: ASGIApp, *, limit: AdaptiveLimit | None, metrics: AdmissionMetrics) -> None:
        self.app = app
        self.gate = limit
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in EXEMPT_PATHS:
            await self.app(scope, receive, send)
            return
        # Admitted already by the server's protocol (`Shedder`), which holds the slot.
        await self._admit(scope, receive, send, None if ADMITTED in scope else self.gate)

    async def _admit(self, scope: Scope, receive: Receive, send: Send, gate: AdaptiveLimit | None) -> None:
        """The deadline, then (unless admitted already) the limit, then the app."""
        deadline = parse_deadline(header(scope, DEADLINE_HEADER))
        if deadline is not None and deadline <= time.time():
            self.metrics.count_shed(SHED_DEADLINE, UNRANKED)
            error: PorticoError = DeadlineExceeded("The request's deadline passed before the service could start it.")
            await send_refusal(send, error, request_id_of(scope))
            return
        if gate is None:
            await self._run(scope, receive, send, deadline)
            return
        if not gate.enter(TOP_RANK):
            refused = await gate.wait(TOP_RANK)
            if refused is not None:
                self.metrics.count_shed(refused, UNRANKED)
                await send_refusal(send, overloaded(gate.retry_after()), request_id_of(scope))
                return
        started = time.perf_counter()
        try:
            await self._run(scope, receive, send, deadline)
        finally:
            gate.leave(started)

    async def _run(self, scope: Scope, receive: Receive, send: Send, deadline: float | None) -> None:
        if deadline is None:
            await self.app(scope, receive, send)
            return
        token = deadline_var.set(deadline)
        try:
            await self.app(scope, receive, send)
        finally:
            deadline_var.reset(token)


@contextlib.contextmanager
def no_deadline() -> Iterator[None]:
    """The calls made in the block carry no deadline: work that finishes or undoes what the request
    began (a confirmation, a compensation), which must happen whether or not its caller still waits."""
    token = deadline_var.set(None)
    try:
        yield
    finally:
        deadline_var.reset(token)
