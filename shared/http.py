"""Calls to other services through the process's pool (`shared/pool.py`).

Every call goes through the called service's circuit breaker, is counted and timed
(`portico_upstream_requests_total`, `portico_upstream_request_duration_seconds`), and a safe call is
retried once when its connection could not be made. A 502/503/504 problem that a service relays from
its own upstream keeps naming the service that failed, and a 503's `Retry-After` is passed on.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import aiohttp
import httpx
import orjson
from opentelemetry import trace
from opentelemetry.instrumentation.utils import suppress_instrumentation
from opentelemetry.trace import SpanKind, StatusCode
from prometheus_client import CollectorRegistry, Counter, Gauge
from yarl import URL

from shared.admission import DEADLINE_HEADER_NAME, deadline_var, format_deadline
from shared.circuit import CircuitBreaker
from shared.contract import IDEMPOTENCY_HEADER, IDENTITY_HEADER, Identity
from shared.errors import (
    CircuitOpen,
    DeadlineExceeded,
    NoInstance,
    UpstreamBadResponse,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from shared.fleet import Fleet, FleetMetrics, Instance
from shared.metrics import LabelCache, latency_histogram
from shared.settings import ProcessSettings, ServiceAddress, service_address
from shared.telemetry import (
    ERROR_TYPE,
    HTTP_REQUEST_METHOD,
    PEER_EXTENSION,
    PEER_SERVICE,
    SERVER_ADDRESS,
    SERVER_PORT,
    URL_FULL,
    URL_TEMPLATE,
    finish_client_span,
    traceparent_of,
)

if TYPE_CHECKING:
    from shared.identity import IdentitySigner

R = TypeVar("R")

# Methods that are safe to send twice; a write is, when it carries an Idempotency-Key.
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
IDEMPOTENCY_KEY = IDEMPOTENCY_HEADER.lower()
# aiohttp's failures that mean the service never got (or never began to answer) the request: a
# refused or timed-out connect, a connection reset or closed before any answer. Safe to try again.
_NOT_ANSWERED = (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError, aiohttp.ServerDisconnectedError)
# Without an answer, the status label of a call says why.
NO_ANSWER_TIMEOUT = "timeout"
NO_ANSWER_UNREACHABLE = "unreachable"
NO_ANSWER_CIRCUIT_OPEN = "circuit_open"
NO_ANSWER_CANCELLED = "cancelled"
NO_ANSWER_NO_INSTANCE = "no_instance"


def _refused(exc: httpx.TimeoutException) -> bool:
    """True when a "timeout" is really a refused, failed or dropped connection.

    httpx-aiohttp maps every aiohttp connection error, a refused connect and a server that closed the
    connection without answering included, to ConnectTimeout; the aiohttp cause tells them apart (a
    connection error that is not a TimeoutError).
    """
    cause = exc.__cause__
    return isinstance(cause, OSError | aiohttp.ClientConnectionError) and not isinstance(cause, TimeoutError)


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


def _problem_of(content_type: str, body: bytes) -> dict[str, Any]:
    if not content_type.startswith("application/problem+json"):
        return {}
    try:
        problem = orjson.loads(body)
    except orjson.JSONDecodeError:
        return {}
    return problem if isinstance(problem, dict) else {}


_FAILURE_CLASSES: dict[int, type[UpstreamError]] = {
    502: UpstreamBadResponse,
    503: UpstreamUnavailable,
    504: UpstreamTimeout,
}


def failure_of(
    service: str, status: int, *, content_type: str = "", retry_after: str | None = None, body: bytes = b""
) -> tuple[UpstreamError, bool]:
    """The error a 5xx answer of `service` stands for, and whether it is the service's own failure
    (False: it relays the failure of a service further down, which keeps being named)."""
    problem = _problem_of(content_type, body)
    named = problem.get("service")
    cls = _FAILURE_CLASSES.get(status)
    headers = {"Retry-After": retry_after} if retry_after is not None else None
    if cls is not None and isinstance(named, str) and named and named != service:
        detail = str(problem.get("detail") or f"The {named} service failed.")
        code = problem.get("error_code")
        return cls(named, detail, error_code=code if isinstance(code, str) else None, headers=headers), False
    if status == 503:
        # The service says it cannot serve now (its database, its own limits): passed on as such.
        code = problem.get("error_code")
        detail = f"The {service} service is unavailable."
        if isinstance(problem.get("detail"), str):
            detail = f"The {service} service is unavailable: {problem['detail']}"
        return (
            UpstreamUnavailable(service, detail, error_code=code if isinstance(code, str) else None, headers=headers),
            True,
        )
    if status == 504:
        return UpstreamTimeout(service, f"The {service} service timed out."), True
    return UpstreamBadResponse(service, f"The {service} service answered {status}."), True


@dataclass(slots=True)
class Answer:
    """A service's answer as the gateway relays it: status, raw headers (lower-case names) and body."""

    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None


class ServiceClient:
    """Calls one named service with an internal identity, through its circuit breaker, mapping
    failures to 502/503/504 naming the service that failed.

    `send` speaks httpx; `forward` relays a request's bytes through the pool's aiohttp session (the
    same connections) without httpx's layers: the gateway's forwarded routes take it."""

    def __init__(
        self,
        name: str,
        base_url: str | ServiceAddress,
        client: httpx.AsyncClient,
        signer: IdentitySigner,
        policy: CallPolicy | None = None,
        *,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        self.name = name
        self.client = client
        self.session = session
        self.signer = signer
        self.policy = policy or CallPolicy(ProcessSettings())
        self.breaker = self.policy.breaker(name)
        self.metrics = self.policy.metrics
        settings = self.policy.settings
        # The whole call within the timeout (one timer per call, not one per read of the socket).
        self._forward_timeout = aiohttp.ClientTimeout(
            total=settings.http_timeout_seconds, sock_connect=settings.http_connect_timeout_seconds
        )
        self._tracer = self.policy.tracer
        address = base_url if isinstance(base_url, ServiceAddress) else service_address(base_url)
        self.fleet = self.policy.fleet(name, address, self._probe)
        # Instances found through DNS are called at their addresses; over TLS the name is what the
        # certificate and the Host header carry.
        self._sni = address.dns_name if address.dns_name is not None and address.scheme == "https" else None
        self._host = f"{address.dns_name}:{address.port}" if self._sni else None
        self._extensions: dict[str, Any] = {PEER_EXTENSION: name}
        if self._sni:
            self._extensions["sni_hostname"] = self._sni

    def _retries(self, method: str, idempotency_key: bool) -> int:
        safe = method in SAFE_METHODS or idempotency_key
        return self.policy.settings.http_connect_retries if safe else 0

    async def send(
        self,
        method: str,
        path: str,
        *,
        identity: Identity,
        headers: Mapping[str, str] | list[tuple[str, str]] | list[tuple[bytes, bytes]] | None = None,
        content: bytes | None = None,
        json: Any = None,
        params: Any = None,
        timeout: float | None = None,  # noqa: ASYNC109 - a per-call override of the pool's timeout
    ) -> httpx.Response:
        """Sends a request; answers with the response of any status below 500, or raises a
        upstream error (CircuitOpen at once while the service's circuit is open). Within a request
        that has a deadline (`shared/admission.py`) the call carries it on and takes no longer than the
        time left of it; once it has passed, 504 `DEADLINE_EXCEEDED` without a call."""
        deadline = deadline_var.get()
        if deadline is not None:
            left = deadline - time.time()
            if left <= 0:
                raise DeadlineExceeded(f"The request's deadline passed before the call to the {self.name} service.")
            timeout = min(timeout if timeout is not None else self.policy.settings.http_timeout_seconds, left)

        async def call() -> tuple[int, httpx.Response, Instance]:
            response, instance = await self._send(method, path, identity, headers, content, json, params, timeout)
            if response.status_code >= 500:
                await response.aread()
            return response.status_code, response, instance

        def failure(response: httpx.Response) -> tuple[UpstreamError, bool]:
            return failure_of(
                self.name,
                response.status_code,
                content_type=response.headers.get("content-type", ""),
                retry_after=response.headers.get("retry-after"),
                body=response.content,
            )

        return await self._through_breaker(method, call, failure, lambda response: "retry-after" in response.headers)

    async def forward(
        self,
        method: str,
        path: str,
        *,
        identity: Identity,
        headers: list[tuple[str, str]],
        body: bytes | None,
        query: bytes = b"",
        span_name: str,
        template: str,
        keep: frozenset[bytes],
    ) -> Answer:
        """Relays a request to the service (`headers` as they go, the identity added) and answers what
        it said, as bytes, with the headers named in `keep`; raises as `send` does. One client span,
        `span_name`, with `traceparent`."""
        if self.session is None:
            return await self._forward_through_httpx(method, path, identity, headers, body, query, keep)

        async def call() -> tuple[int, Answer, Instance]:
            answer, instance = await self._forward(
                method, path, identity, headers, body, query, span_name, template, keep
            )
            return answer.status, answer, instance

        def failure(answer: Answer) -> tuple[UpstreamError, bool]:
            content_type, retry_after = answer.header(b"content-type"), answer.header(b"retry-after")
            return failure_of(
                self.name,
                answer.status,
                content_type=content_type.decode("latin-1") if content_type else "",
                retry_after=retry_after.decode("latin-1") if retry_after is not None else None,
                body=answer.body,
            )

        return await self._through_breaker(
            method, call, failure, lambda answer: answer.header(b"retry-after") is not None
        )

    async def _forward_through_httpx(
        self,
        method: str,
        path: str,
        identity: Identity,
        headers: list[tuple[str, str]],
        body: bytes | None,
        query: bytes,
        keep: frozenset[bytes],
    ) -> Answer:
        """`forward` on the pure httpx transport (`http_transport=httpx`), which has no session."""
        response = await self.send(
            method,
            path + ("?" + query.decode("latin-1") if query else ""),
            identity=identity,
            headers=headers,
            content=body,
        )
        kept = [(name.lower(), value) for name, value in response.headers.raw if name.lower() in keep]
        return Answer(response.status_code, kept, response.content)

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

    async def _forward(
        self,
        method: str,
        path: str,
        identity: Identity,
        headers: list[tuple[str, str]],
        body: bytes | None,
        query: bytes,
        span_name: str,
        template: str,
        keep: frozenset[bytes],
    ) -> tuple[Answer, Instance]:
        assert self.session is not None
        fleet = self.fleet
        target = path + ("?" + query.decode("latin-1") if query else "")
        headers.append((IDENTITY_HEADER, self.signer.sign(identity, self.name)))
        if self._host is not None:
            headers.append(("Host", self._host))
        deadline = deadline_var.get()
        if deadline is not None:
            headers.append((DEADLINE_HEADER_NAME, format_deadline(deadline)))
        retries = self._retries(method, any(name == IDEMPOTENCY_KEY for name, _ in headers))
        loop = asyncio.get_running_loop()
        now = loop.time()
        # A retry must still fit in the pool's timeout, counted from the first attempt.
        deadline = now + self.policy.settings.http_timeout_seconds
        instance = fleet.single or fleet.choose(now) or await self._first_instance(method, deadline)
        fleet.budget.deposit(now)
        span = self._tracer.start_span(
            span_name,
            kind=SpanKind.CLIENT,
            attributes={
                HTTP_REQUEST_METHOD: method,
                URL_FULL: instance.base_url + path,
                URL_TEMPLATE: template,
                SERVER_ADDRESS: instance.host,
                SERVER_PORT: instance.port,
                PEER_SERVICE: self.name,
            },
        )
        headers.append(("traceparent", traceparent_of(span)))
        trace_state = span.get_span_context().trace_state
        if trace_state:
            headers.append(("tracestate", trace_state.to_header()))
        tried: list[Instance] | None = None
        try:
            while True:
                attempt = instance
                if fleet.tracked:
                    fleet.begin(attempt, now)
                try:
                    async with self.session.request(
                        method,
                        URL(attempt.base_url + target, encoded=True),
                        headers=headers,
                        data=body,
                        allow_redirects=False,
                        auto_decompress=False,
                        timeout=self._forward_timeout,
                        server_hostname=self._sni,
                    ) as response:
                        content = await response.read()
                    kept = [(name.lower(), value) for name, value in response.raw_headers if name.lower() in keep]
                    answer = Answer(response.status, kept, content)
                    break
                except aiohttp.ClientError as exc:
                    timed_out = isinstance(exc, aiohttp.ServerTimeoutError)
                    self._attempt_failed(attempt, method, NO_ANSWER_TIMEOUT if timed_out else NO_ANSWER_UNREACHABLE)
                    connect_failed = isinstance(exc, _NOT_ANSWERED) or type(exc) is aiohttp.ClientOSError
                    if connect_failed and retries > 0:
                        tried = [*(tried or ()), attempt]
                        following = await self._next_attempt(attempt, tried, deadline)
                        if following is not None:
                            retries -= 1
                            instance = following
                            if following is not attempt:
                                span.set_attributes(
                                    {
                                        URL_FULL: following.base_url + path,
                                        SERVER_ADDRESS: following.host,
                                        SERVER_PORT: following.port,
                                    }
                                )
                            continue
                    if timed_out:
                        raise UpstreamTimeout(self.name, f"The {self.name} service did not answer in time.") from exc
                    raise self._unreachable() from exc
                except TimeoutError as exc:
                    self._attempt_failed(attempt, method, NO_ANSWER_TIMEOUT)
                    raise UpstreamTimeout(self.name, f"The {self.name} service did not answer in time.") from exc
                finally:
                    if fleet.tracked:
                        began, now = now, loop.time()
                        fleet.end(attempt, began, now)
        except BaseException as exc:
            span.set_attribute(ERROR_TYPE, type(exc).__qualname__)
            span.set_status(StatusCode.ERROR)
            span.end()
            raise
        finish_client_span(span, answer.status)
        return answer, instance

    async def _send(
        self,
        method: str,
        path: str,
        identity: Identity,
        headers: Mapping[str, str] | list[tuple[str, str]] | list[tuple[bytes, bytes]] | None,
        content: bytes | None,
        json: Any,
        params: Any,
        timeout: float | None,  # noqa: ASYNC109
    ) -> tuple[httpx.Response, Instance]:
        fleet = self.fleet
        request_headers = httpx.Headers(headers)
        request_headers[IDENTITY_HEADER] = self.signer.sign(identity, self.name)
        if self._host is not None:
            request_headers["Host"] = self._host
        retries = self._retries(method, IDEMPOTENCY_HEADER in request_headers)
        deadline = deadline_var.get()
        if deadline is not None:
            request_headers[DEADLINE_HEADER_NAME] = format_deadline(deadline)
        loop = asyncio.get_running_loop()
        now = loop.time()
        given = None if timeout is None else now + timeout
        # Retries fit in the call's time: its own timeout, or the pool's.
        deadline = given if given is not None else now + self.policy.settings.http_timeout_seconds
        instance = fleet.single or fleet.choose(now) or await self._first_instance(method, deadline)
        fleet.budget.deposit(now)
        tried: list[Instance] | None = None
        while True:
            attempt = instance
            left = None if given is None else max(0.001, given - loop.time())
            if fleet.tracked:
                fleet.begin(attempt, now)
            try:
                response = await self.client.request(
                    method,
                    attempt.base_url + path,
                    headers=request_headers,
                    content=content,
                    json=json,
                    params=params,
                    timeout=left if left is not None else httpx.USE_CLIENT_DEFAULT,
                    extensions=self._extensions,
                )
                return response, attempt
            except httpx.TransportError as exc:
                refused = isinstance(exc, httpx.TimeoutException) and _refused(exc)
                timed_out = isinstance(exc, httpx.TimeoutException) and not refused
                self._attempt_failed(attempt, method, NO_ANSWER_TIMEOUT if timed_out else NO_ANSWER_UNREACHABLE)
                connect_failed = refused or isinstance(exc, httpx.ConnectTimeout | httpx.ConnectError)
                if connect_failed and retries > 0:
                    tried = [*(tried or ()), attempt]
                    following = await self._next_attempt(attempt, tried, deadline)
                    if following is not None:
                        retries -= 1
                        instance = following
                        continue
                if timed_out:
                    raise UpstreamTimeout(self.name, f"The {self.name} service did not answer in time.") from exc
                raise self._unreachable() from exc
            finally:
                if fleet.tracked:
                    began, now = now, loop.time()
                    fleet.end(attempt, began, now)

    def _attempt_failed(self, instance: Instance, method: str, status: str) -> None:
        """An attempt got no answer: counted against its instance."""
        self.metrics.count(self.name, method, status, instance.label)
        if self.fleet.tracked:
            self.fleet.failed(instance, asyncio.get_running_loop().time())

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

    async def _probe(self, instance: Instance) -> bool:
        """An ejected instance's health check: its `/health/ready`, untraced (a background loop)."""
        url = instance.base_url + "/health/ready"
        headers = {"Host": self._host} if self._host else None
        with suppress_instrumentation():
            if self.session is not None:
                async with self.session.get(url, headers=headers, server_hostname=self._sni) as answer:
                    return answer.status == 200
            response = await self.client.get(url, headers=headers, extensions=self._extensions)
            return response.status_code == 200

    def _unreachable(self) -> UpstreamUnavailable:
        return UpstreamUnavailable(self.name, f"The {self.name} service is unreachable.", headers={"Retry-After": "1"})
