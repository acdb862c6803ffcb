"""What every call to another service goes through, whichever transport carries it (`ServiceClient`,
`shared/http.py`): the called service's circuit breaker, an instance of its fleet, a retry of a safe
call that got no answer or of a keyed write the service never got (within the fleet's retry budget),
and the counting and timing of it all (`portico_upstream_requests_total`,
`portico_upstream_request_duration_seconds`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import random
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from opentelemetry import trace
from prometheus_client import CollectorRegistry, Counter, Gauge

from shared.circuit import CircuitBreaker
from shared.errors import CircuitOpen, NoInstance, UpstreamError, UpstreamTimeout, UpstreamUnavailable
from shared.failures import no_answer, timed_out, unreachable
from shared.fleet import Fleet, FleetMetrics, Instance
from shared.metrics import LabelCache, latency_histogram
from shared.settings import ProcessSettings, ServiceAddress

R = TypeVar("R")

# Methods that are safe to send twice; a write is, when it carries an Idempotency-Key.
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# Without an answer, the status label of a call says why.
NO_ANSWER_TIMEOUT = "timeout"
NO_ANSWER_UNREACHABLE = "unreachable"
NO_ANSWER_CIRCUIT_OPEN = "circuit_open"
NO_ANSWER_CANCELLED = "cancelled"
NO_ANSWER_NO_INSTANCE = "no_instance"


class UpstreamMetrics:
    """The metrics of one process's calls to other services, in the process's registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "portico_upstream_requests_total",
            "Calls to other services (each attempt: a retry counts again), by service, method, status (or "
            "timeout, unreachable, circuit_open, no_instance, cancelled when there was no answer) and instance "
            "(host:port; empty when no instance was called).",
            ("service", "method", "status", "instance"),
            registry=registry,
        )
        self.duration = latency_histogram(
            "portico_upstream_request_duration_seconds",
            "Time a call to another service took, retries included.",
            ("service", "method"),
            registry,
        )
        self.circuit = Gauge(
            "portico_circuit_state",
            "The circuit breaker of each called service: 0 closed, 1 half-open, 2 open.",
            ("service",),
            registry=registry,
            # Under several workers each has its own breakers: the worst state among live workers,
            # and an exited worker's value goes with it (its file is removed when it is folded).
            multiprocess_mode="livemax",
        )
        self.fleet = FleetMetrics(registry)
        self._requests = LabelCache(self.requests)
        self._duration = LabelCache(self.duration)

    def count(self, service: str, method: str, status: str, instance: str = "") -> None:
        self._requests(service, method, status, instance).inc()

    def observe(self, service: str, method: str, seconds: float) -> None:
        """Times one call, its retries included."""
        self._duration(service, method).observe(seconds)

    def retry(self, service: str, outcome: str) -> None:
        self.fleet.retries.labels(service, outcome).inc()

    def forget_instance(self, service: str, instance: str) -> None:
        """Drops the series of an instance that left its fleet, so they stay bounded by the live ones."""
        for key in [key for key in self._requests.children if key[0] == service and key[3] == instance]:
            del self._requests.children[key]
            with contextlib.suppress(KeyError):
                self.requests.remove(*key)


class CallPolicy:
    """What every service client of one process shares: its settings, metrics, and one circuit
    breaker per called service."""

    def __init__(
        self,
        settings: ProcessSettings,
        metrics: UpstreamMetrics | None = None,
        tracer_provider: trace.TracerProvider | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics or UpstreamMetrics(CollectorRegistry())
        self.breakers: dict[str, CircuitBreaker] = {}
        self.fleets: dict[tuple[str, str], Fleet] = {}
        # The client spans of `ServiceClient.forward` (other calls get theirs from `TracingTransport`).
        self.tracer = (tracer_provider or trace.get_tracer_provider()).get_tracer("portico.client")

    def breaker(self, service: str) -> CircuitBreaker:
        breaker = self.breakers.get(service)
        if breaker is None:
            breaker = self.breakers[service] = CircuitBreaker(
                service, self.settings, self.metrics.circuit.labels(service)
            )
        return breaker

    def fleet(self, service: str, address: ServiceAddress, probe: Callable[[Instance], Awaitable[bool]]) -> Fleet:
        """The instances of `service` at `address`, shared by every client of it in this process."""
        key = (service, str(address))
        fleet = self.fleets.get(key)
        if fleet is None:
            forget = functools.partial(self.metrics.forget_instance, service)
            fleet = self.fleets[key] = Fleet(
                service, address, self.settings, self.metrics.fleet, probe, on_forget=forget
            )
        return fleet

    async def aclose(self) -> None:
        """Stops the fleets' discovery and health checks (the lifespan's end)."""
        await asyncio.gather(*(fleet.aclose() for fleet in self.fleets.values()))


class ServiceCalls:
    """The calls to one service, whichever transport carries them: through its circuit breaker, to an
    instance of its fleet, retried within the fleet's budget. `ServiceClient` (`shared/http.py`) adds
    the transports, and `_probe`, an ejected instance's health check, which goes through them."""

    def __init__(self, name: str, address: ServiceAddress, policy: CallPolicy) -> None:
        self.name = name
        self.policy = policy
        self.breaker = policy.breaker(name)
        self.metrics = policy.metrics
        self.fleet = policy.fleet(name, address, self._probe)

    async def _probe(self, instance: Instance) -> bool:
        raise NotImplementedError

    def _retries(self, method: str, idempotency_key: bool) -> int:
        safe = method in SAFE_METHODS or idempotency_key
        return self.policy.settings.http_connect_retries if safe else 0

    async def _through_breaker(
        self,
        method: str,
        call: Callable[[], Awaitable[tuple[int, R, Instance]]],
        failure: Callable[[R], tuple[UpstreamError, bool]],
        shedding: Callable[[R], bool],
    ) -> R:
        started = time.perf_counter()
        status = NO_ANSWER_CANCELLED
        failed: bool | None = None
        try:
            trial = self.breaker.before_call()
        except CircuitOpen:
            self.metrics.count(self.name, method, NO_ANSWER_CIRCUIT_OPEN)
            raise
        fleet = self.fleet
        try:
            try:
                code, answer, instance = await call()
            except NoInstance:
                # No call was made: nothing to hold against the service's circuit.
                status = NO_ANSWER_NO_INSTANCE
                raise
            # Failures without an answer are counted where they happen, with their instance.
            except UpstreamTimeout:
                status, failed = NO_ANSWER_TIMEOUT, True
                raise
            except UpstreamUnavailable:
                status, failed = NO_ANSWER_UNREACHABLE, True
                raise
            status = str(code)
            self.metrics.count(self.name, method, status, instance.label)
            if code >= 500:
                error, own = failure(answer)
                # A 503 with Retry-After is the service shedding load on purpose (it answered, and
                # says when to come back): not held against its circuit, which would cut its reads off too.
                failed = own and not (code == 503 and shedding(answer))
                if fleet.tracked:
                    if failed:
                        fleet.failed(instance, asyncio.get_running_loop().time())
                    else:
                        fleet.succeeded(instance)
                raise error
            failed = False
            if fleet.tracked:
                fleet.succeeded(instance)
            return answer
        finally:
            if status in (NO_ANSWER_CANCELLED, NO_ANSWER_NO_INSTANCE):
                self.metrics.count(self.name, method, status)
            # While another instance is healthy, the fleet routes around a failing one: the circuit of
            # the whole service opens only when none is.
            self.breaker.after_call(trial, failed=fleet.all_failing() if failed else failed)
            self.metrics.observe(self.name, method, time.perf_counter() - started)

    def _attempt_failed(self, instance: Instance, method: str, status: str) -> None:
        """An attempt got no answer: counted against its instance."""
        self.metrics.count(self.name, method, status, instance.label)
        if self.fleet.tracked:
            self.fleet.failed(instance, asyncio.get_running_loop().time())

    async def _retry_or_raise(
        self, exc: Exception, method: str, tried: list[Instance], retries: int, deadline: float
    ) -> Instance:
        """The last of `tried` got no answer, counted against its instance: where the call goes next, or
        what it ends with (504 when it timed out, else 503) when it may not go again: a write the
        service may have got, a timeout, `retries` used up, or no retry that fits in the call's time
        or the retry budget."""
        attempt = tried[-1]
        was_timeout, never_got_it = no_answer(exc)
        self._attempt_failed(attempt, method, NO_ANSWER_TIMEOUT if was_timeout else NO_ANSWER_UNREACHABLE)
        # A safe method changes nothing, so it also goes again when the service got it and its answer
        # was lost (a reset, an answer cut off: an instance killed mid-answer), none of which reached
        # the caller; a keyed write only when the service never got it. Never after a timeout, which
        # would only add load to a slow service.
        if (never_got_it or (method in SAFE_METHODS and not was_timeout)) and len(tried) <= retries:
            following = await self._next_attempt(attempt, tried, deadline)
            if following is not None:
                return following
        raise (timed_out(self.name) if was_timeout else unreachable(self.name)) from exc

    async def _next_attempt(self, failed: Instance, tried: list[Instance], deadline: float) -> Instance | None:
        """Where a retry goes: another healthy instance at once, else the same one after a random pause;
        None when the call's time or the service's retry budget does not allow one."""
        loop = asyncio.get_running_loop()
        following = self.fleet.choose_other(tried) if self.fleet.tracked else None
        pause = 0.0 if following is not None else random.uniform(0, self.policy.settings.http_retry_jitter_seconds)
        now = loop.time()
        if now + pause >= deadline:
            return None
        if not self.fleet.budget.withdraw(now):
            self.metrics.retry(self.name, "budget_exhausted")
            return None
        self.metrics.retry(self.name, "sent")
        if following is None:
            await asyncio.sleep(pause)
        return following or failed

    async def _first_instance(self, method: str, deadline: float) -> Instance:
        """A DNS name not resolved yet: waits for its first answer, within the call's time."""
        loop = asyncio.get_running_loop()
        await self.fleet.wait_resolved(max(0.0, deadline - loop.time()))
        instance = self.fleet.choose(loop.time())
        if instance is None:
            retry_after = max(1, math.ceil(self.policy.settings.upstream_dns_min_ttl_seconds))
            raise NoInstance(self.name, retry_after)
        return instance
