"""The one pooled downstream HTTP client per process, and calls to other services through it.

Every call goes through the called service's circuit breaker, is counted and timed
(`portico_upstream_requests_total`, `portico_upstream_request_duration_seconds`), and a safe call is
retried once when its connection could not be made. A 502/503/504 problem that a service relays from
its own downstream keeps naming the service that failed, and a 503's `Retry-After` is passed on.

The transport is a setting. `aiohttp` (httpx-aiohttp) is the default because httpx's own pool
serialises connection checkout under concurrency (encode/httpx#3215); `httpx` keeps the pure httpx
transport. Either is wrapped in `TracingTransport` (`shared/telemetry.py`), so every call is a client
span named after the service and route it calls and carries `traceparent`.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from http.cookiejar import Cookie, CookieJar, DefaultCookiePolicy
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

import aiohttp
import httpx
import orjson
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import SpanKind, StatusCode
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from yarl import URL

from shared.contract import IDEMPOTENCY_HEADER, IDENTITY_HEADER, PROCESSES, Identity
from shared.errors import (
    CircuitOpen,
    DownstreamBadResponse,
    DownstreamError,
    DownstreamTimeout,
    DownstreamUnavailable,
)
from shared.metrics import LATENCY_BUCKETS, LabelCache
from shared.settings import ProcessSettings
from shared.telemetry import (
    ERROR_TYPE,
    HTTP_REQUEST_METHOD,
    PEER_SERVICE,
    SERVER_ADDRESS,
    SERVER_PORT,
    URL_FULL,
    URL_TEMPLATE,
    TracingTransport,
    default_port,
    finish_client_span,
    traceparent_of,
)

if TYPE_CHECKING:
    from urllib.request import Request

    from shared.identity import IdentitySigner

logger = logging.getLogger("portico.http")

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


@dataclass(frozen=True, slots=True)
class HttpPool:
    """The process's one pool of connections to other services. `client` is for calls written against
    httpx; on the aiohttp transport, `session` is the same pool without httpx's layers around it, for
    the calls that must cost least (the gateway's forwarded requests, `ServiceClient.forward`)."""

    client: httpx.AsyncClient
    session: aiohttp.ClientSession | None

    async def aclose(self) -> None:
        # The client's transport closes the session.
        await self.client.aclose()


def create_http_pool(settings: ProcessSettings, tracer_provider: TracerProvider) -> HttpPool:
    """Built in a lifespan (aiohttp's session belongs to the running event loop)."""
    limits = httpx.Limits(
        max_connections=settings.http_max_connections,
        max_keepalive_connections=settings.http_max_keepalive,
        keepalive_expiry=settings.http_keepalive_expiry_seconds,
    )
    inner: httpx.AsyncBaseTransport
    session: aiohttp.ClientSession | None = None
    if settings.http_transport == "aiohttp":
        from httpx_aiohttp import AiohttpTransport

        aiohttp_transport = AiohttpTransport(limits=limits, trust_env=False)
        # What httpx-aiohttp builds by default, without aiohttp's cookie jar (see _NoCookies).
        connector = aiohttp.TCPConnector(
            limit=settings.http_max_connections,
            keepalive_timeout=settings.http_keepalive_expiry_seconds,
            ssl=aiohttp_transport.ssl_context,
        )
        session = aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar())
        aiohttp_transport.client = session
        inner = aiohttp_transport
    else:
        inner = httpx.AsyncHTTPTransport(limits=limits)
    transport = TracingTransport(inner, tracer_provider, peers=_peers(settings))
    timeout = httpx.Timeout(settings.http_timeout_seconds, connect=settings.http_connect_timeout_seconds)
    client = httpx.AsyncClient(
        transport=transport, timeout=timeout, trust_env=False, cookies=CookieJar(policy=_NoCookies())
    )
    return HttpPool(client, session)


def create_http_client(settings: ProcessSettings, tracer_provider: TracerProvider) -> httpx.AsyncClient:
    """The pool's httpx client, for a process that needs nothing else of it."""
    return create_http_pool(settings, tracer_provider).client


class _NoCookies(DefaultCookiePolicy):
    """The process's one client calls services for every caller: a cookie one answer sets must never
    ride along on another caller's request, so none is kept."""

    def set_ok(self, cookie: Cookie, request: Request) -> bool:
        return False

    def return_ok(self, cookie: Cookie, request: Request) -> bool:
        return False


def _peers(settings: ProcessSettings) -> dict[str, str]:
    """The services this process calls, by base URL (its `<process>_url` settings), to name client spans."""
    urls = {name: getattr(settings, f"{name}_url", None) for name in PROCESSES}
    return {str(url): name for name, url in urls.items() if url is not None}


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
            "Calls to other services, by service, method and status (or timeout, unreachable, "
            "circuit_open, cancelled when there was no answer).",
            ("service", "method", "status"),
            registry=registry,
        )
        self.duration = Histogram(
            "portico_upstream_request_duration_seconds",
            "Time a call to another service took, retries included.",
            ("service", "method"),
            registry=registry,
            buckets=LATENCY_BUCKETS,
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
        self._requests = LabelCache(self.requests)
        self._duration = LabelCache(self.duration)

    def count(self, service: str, method: str, status: str) -> None:
        self._requests(service, method, status).inc()

    def call(self, service: str, method: str, status: str, seconds: float) -> None:
        """Counts and times one call."""
        self._requests(service, method, status).inc()
        self._duration(service, method).observe(seconds)


class CircuitState(enum.IntEnum):
    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2


class CircuitBreaker:
    """closed -> open after `failure_threshold` failures within `window_seconds` -> half-open after
    `open_seconds`, letting `half_open_calls` trial calls through -> closed when a trial succeeds, open
    again when one fails. Single-threaded (one event loop), so no lock."""

    def __init__(self, service: str, settings: ProcessSettings, metrics: UpstreamMetrics) -> None:
        self.service = service
        self.enabled = settings.circuit_enabled
        self.threshold = settings.circuit_failure_threshold
        self.window = settings.circuit_window_seconds
        self.open_seconds = settings.circuit_open_seconds
        self.half_open_calls = settings.circuit_half_open_calls
        self.gauge = metrics.circuit.labels(service)
        self.state = CircuitState.CLOSED
        self.failures: deque[float] = deque()
        self.opened_at = 0.0
        self.trials = 0
        self.gauge.set(self.state)

    def _move(self, state: CircuitState, why: str) -> None:
        if state is self.state:
            return
        log = logger.warning if state is CircuitState.OPEN else logger.info
        log("circuit of %s: %s -> %s (%s)", self.service, self.state.name.lower(), state.name.lower(), why)
        self.state = state
        self.gauge.set(state)

    def retry_after(self) -> int:
        """Whole seconds until a trial call may go through (at least 1)."""
        left = self.open_seconds - (time.monotonic() - self.opened_at)
        return max(1, int(left + 0.999))

    def before_call(self) -> bool:
        """Raises CircuitOpen when the call may not go out; True when it is a half-open trial."""
        if not self.enabled or self.state is CircuitState.CLOSED:
            return False
        if self.state is CircuitState.OPEN:
            if time.monotonic() - self.opened_at < self.open_seconds:
                raise CircuitOpen(self.service, self.retry_after())
            self._move(CircuitState.HALF_OPEN, f"{self.open_seconds:g} s open, trying again")
            self.trials = 0
        if self.trials >= self.half_open_calls:
            raise CircuitOpen(self.service, 1)
        self.trials += 1
        return True

    def after_call(self, trial: bool, *, failed: bool | None) -> None:
        """Records a call's end: `failed` None when it ended without a verdict (cancelled)."""
        if trial:
            self.trials = max(0, self.trials - 1)
        if not self.enabled or failed is None:
            return
        now = time.monotonic()
        if not failed:
            if self.state is CircuitState.HALF_OPEN:
                self.failures.clear()
                self._move(CircuitState.CLOSED, "a trial call succeeded")
            return
        if self.state is CircuitState.HALF_OPEN:
            self.opened_at = now
            self._move(CircuitState.OPEN, "a trial call failed")
            return
        self.failures.append(now)
        while self.failures and self.failures[0] <= now - self.window:
            self.failures.popleft()
        if self.state is CircuitState.CLOSED and len(self.failures) >= self.threshold:
            self.opened_at = now
            self.failures.clear()
            self._move(CircuitState.OPEN, f"{self.threshold} failures within {self.window:g} s")


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
        # The client spans of `ServiceClient.forward` (other calls get theirs from `TracingTransport`).
        self.tracer = (tracer_provider or trace.get_tracer_provider()).get_tracer("portico.client")

    def breaker(self, service: str) -> CircuitBreaker:
        breaker = self.breakers.get(service)
        if breaker is None:
            breaker = self.breakers[service] = CircuitBreaker(service, self.settings, self.metrics)
        return breaker


def _problem_of(content_type: str, body: bytes) -> dict[str, Any]:
    if not content_type.startswith("application/problem+json"):
        return {}
    try:
        problem = orjson.loads(body)
    except orjson.JSONDecodeError:
        return {}
    return problem if isinstance(problem, dict) else {}


_FAILURE_CLASSES: dict[int, type[DownstreamError]] = {
    502: DownstreamBadResponse,
    503: DownstreamUnavailable,
    504: DownstreamTimeout,
}


def failure_of(
    service: str, status: int, *, content_type: str = "", retry_after: str | None = None, body: bytes = b""
) -> tuple[DownstreamError, bool]:
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
            DownstreamUnavailable(service, detail, error_code=code if isinstance(code, str) else None, headers=headers),
            True,
        )
    if status == 504:
        return DownstreamTimeout(service, f"The {service} service timed out."), True
    return DownstreamBadResponse(service, f"The {service} service answered {status}."), True


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
        base_url: str,
        client: httpx.AsyncClient,
        signer: IdentitySigner,
        policy: CallPolicy | None = None,
        *,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        self.name = name
        self.base_url = base_url.rstrip("/")
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
        origin = urlsplit(self.base_url)
        self._address = origin.hostname or ""
        self._port = origin.port or default_port(origin.scheme)
        self._tracer = self.policy.tracer

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
        downstream error (CircuitOpen at once while the service's circuit is open)."""

        async def call() -> tuple[int, httpx.Response]:
            response = await self._send(method, path, identity, headers, content, json, params, timeout)
            if response.status_code >= 500:
                await response.aread()
            return response.status_code, response

        def failure(response: httpx.Response) -> tuple[DownstreamError, bool]:
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

        async def call() -> tuple[int, Answer]:
            answer = await self._forward(method, path, identity, headers, body, query, span_name, template, keep)
            return answer.status, answer

        def failure(answer: Answer) -> tuple[DownstreamError, bool]:
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
        call: Callable[[], Awaitable[tuple[int, R]]],
        failure: Callable[[R], tuple[DownstreamError, bool]],
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
        try:
            try:
                code, answer = await call()
            except DownstreamTimeout:
                status, failed = NO_ANSWER_TIMEOUT, True
                raise
            except DownstreamUnavailable:
                status, failed = NO_ANSWER_UNREACHABLE, True
                raise
            status = str(code)
            if code >= 500:
                error, own = failure(answer)
                # A 503 with Retry-After is the service shedding load on purpose (it answered, and
                # says when to come back): not held against its circuit, which would cut its reads off too.
                failed = own and not (code == 503 and shedding(answer))
                raise error
            failed = False
            return answer
        finally:
            self.breaker.after_call(trial, failed=failed)
            self.metrics.call(self.name, method, status, time.perf_counter() - started)

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
    ) -> Answer:
        assert self.session is not None
        url = URL(self.base_url + path + ("?" + query.decode("latin-1") if query else ""), encoded=True)
        headers.append((IDENTITY_HEADER, self.signer.sign(identity, self.name)))
        retries = self._retries(method, any(name == IDEMPOTENCY_KEY for name, _ in headers))
        loop = asyncio.get_running_loop()
        # A retry must still fit in the pool's timeout, counted from the first attempt.
        deadline = loop.time() + self.policy.settings.http_timeout_seconds
        span = self._tracer.start_span(
            span_name,
            kind=SpanKind.CLIENT,
            attributes={
                HTTP_REQUEST_METHOD: method,
                URL_FULL: self.base_url + path,
                URL_TEMPLATE: template,
                SERVER_ADDRESS: self._address,
                SERVER_PORT: self._port,
                PEER_SERVICE: self.name,
            },
        )
        headers.append(("traceparent", traceparent_of(span)))
        trace_state = span.get_span_context().trace_state
        if trace_state:
            headers.append(("tracestate", trace_state.to_header()))
        try:
            while True:
                try:
                    async with self.session.request(
                        method,
                        url,
                        headers=headers,
                        data=body,
                        allow_redirects=False,
                        auto_decompress=False,
                        timeout=self._forward_timeout,
                    ) as response:
                        content = await response.read()
                    kept = [(name.lower(), value) for name, value in response.raw_headers if name.lower() in keep]
                    answer = Answer(response.status, kept, content)
                    break
                except aiohttp.ClientError as exc:
                    connect_failed = isinstance(exc, _NOT_ANSWERED) or type(exc) is aiohttp.ClientOSError
                    if connect_failed and retries > 0 and await self._pause_for_retry(deadline):
                        retries -= 1
                        continue
                    if isinstance(exc, aiohttp.ServerTimeoutError):
                        raise DownstreamTimeout(self.name, f"The {self.name} service did not answer in time.") from exc
                    raise self._unreachable() from exc
                except TimeoutError as exc:
                    raise DownstreamTimeout(self.name, f"The {self.name} service did not answer in time.") from exc
        except BaseException as exc:
            span.set_attribute(ERROR_TYPE, type(exc).__qualname__)
            span.set_status(StatusCode.ERROR)
            span.end()
            raise
        finish_client_span(span, answer.status)
        return answer

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
    ) -> httpx.Response:
        request_headers = httpx.Headers(headers)
        request_headers[IDENTITY_HEADER] = self.signer.sign(identity, self.name)
        retries = self._retries(method, IDEMPOTENCY_HEADER in request_headers)
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            left = None if deadline is None else max(0.001, deadline - loop.time())
            try:
                return await self.client.request(
                    method,
                    self.base_url + path,
                    headers=request_headers,
                    content=content,
                    json=json,
                    params=params,
                    timeout=left if left is not None else httpx.USE_CLIENT_DEFAULT,
                )
            except httpx.TimeoutException as exc:
                refused = _refused(exc)
                connect_failed = refused or isinstance(exc, httpx.ConnectTimeout)
                if connect_failed and retries > 0 and await self._pause_for_retry(deadline):
                    retries -= 1
                    continue
                if refused:
                    raise self._unreachable() from exc
                raise DownstreamTimeout(self.name, f"The {self.name} service did not answer in time.") from exc
            except httpx.ConnectError as exc:
                if retries > 0 and await self._pause_for_retry(deadline):
                    retries -= 1
                    continue
                raise self._unreachable() from exc
            except httpx.TransportError as exc:
                raise self._unreachable() from exc

    def _unreachable(self) -> DownstreamUnavailable:
        return DownstreamUnavailable(
            self.name, f"The {self.name} service is unreachable.", headers={"Retry-After": "1"}
        )

    async def _pause_for_retry(self, deadline: float | None) -> bool:
        """Waits a random moment before a retry; False when no time would be left for it."""
        pause = random.uniform(0, self.policy.settings.http_retry_jitter_seconds)
        if deadline is not None and asyncio.get_running_loop().time() + pause >= deadline:
            return False
        await asyncio.sleep(pause)
        return True
