"""The gateway's edge: every request through the stages in one pass, in one pure ASGI layer.

    route            matched once, before anything else (`gateway/edge/router.py`)
    hygiene          trusted hosts (400), CORS preflights, security headers    `gateway/edge/hygiene.py`
    admission        the adaptive limit by the caller's plan (503 OVERLOADED)   `gateway/edge/admission.py`
    authentication   JWT or API key, tenant check                              `gateway/edge/authentication.py`
    rate limit       the plan's (or client address's) quota and the route's    `gateway/edge/ratelimit.py`
    idempotency      a keyed write's claim, replay, 409, 422                   `gateway/edge/idempotency.py`
    the route        a forwarded route runs here (access, parameters, the      `gateway/edge/forwarding.py`
                     call), any other in FastAPI
    caching          ETag/304, private, no-store                               `gateway/edge/caching.py`
    deprecation      headers of retired routes, counted                        `gateway/edge/deprecation.py`

Why one layer: a chain of ASGI middleware costs a call, a closure and a wrapped `send` per stage and
per request, and each stage that needs the route matched it again. Here the route is matched once,
each stage is a step of one function, and a forwarded route's answer, which the edge holds whole, is
finished (headers, ETag, the idempotency record) and sent as two messages, without any `send` being
wrapped. The answers of the routes FastAPI runs (aggregates, real time, GraphQL, docs) stream through
one wrapped `send` that does the same.

What each answer carries follows the order of the stages: an answer of a stage carries the headers of
the stages before it (every answer the security and CORS headers; a 429, a replay or an idempotency
error also the rate-limit headers), and a route's answer all of them. Stages that hold state (the
stores, the service clients) are built in the lifespan and handed over as one `EdgeRuntime`
(`running`); what is fixed by the settings is built with the app.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

from redis.exceptions import RedisError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.edge.admission import ANONYMOUS_RANK, caller_rank
from gateway.edge.authentication import ANONYMOUS_CALLER, Authenticator, Caller
from gateway.edge.caching import ConditionalAnswer, cache_headers, conditional, taggable
from gateway.edge.compression import Compression
from gateway.edge.deprecation import Deprecations
from gateway.edge.forwarding import CompiledForward, Forwarder
from gateway.edge.hygiene import Cors, SecurityHeaders, TrustedHosts, add_headers
from gateway.edge.idempotency import (
    HEADER,
    KEY_RE,
    OUTCOME,
    UNSTORED_HEADERS,
    Disconnected,
    Idempotency,
    KeyedRequest,
    read_body,
    replay_message,
    replaying,
)
from gateway.edge.metering import Metering
from gateway.edge.metrics import EdgeMetrics
from gateway.edge.ratelimit import Counted, RateLimits, rate_limit_headers
from gateway.edge.router import Found, RouteTable, WrongMethod
from gateway.edge.store import StoreUnavailable
from gateway.settings import GatewaySettings
from shared.admission import (
    ADMITTED,
    EXEMPT_PATHS,
    RANKS,
    AdaptiveLimit,
    AdmissionMetrics,
    LimitSettings,
    Shedder,
    deadline_var,
    overloaded,
)
from shared.asgi import BodyChunks, header
from shared.context import RequestContext, request_context
from shared.contract import InvalidIdempotencyKey
from shared.errors import MethodNotAllowed, PorticoError, UpstreamError, problem_message

logger = logging.getLogger("portico.gateway.edge")
error_log = logging.getLogger("portico.errors")

Headers = list[tuple[bytes, bytes]]
_NO_PARAMS: dict[str, str] = {}
# WebSocket close codes (RFC 6455): refused, and "reconnect later".
CLOSE_POLICY_VIOLATION = 1008
CLOSE_TRY_AGAIN_LATER = 1013
# What a store or service blip raises while a connection is admitted: not the client's fault.
TRANSIENT_FAILURES = (RedisError, UpstreamError)
# Never refused for load: the probes, the scrape, and the event stream, a connection that outlives a
# request (held for minutes, it would fill the limit; its own limits bound it).
UNLIMITED_PATHS = EXEMPT_PATHS | {"/v1/events"}
# The span attribute of a request refused for load: why (`limit`, `queue_timeout`).
ADMISSION = "portico.admission"


@dataclass(frozen=True, slots=True)
class EdgeRuntime:
    """What the edge uses while the app runs, built in the lifespan (`gateway/app.py`)."""

    authenticator: Authenticator
    # None: the stage is switched off by the settings.
    rate_limits: RateLimits | None
    idempotency: Idempotency | None
    forwarder: Forwarder
    # Counts every answer to a tenant as it is sent, in the process (`gateway/edge/metering.py`); None: off.
    metering: Metering | None = None


def _rank(route: object, raw: Sequence[tuple[bytes, bytes]], authenticator: Authenticator) -> int:
    """The admission rank of a request to `route` (None: no route) with the raw headers `raw`: a route
    open to callers without credentials ranks every caller anonymous, as its access does."""
    if type(route) is CompiledForward and route.access.anonymous:
        return ANONYMOUS_RANK
    return caller_rank(raw, authenticator)


class Edge:
    def __init__(
        self, *, settings: GatewaySettings, metrics: EdgeMetrics, admission: AdmissionMetrics | None = None
    ) -> None:
        # Set once the app has all its routes (`gateway/app.py`), before it serves anything.
        self.table = RouteTable((), ())
        self.security = (
            SecurityHeaders(
                hsts_max_age=settings.hsts_max_age_seconds, hsts_include_subdomains=settings.hsts_include_subdomains
            )
            if settings.security_headers_enabled
            else None
        )
        self.hosts = TrustedHosts(settings.trusted_hosts) if settings.trusted_hosts != ["*"] else None
        self.cors = (
            Cors(
                origins=settings.cors_allow_origins,
                allow_credentials=settings.cors_allow_credentials,
                max_age=settings.cors_max_age_seconds,
            )
            if settings.cors_allow_origins
            else None
        )
        self.compression = (
            Compression(minimum=settings.gzip_minimum_bytes, level=settings.gzip_level)
            if settings.gzip_enabled
            else None
        )
        self.etag = settings.etag_enabled
        # Admission (`gateway/edge/admission.py`): None when switched off by the settings.
        self.admission = admission
        self.gate = (
            AdaptiveLimit(LimitSettings.of(settings), admission, settings.admission_plan_shares)
            if settings.admission_enabled and admission is not None
            else None
        )
        self.budget = settings.http_timeout_seconds
        self.max_body = settings.max_body_bytes
        self.deprecations = Deprecations(metrics.deprecated_calls)
        self.app: ASGIApp | None = None
        self._runtime: EdgeRuntime | None = None

    def wrap(self, app: ASGIApp) -> Edge:
        """The edge as a middleware factory: Starlette builds its stack (and hands the edge the app
        inside it, FastAPI's) on the first ASGI call."""
        self.app = app
        return self

    def shedder(self, runtime: EdgeRuntime) -> Shedder | None:
        """What admits and refuses requests in the server's protocol, ranking callers as the admission
        stage does; None when admission is off."""
        if self.gate is None or self.admission is None:
            return None
        authenticator = runtime.authenticator

        def rank(method: bytes, path: str, raw: Sequence[tuple[bytes, bytes]]) -> int:
            found = self.table.match({"type": "http", "method": method.decode("latin-1"), "path": path})
            return _rank(found.route if type(found) is Found else None, raw, authenticator)

        return Shedder(
            self.gate,
            self.admission,
            rank=rank,
            exempt=UNLIMITED_PATHS,
            headers=self.security.api_headers if self.security is not None else (),
            # A browser's request: its refusal carries the CORS headers, which the edge adds.
            app_decides=(b"origin",) if self.cors is not None else (),
            max_body=self.max_body,
        )

    @contextlib.contextmanager
    def running(self, runtime: EdgeRuntime) -> Iterator[None]:
        """The edge serves with `runtime` for the life of the `with` block (the lifespan)."""
        previous, self._runtime = self._runtime, runtime
        try:
            yield
        finally:
            self._runtime = previous

    @property
    def runtime(self) -> EdgeRuntime:
        runtime = self._runtime
        if runtime is None:
            raise RuntimeError("the gateway's edge is used outside the app's lifespan")
        return runtime

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "websocket":
            await self._websocket(scope, receive, send)
        else:
            assert self.app is not None
            await self.app(scope, receive, send)

    # --- HTTP

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        runtime = self.runtime
        context = request_context(scope)
        found = self.table.match(scope)
        route = None
        params = _NO_PARAMS
        if type(found) is Found:
            route, params = found.route, found.params
            context.route = route.path
        compiled = route if type(route) is CompiledForward else None
        # The headers every answer from here on carries.
        extra: Headers = []
        refusal: PorticoError | None
        if self.hosts is not None:
            refusal = self.hosts.refusal(scope)
            if refusal is not None:
                await self._problem(send, scope, context, refusal, extra)
                return
        if self.cors is not None:
            preflight, cors_headers = self.cors.check(scope)
            if preflight is not None:
                if preflight.refusal is not None:
                    await self._problem(send, scope, context, preflight.refusal, preflight.headers)
                else:
                    await self._send(send, scope, 204, preflight.headers, b"", [])
                return
            extra += cors_headers

        if scope["path"] in UNLIMITED_PATHS:
            # Neither limited nor given a deadline: a stream's calls go on for as long as it lasts.
            await self._admitted(scope, receive, send, context, runtime, found, params, compiled, extra)
            return
        # None: admitted already by the server's protocol (`Shedder`), which holds the slot.
        gate = self.gate if ADMITTED not in scope else None
        if gate is not None:
            rank = _rank(compiled, scope["headers"], runtime.authenticator)
            if not gate.enter(rank):
                refused = await gate.wait(rank)
                if refused is not None:
                    assert self.admission is not None
                    self.admission.count_shed(refused, RANKS[rank])
                    context.attributes[ADMISSION] = refused
                    await self._problem(send, scope, context, overloaded(gate.retry_after()), extra)
                    return
        started = time.perf_counter()
        # The services are told when the gateway gives up on the request: its own timeout budget.
        token = deadline_var.set(time.time() + self.budget)
        try:
            await self._admitted(scope, receive, send, context, runtime, found, params, compiled, extra)
        finally:
            deadline_var.reset(token)
            if gate is not None:
                gate.leave(started)

    async def _admitted(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        context: RequestContext,
        runtime: EdgeRuntime,
        found: Found | WrongMethod | None,
        params: dict[str, str],
        compiled: CompiledForward | None,
        extra: Headers,
    ) -> None:
        """The stages after admission: authentication, rate limit, idempotency, the route."""
        refusal: PorticoError | None
        authenticator = runtime.authenticator
        counted: str | None = None
        try:
            if compiled is not None and compiled.access.anonymous:
                caller = ANONYMOUS_CALLER
            else:
                caller = await authenticator.from_headers(scope)
            if compiled is not None and compiled.failure_statuses:
                # The service's answer may be a failed authentication (a wrong password, a taken email):
                # not for an address whose failures are spent.
                counted = await authenticator.guard_failures(scope)
        except PorticoError as exc:
            await self._problem(send, scope, context, exc, extra)
            return
        identity = caller.identity
        context.principal = identity
        context.caller = caller

        # A keyed write: its body is read now, for the record's fingerprint (the count and the claim
        # then go to Redis together).
        idempotency = runtime.idempotency
        keyed: KeyedRequest | None = None
        key_error: PorticoError | None = None
        body: bytes | None = None
        if idempotency is not None and idempotency.applies(scope["method"], identity):
            raw_key = header(scope, HEADER)
            if raw_key is not None:
                if KEY_RE.match(raw_key) is None:
                    key_error = InvalidIdempotencyKey()
                else:
                    try:
                        body = await read_body(receive)
                    except Disconnected:
                        return
                    except PorticoError as exc:  # the body limit, enforced while the body arrives
                        await self._problem(send, scope, context, exc, extra)
                        return
                    keyed = idempotency.request(scope, identity, raw_key, body)

        claim = None
        limits = runtime.rate_limits
        if limits is not None:
            started = time.perf_counter()
            shared = None
            if keyed is not None and idempotency is not None and idempotency.counts is not None:
                shared = functools.partial(idempotency.count_and_claim, request=keyed)
            counted_as = await limits.count(scope, identity, context.route, context.attributes, shared)
            claim = counted_as.outcome
            if shared is not None and counted_as.verdict is not None:
                context.event("idempotency.claim", started)
            if counted_as.counted:
                context.event("ratelimit", started)
            if counted_as.verdict is not None:
                extra += rate_limit_headers(counted_as.verdict)
            if counted_as.refusal is not None:
                await self._problem(send, scope, context, counted_as.refusal, extra)
                return

        if key_error is not None:
            await self._problem(send, scope, context, key_error, extra)
            return
        if keyed is not None:
            assert idempotency is not None
            if claim is None:
                started = time.perf_counter()
                try:
                    claim = await idempotency.claim(keyed)
                except StoreUnavailable:
                    context.attributes[OUTCOME] = f"fail_{idempotency.call.mode}"
                    refusal = idempotency.call.refusal()
                    if refusal is not None:
                        await self._problem(send, scope, context, refusal, extra)
                        return
                    keyed = None
                context.event("idempotency.claim", started)
            if claim is not None and claim.outcome != "acquired":
                error = idempotency.refusal(claim, context.attributes)
                if error is not None:
                    await self._problem(send, scope, context, error, extra)
                    return
                assert claim.response is not None
                context.span.add_event("idempotency.replayed", {"http.response.status_code": claim.response.status})
                status, replayed, content = replay_message(claim.response)
                await self._send(send, scope, status, replayed, content, extra)
                return

        if compiled is not None:
            await self._forwarded(scope, receive, send, context, compiled, params, body, keyed, counted, extra)
        elif type(found) is WrongMethod:
            allowed = ", ".join(found.allowed)
            error = MethodNotAllowed("Method Not Allowed", headers={"Allow": allowed})
            await self._answer_route(send, scope, context, None, *self._problem_parts(context, error), keyed, extra)
        else:
            await self._delegated(scope, receive, send, context, body, keyed, extra)

    async def _forwarded(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        context: RequestContext,
        route: CompiledForward,
        params: dict[str, str],
        body: bytes | None,
        keyed: KeyedRequest | None,
        counted: str | None,
        extra: Headers,
    ) -> None:
        runtime = self.runtime
        assert context.principal is not None
        watcher: asyncio.Task[bool] | None = None
        task = asyncio.current_task()
        assert task is not None
        try:
            if route.reads_body and body is None:
                body = await read_body(receive)
            # A client that goes away while the service works cancels the call (its connection to the
            # service is closed, which the service sees), rather than the call running to its end. Not
            # a keyed write's: the service may have done it already, so it runs to its end and its
            # answer is kept, for the retry the client sends to learn what became of it.
            watcher = asyncio.create_task(_watch_disconnect(receive, task if keyed is None else None))
            answer = await runtime.forwarder.run(route, scope, context.principal, params, body)
            status, headers, content = answer.status, answer.headers, answer.body
        except asyncio.CancelledError:
            # Cancelled by the watcher alone: the client left, nobody waits for an answer (the watcher
            # cancels no keyed write). Anything else (the server stopping) is passed on.
            left_us = (
                keyed is None
                and watcher is not None
                and watcher.done()
                and not watcher.cancelled()
                and watcher.result()
            )
            if left_us and task.uncancel() == 0:
                return
            await self._release(keyed)
            raise
        except PorticoError as exc:
            if exc.status_code >= 500:
                # As the app's error handler logs what the routes FastAPI runs raise.
                error_log.warning("answered %s %s: %s", exc.status_code, exc.code, exc.detail)
            status, headers, content = self._problem_parts(context, exc)
        except Disconnected:
            await self._release(keyed)
            return
        except BaseException:
            await self._release(keyed)
            raise
        finally:
            if watcher is not None:
                watcher.cancel()
        if counted is not None and status in route.failure_statuses:
            # The answer is the service's own either way: the failure only counts towards the next.
            await runtime.authenticator.count_failure(counted)
        await self._answer_route(send, scope, context, route, status, headers, content, keyed, extra)

    async def _answer_route(
        self,
        send: Send,
        scope: Scope,
        context: RequestContext,
        route: CompiledForward | None,
        status: int,
        headers: Headers,
        content: bytes,
        keyed: KeyedRequest | None,
        extra: Headers,
    ) -> None:
        """Finishes a route's answer, held whole: caching, deprecation, the idempotency record."""
        method = scope["method"]
        identity = context.principal
        tenant = identity is not None and identity.tenant_id is not None
        cache_headers(headers, secret=route is not None and route.secret, tenant=tenant)
        self.deprecations.apply(headers, method, context.route, route.deprecation if route is not None else None)
        tagged = method == "GET" and self.etag and taggable(status, headers)
        if tagged and conditional(headers, content, header(scope, b"if-none-match")):
            context.span.add_event("cache.not_modified", {"http.response.status_code": 304})
            await self._send(send, scope, 304, headers, None, extra)
            return
        if keyed is not None:
            idempotency = self.runtime.idempotency
            assert idempotency is not None
            started = time.perf_counter()
            kept = content if len(content) <= idempotency.max_bytes else None
            with contextlib.suppress(StoreUnavailable):  # counted and logged by the caller; the lock expires
                await idempotency.settle(keyed, status, headers, kept, context.attributes)
            context.event("idempotency.store", started)
        await self._send(send, scope, status, headers, content, extra)

    async def _release(self, keyed: KeyedRequest | None) -> None:
        if keyed is not None:
            idempotency = self.runtime.idempotency
            assert idempotency is not None
            with contextlib.suppress(StoreUnavailable):
                await idempotency.release(keyed)

    async def _delegated(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        context: RequestContext,
        body: bytes | None,
        keyed: KeyedRequest | None,
        extra: Headers,
    ) -> None:
        """A route FastAPI runs (or none: FastAPI's 404), its answer finished as it streams out."""
        assert self.app is not None
        if body is not None:
            receive = replaying(body, receive)
        answer = RouteAnswer(self, scope, context, send, keyed, extra)
        try:
            if self.compression is None:
                await self.app(scope, receive, answer.send)
            else:
                app = self.app

                async def finished(scope: Scope, receive: Receive, compressing: Send) -> None:
                    answer.outer = compressing
                    await app(scope, receive, answer.send)

                await self.compression.responder(scope, finished)(scope, receive, send)
        except Exception:
            # Unhandled: the error middleware outside the edge answers 500, counted here.
            metering = self.runtime.metering
            if metering is not None and not answer.started:
                metering.count(context, 500)
            raise
        finally:
            if keyed is not None and not answer.settled:
                await self._release(keyed)

    # --- sending

    @staticmethod
    def _problem_parts(context: RequestContext, exc: PorticoError) -> tuple[int, Headers, bytes]:
        headers, body = problem_message(exc, context.request_id)
        return exc.status_code, headers, body

    async def _problem(
        self, send: Send, scope: Scope, context: RequestContext, exc: PorticoError, extra: Headers
    ) -> None:
        status, headers, body = self._problem_parts(context, exc)
        await self._send(send, scope, status, headers, body, extra)

    def finish_headers(self, scope: Scope, headers: Headers, extra: Headers) -> None:
        """Adds what every answer carries: the headers of the stages it passed, the security headers."""
        if extra:
            add_headers(headers, extra)
        if self.security is not None:
            self.security.add_missing(headers, scope["path"])

    async def _send(
        self, send: Send, scope: Scope, status: int, headers: Headers, body: bytes | None, extra: Headers
    ) -> None:
        """Sends a whole answer (`body` None: a 304, which has none)."""
        metering = self.runtime.metering
        if metering is not None:
            metering.count(request_context(scope), status)
        self.finish_headers(scope, headers, extra)
        if body is not None:
            if self.compression is not None:
                body = await self.compression.encode(scope, headers, body)
            headers = [(name, value) for name, value in headers if name != b"content-length"]
            headers.append((b"content-length", str(len(body)).encode("latin-1")))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body or b"", "more_body": False})

    # --- WebSocket

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        """A WebSocket is admitted as a request is: the same authentication (its credential in
        `?token=`), the same quotas (its route's own included) and the same failure modes. A refusal
        closes it before it is accepted (1008, the error code as reason); what a request would get as
        a 503 (a store or service failing) accepts it only to say "reconnect later" (1013), which a
        refused upgrade cannot say."""
        assert self.app is not None
        runtime = self.runtime
        context = request_context(scope)
        found = self.table.match(scope)
        if type(found) is Found:
            context.route = found.route.path
        if self.hosts is not None and self.hosts.refusal(scope) is not None:
            await send({"type": "websocket.close", "code": CLOSE_POLICY_VIOLATION, "reason": "invalid host"})
            return
        try:
            caller = await runtime.authenticator.from_token(_query_value(scope, "token"), scope)
            await self._admit_connection(scope, context, caller)
        except TRANSIENT_FAILURES as exc:
            logger.warning("WebSocket connection deferred: %s: %s", type(exc).__name__, exc)
            await self._reconnect_later(send, "service unavailable: reconnect later")
            return
        except PorticoError as exc:
            if exc.status_code == 503:
                # What a request gets as a 503 (a store failing closed): come back later.
                await self._reconnect_later(send, exc.code)
            else:
                await send({"type": "websocket.close", "code": CLOSE_POLICY_VIOLATION, "reason": exc.code})
            return
        context.principal = caller.identity
        context.caller = caller
        await self.app(scope, receive, send)

    @staticmethod
    async def _reconnect_later(send: Send, reason: str) -> None:
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.close", "code": CLOSE_TRY_AGAIN_LATER, "reason": reason})

    async def _admit_connection(self, scope: Scope, context: RequestContext, caller: Caller) -> None:
        """A connection counts as one request of its caller's quotas (429's code when one is spent)."""
        limits = self.runtime.rate_limits
        if limits is None:
            return
        counted: Counted[None] = await limits.count(scope, caller.identity, context.route, context.attributes)
        if counted.refusal is not None:
            raise counted.refusal


async def _watch_disconnect(receive: Receive, task: asyncio.Task[Any] | None) -> bool:
    """Cancels `task` (if any) when the client disconnects, and says so (what is left of a body is
    read and dropped; the disconnect read is what counts the request as `client_closed`)."""
    while True:
        try:
            message = await receive()
        except Exception:  # a body over the limit, say: not a disconnect, and not this watcher's to report
            return False
        if message["type"] == "http.disconnect":
            if task is not None:
                task.cancel()
            return True


def _query_value(scope: Scope, name: str) -> str | None:
    """The last value of a query parameter, as FastAPI reads a scalar one."""
    value = None
    for key, found in parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True):
        if key == name:
            value = found
    return value


@dataclass(eq=False, repr=False, slots=True)  # no repr: the scope carries the caller's credentials
class RouteAnswer:
    """The `send` of a route FastAPI runs: finishes its answer as it streams out, as the edge finishes
    a forwarded route's (caching, deprecation, the idempotency record, the stages' headers)."""

    edge: Edge
    scope: Scope
    context: RequestContext
    # Where the finished answer goes: the client, or the compression on its way there.
    outer: Send
    keyed: KeyedRequest | None
    extra: Headers
    settled: bool = field(init=False, default=False)
    started: bool = field(init=False, default=False)
    _status: int = field(init=False, default=0)
    _headers: Headers = field(init=False, default_factory=list)
    _body: BodyChunks = field(init=False)
    _conditional: ConditionalAnswer | None = field(init=False)

    def __post_init__(self) -> None:
        idempotency = self.edge.runtime.idempotency
        self._body = BodyChunks(keep_up_to=idempotency.max_bytes if idempotency else None)
        self._conditional = (
            ConditionalAnswer(self._finish, header(self.scope, b"if-none-match"))
            if self.scope["method"] == "GET" and self.edge.etag
            else None
        )

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            raw = [(bytes(k).lower(), bytes(v)) for k, v in message.get("headers", ())]
            identity = self.context.principal
            cache_headers(raw, secret=False, tenant=identity is not None and identity.tenant_id is not None)
            self.edge.deprecations.apply(raw, self.scope["method"], self.context.route, None)
            message = {**message, "headers": raw}
            self._status, self._headers = message["status"], raw
        if self._conditional is not None:
            await self._conditional(message)
            return
        if self.keyed is not None and message["type"] == "http.response.body":
            self._body.add(message.get("body", b""))
            if not message.get("more_body", False):
                # Kept before the client sees the end, so a retry after the answer always finds it.
                await self._settle()
        await self._finish(message)

    async def _settle(self) -> None:
        self.settled = True
        idempotency = self.edge.runtime.idempotency
        assert idempotency is not None
        assert self.keyed is not None
        started = time.perf_counter()
        kept = self._body.joined() if self._body.complete else None
        headers = [(k, v) for k, v in self._headers if k not in UNSTORED_HEADERS]
        with contextlib.suppress(StoreUnavailable):
            await idempotency.settle(self.keyed, self._status, headers, kept, self.context.attributes)
        self.context.event("idempotency.store", started)

    async def _finish(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.started = True
            metering = self.edge.runtime.metering
            if metering is not None:
                metering.count(self.context, message["status"])
            if message["status"] == 304:
                self.context.span.add_event("cache.not_modified", {"http.response.status_code": 304})
            raw = list(message.get("headers", ()))
            self.edge.finish_headers(self.scope, raw, self.extra)
            message = {**message, "headers": raw}
        await self.outer(message)
