"""Pure ASGI middleware shared by every process: observability (request id, server span, metrics,
access log) and the body size limit."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from opentelemetry import context as otel_context
from opentelemetry.trace import INVALID_SPAN
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.asgi import declared_length, header
from shared.context import RequestContext, open_context
from shared.errors import PayloadTooLarge, problem_response
from shared.metrics import UNMATCHED, HttpMetrics
from shared.request_id import CLIENT_REQUEST_ID, REQUEST_ID_HEADER, new_request_id, request_id_of
from shared.telemetry import PRINCIPAL, REQUEST_ID, TENANT_ID, ServerSpans, traceresponse

TRACERESPONSE_HEADER = b"traceresponse"
# The status of a request whose client left before its answer started (metrics, access log, span).
CLIENT_CLOSED = "client_closed"
OUTCOME = "portico.outcome"
# Accepted from clients as is; anything else is replaced, so ids are safe to log and forward.
# After refusing a streamed body, how much more of it is read and discarded, and for how long.
LINGER_FACTOR = 4
LINGER_SECONDS = 2.0

access_logger = logging.getLogger("portico.access")
# The access line's field that names an authenticated caller's tenant.
TENANT_FIELD = "tenant_id"


class ObservabilityMiddleware:
    """Everything a process records about a request, in one layer, outside all others:

    - the request id: a well-formed `X-Request-ID` is accepted, else one is made; it is echoed on the
      answer and is in every log line and error body;
    - the server span (`ServerSpans`), current while the request runs, so upstream calls and SQL
      are its children; it ends named after the route, with the caller's tenant and principal when
      one is known (the gateway's edge, a service's internal token), and what the stages decided
      (`RequestContext.attributes`);
    - `http_requests_total` and `http_request_duration_seconds`, by route template;
    - one JSON access line, written while the span is still current (it carries the trace id).

    It is outside the app's error handling (`PorticoAPI.build_middleware_stack`), so a 500 rendered
    for an unhandled exception still belongs to the span and is counted as a 500.
    """

    def __init__(self, app: ASGIApp, *, spans: ServerSpans, metrics: HttpMetrics, access_log: bool = True) -> None:
        self.app = app
        self.spans = spans
        self.metrics = metrics
        self.access_log = access_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind != "http" and kind != "websocket":
            await self.app(scope, receive, send)
            return
        sent = header(scope, REQUEST_ID_HEADER)
        request_id = sent.decode("ascii") if sent is not None and CLIENT_REQUEST_ID.match(sent) else new_request_id()
        raw_id = request_id.encode("ascii")
        start = time.perf_counter()
        traced = self.spans.start(scope)
        context = open_context(scope, request_id, traced[0] if traced is not None else INVALID_SPAN)
        token = otel_context.attach(traced[1]) if traced is not None else None
        status = 0
        # The client went away before its answer started: its own outcome (nginx's 499), never a 5xx.
        closed = False

        async def watched() -> Message:
            nonlocal closed
            message = await receive()
            if message["type"] == "http.disconnect" and not status:
                closed = True
            return message

        stamped = [(REQUEST_ID_HEADER, raw_id)]
        if traced is not None:
            # W3C Trace Context Level 2: the trace a sampled request's answer belongs to.
            span_context = traced[0].get_span_context()
            if span_context.trace_flags.sampled:
                stamped.append((TRACERESPONSE_HEADER, traceresponse(span_context)))

        async def stamp(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [(k, v) for k, v in message.get("headers", ()) if k != REQUEST_ID_HEADER]
                headers += stamped
                message["headers"] = headers
            await send(message)

        error: BaseException | None = None
        try:
            await self.app(scope, receive if kind != "http" else watched, stamp)
        except BaseException as exc:
            error = exc
            raise
        finally:
            route = context.route or getattr(scope.get("route"), "path", None)
            answered = status or (500 if kind == "http" else 0)
            if kind == "http":
                self._record(scope, context, route, CLIENT_CLOSED if closed else answered, time.perf_counter() - start)
            if traced is not None:
                attributes = context.attributes
                attributes[REQUEST_ID] = request_id
                principal = context.principal
                if principal is not None and not principal.is_anonymous:
                    attributes[PRINCIPAL] = principal.subject
                    if principal.tenant_id is not None:
                        attributes[TENANT_ID] = principal.tenant_id
                if closed:
                    attributes[OUTCOME] = CLIENT_CLOSED
                    answered, error = 0, None
                self.spans.finish(traced[0], scope, route, answered, error, attributes)
            if token is not None:
                otel_context.detach(token)

    def _record(
        self, scope: Scope, context: RequestContext, route: str | None, status: int | str, elapsed: float
    ) -> None:
        method = scope["method"]
        self.metrics.record(method, route or UNMATCHED, str(status), elapsed)
        if self.access_log and access_logger.isEnabledFor(logging.INFO):
            fields: dict[str, object] = {
                "http_method": method,
                "http_route": route,
                "http_status": status,
                "duration_ms": round(elapsed * 1000, 3),
            }
            # An authenticated request's line names the caller's tenant (as its span does).
            principal = context.principal
            if principal is not None and principal.tenant_id is not None:
                fields[TENANT_FIELD] = principal.tenant_id
            access_logger.info("%s %s %s", method, scope["path"], status, extra=fields)


class BodySizeLimitMiddleware:
    """Refuses bodies over `max_bytes` with 413, before they are read in full.

    A declared Content-Length over the limit is refused at once; a chunked body is counted as it
    arrives and refused when it crosses the limit.
    """

    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if declared_length(header(scope, b"content-length")) > self.max_bytes:
            await self._refuse(scope, receive, send)
            return

        received = 0
        max_bytes = self.max_bytes

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > max_bytes:
                    if message.get("more_body", False):
                        await self._linger(receive)
                    raise PayloadTooLarge(f"The request body exceeds the limit of {max_bytes} bytes.")
            return message

        await self.app(scope, limited_receive, send)

    async def _linger(self, receive: Receive) -> None:
        """Reads and discards what a client still sends of a refused body, within a bound, before
        the 413 is sent.

        A client that writes its whole body before reading would otherwise see the connection reset
        (closed with unread data) instead of the 413; this is nginx's lingering close. Nothing read
        here is kept.
        """
        budget = self.max_bytes * LINGER_FACTOR
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(LINGER_SECONDS):
                while budget > 0:
                    message = await receive()
                    if message["type"] != "http.request" or not message.get("more_body", False):
                        return
                    budget -= len(message.get("body", b""))

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = problem_response(
            PayloadTooLarge(f"The request body exceeds the limit of {self.max_bytes} bytes."),
            request_id_of(scope),
        )
        await self._linger(receive)
        # Closing the connection stops a client that is still sending.
        response.headers["Connection"] = "close"
        await response(scope, receive, send)
