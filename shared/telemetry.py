"""OpenTelemetry: the provider, the one server span of each request, and client spans.

Every trace id exists (for logs and error bodies) whether or not its spans are kept: the sampler is
`ParentBased(TraceIdRatioBased(trace_sample_ratio))`, so a request that arrives with a sampled
`traceparent` is always recorded and a new trace is recorded with the setting's probability.
Recorded spans are exported only when `OTEL_EXPORTER_OTLP_ENDPOINT` or
`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set, over OTLP/HTTP, through a `BatchSpanProcessor` (a
background thread: a request never waits for the exporter).

Spans carry the stable HTTP and database semantic conventions (`http.request.method`, `url.full`,
`server.address`, `http.response.status_code`, `db.operation.name`, ...). The server span
(`ServerSpans`), the client spans (`TracingTransport`, and `ServiceClient.forward` in
`shared/http.py`) and the SQL spans (`SqlSpans`, in `shared/sql_spans.py`) are our own rather than
the ASGI, httpx and SQLAlchemy instrumentations: one span per request, per call and per statement,
named after what they did (a route template, a service and path template, an operation and table), no `http
send`/`receive` sub-spans, attributes built only for a span that is recorded. The gateway's Redis
work on the hot path is recorded as events on the server span (`shared/context.py`), not as spans.
Work done while instrumentation is suppressed (probes, background loops with nothing to carry)
makes no span at all.
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import httpx
from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.instrumentation.utils import is_instrumentation_enabled
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.semconv._incubating.attributes.peer_attributes import PEER_SERVICE as PEER_SERVICE
from opentelemetry.semconv.attributes.client_attributes import CLIENT_ADDRESS
from opentelemetry.semconv.attributes.error_attributes import ERROR_TYPE as ERROR_TYPE
from opentelemetry.semconv.attributes.http_attributes import (
    HTTP_REQUEST_METHOD as HTTP_REQUEST_METHOD,
)
from opentelemetry.semconv.attributes.http_attributes import (
    HTTP_RESPONSE_STATUS_CODE,
    HTTP_ROUTE,
)
from opentelemetry.semconv.attributes.network_attributes import NETWORK_PROTOCOL_VERSION
from opentelemetry.semconv.attributes.server_attributes import SERVER_ADDRESS as SERVER_ADDRESS
from opentelemetry.semconv.attributes.server_attributes import SERVER_PORT as SERVER_PORT
from opentelemetry.semconv.attributes.url_attributes import URL_FULL as URL_FULL
from opentelemetry.semconv.attributes.url_attributes import URL_PATH, URL_SCHEME
from opentelemetry.semconv.attributes.user_agent_attributes import USER_AGENT_ORIGINAL
from opentelemetry.trace import Span, SpanContext, SpanKind, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from shared.contract import PROBE_PATHS

if TYPE_CHECKING:
    from starlette.types import Scope

# A W3C `traceparent` of version 00, the only one we write: what a stored row keeps of the trace
# that wrote it, so work done later for that row (a webhook delivery) continues the same trace.
TRACEPARENT_LENGTH = 55
TRACEPARENT_PATTERN = re.compile(r"^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$")
W3C = TraceContextTextMapPropagator()


def exporting_enabled() -> bool:
    return bool(os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))


# Not yet in the stable attribute modules of the semantic conventions package.
URL_TEMPLATE = "url.template"
# Paths never traced: probes and scrapes would drown the real traces.
UNTRACED_PATHS = frozenset(PROBE_PATHS)
# What every process puts on its server span about the request and the caller (never a credential).
REQUEST_ID = "portico.request_id"
TENANT_ID = "portico.tenant_id"
# The caller: a user id, `key:<API key id>` or `service:<name>` (OpenTelemetry's `enduser.id`).
PRINCIPAL = "enduser.id"


def create_tracer_provider(default_service_name: str, sample_ratio: float = 1.0) -> TracerProvider:
    """A provider per app; `OTEL_SERVICE_NAME` and `OTEL_RESOURCE_ATTRIBUTES` win over the default name.

    New traces are kept with probability `sample_ratio`; a request continuing a trace follows its
    caller's decision. It starts nothing: `start_export` (called from the lifespan) adds the exporter.
    """
    attributes = {} if os.environ.get("OTEL_SERVICE_NAME") else {SERVICE_NAME: default_service_name}
    return TracerProvider(resource=Resource.create(attributes), sampler=ParentBased(TraceIdRatioBased(sample_ratio)))


def start_export(provider: TracerProvider) -> bool:
    """Adds the OTLP/HTTP batch exporter when an endpoint is configured; says whether it did."""
    if not exporting_enabled() or os.environ.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return False
    from shared.otlp import SpanExporter

    provider.add_span_processor(BatchSpanProcessor(SpanExporter()))
    return True


def set_global_provider_once(provider: TracerProvider) -> None:
    """The first app in a process becomes the global provider (for code that uses the global API)."""
    if isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        trace.set_tracer_provider(provider)


def current_traceparent() -> str | None:
    """The W3C `traceparent` of the current span; None outside any span."""
    carrier: dict[str, str] = {}
    W3C.inject(carrier)
    return carrier.get("traceparent")


def unsampled_traceparent() -> str:
    """A `traceparent` that asks whoever receives it not to record the work (the sampled flag off):
    what a call made while instrumentation is suppressed carries, so that the service it calls,
    whose sampler follows its caller's decision, records no span for it either."""
    return f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-00"


def traceparent_of(span: Span) -> str:
    """The `traceparent` that makes `span` the parent of the work it is sent with (what the
    propagator would write for it, without building a context to read it back from)."""
    context = span.get_span_context()
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"


def traceresponse(span_context: SpanContext) -> bytes:
    """The `traceresponse` value of an answer (W3C Trace Context Level 2): version, trace id, the
    span that answered, flags."""
    return b"00-%032x-%016x-%02x" % (span_context.trace_id, span_context.span_id, span_context.trace_flags)


def context_of(traceparent: str | None) -> Context | None:
    """A context whose current span is the one `traceparent` names, for starting its children; None
    when there is no valid one to continue."""
    if traceparent is None or not TRACEPARENT_PATTERN.match(traceparent):
        return None
    context = W3C.extract({"traceparent": traceparent})
    return context if trace.get_current_span(context).get_span_context().is_valid else None


# The server span


def _headers_of(scope: Scope, names: frozenset[bytes]) -> dict[bytes, bytes]:
    found: dict[bytes, bytes] = {}
    for key, value in scope["headers"]:
        if key in names and key not in found:
            found[key] = value
    return found


_PROPAGATED = frozenset(field.encode("ascii") for field in propagate.get_global_textmap().fields)
_SERVER_HEADERS = _PROPAGATED | {b"host", b"user-agent"}


class ServerSpans:
    """The one SERVER span of each request (HTTP or WebSocket), child of an incoming `traceparent`.

    `start` opens it, named after the method until the route is known; `finish` names it
    `<method> <route template>` and adds the route, the status and, on the gateway, who called.
    """

    def __init__(self, provider: TracerProvider, *, untraced: frozenset[str] = UNTRACED_PATHS) -> None:
        self.tracer = provider.get_tracer("portico.server")
        self.untraced = untraced
        self._propagator = propagate.get_global_textmap()

    def start(self, scope: Scope) -> tuple[Span, Context] | None:
        """The request's span and the context that makes it current; None for an untraced path."""
        if scope["path"] in self.untraced:
            return None
        found = _headers_of(scope, _SERVER_HEADERS)
        carrier = {k.decode("latin-1"): v.decode("latin-1") for k, v in found.items() if k in _PROPAGATED}
        parent = self._propagator.extract(carrier) if carrier else None
        method = scope.get("method", "GET")
        # Given at the start (one attribute set built once, rather than one locked update each).
        # The query is left out: it may hold a credential (`/v1/ws?token=...`).
        attributes: dict[str, str | int] = {
            HTTP_REQUEST_METHOD: method,
            URL_SCHEME: scope.get("scheme", "http"),
            URL_PATH: scope["path"],
        }
        host = found.get(b"host")
        if host is not None:
            address, port = split_host(host.decode("latin-1"))
            attributes[SERVER_ADDRESS] = address
            if port is not None:
                attributes[SERVER_PORT] = port
        client = scope.get("client")
        if client:
            # The port is left out (an opt-in attribute of the conventions): every attribute costs the
            # exporter its encoding, per span.
            attributes[CLIENT_ADDRESS] = client[0]
        agent = found.get(b"user-agent")
        if agent is not None:
            attributes[USER_AGENT_ORIGINAL] = agent.decode("latin-1")
        if "http_version" in scope:
            attributes[NETWORK_PROTOCOL_VERSION] = scope["http_version"]
        span = self.tracer.start_span(method, context=parent, kind=SpanKind.SERVER, attributes=attributes)
        return span, trace.set_span_in_context(span, parent)

    @staticmethod
    def finish(
        span: Span,
        scope: Scope,
        route: str | None,
        status: int,
        error: BaseException | None = None,
        attributes: dict[str, Any] | None = None,
    ) -> None:
        """Names the span after its route template, records the outcome (and `attributes`), and ends it."""
        if span.is_recording():
            outcome = attributes if attributes is not None else {}
            if route:
                span.update_name(f"{scope.get('method', 'GET')} {route}")
                outcome[HTTP_ROUTE] = route
            if status:
                outcome[HTTP_RESPONSE_STATUS_CODE] = status
            if isinstance(error, Exception):
                span.record_exception(error)
                outcome[ERROR_TYPE] = type(error).__qualname__
                span.set_status(StatusCode.ERROR)
            elif status >= 500:
                outcome[ERROR_TYPE] = str(status)
                span.set_status(StatusCode.ERROR)
            span.set_attributes(outcome)
        span.end()


# Client spans

# Ids in paths are UUIDs (`shared/db.py`); a client span's name holds `{id}` in their place.
_ID_SEGMENT = re.compile(r"/[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}(?=/|$)")


def path_template(path: str) -> str:
    return _ID_SEGMENT.sub("/{id}", path)


# The httpx request extension that names the service a request goes to.
PEER_EXTENSION = "portico.peer_service"


class TracingTransport(httpx.AsyncBaseTransport):
    """Wraps a transport: each call is a CLIENT span, named `<method> <service> <path template>`
    (`GET users /v1/users/{id}`) with `peer.service`, and carries `traceparent`.

    `peers` maps a base URL to the name of the service there, unless the request names it in its
    `PEER_EXTENSION` extension (`ServiceClient` does: its instances may be found through DNS); calls
    elsewhere are named `<method> <path template>`.
    """

    def __init__(
        self, inner: httpx.AsyncBaseTransport, provider: TracerProvider, peers: Mapping[str, str] | None = None
    ) -> None:
        self.inner = inner
        self.tracer = provider.get_tracer("portico.client")
        self.peers = {_origin(url): name for url, name in (peers or {}).items()}
        self._propagator = propagate.get_global_textmap()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if not is_instrumentation_enabled():
            # A background loop polling, or a probe: no span here, and the service called is told
            # not to record one either (a trace context that is not sampled).
            request.headers["traceparent"] = unsampled_traceparent()
            return await self.inner.handle_async_request(request)
        url = request.url
        peer = request.extensions.get(PEER_EXTENSION) or self.peers.get(
            (url.scheme, url.host, url.port or default_port(url.scheme))
        )
        template = path_template(url.path)
        name = f"{request.method} {peer} {template}" if peer else f"{request.method} {template}"
        attributes: dict[str, str | int] = {
            HTTP_REQUEST_METHOD: request.method,
            # Without the query, like the server span's path.
            URL_FULL: str(url).partition("?")[0],
            URL_TEMPLATE: template,
            SERVER_ADDRESS: url.host,
            SERVER_PORT: url.port or default_port(url.scheme),
        }
        if peer:
            attributes[PEER_SERVICE] = peer
        with self.tracer.start_as_current_span(
            name, kind=SpanKind.CLIENT, attributes=attributes, record_exception=False, set_status_on_exception=False
        ) as span:
            carrier: dict[str, str] = {}
            self._propagator.inject(carrier)
            for key, value in carrier.items():
                request.headers[key] = value
            try:
                response = await self.inner.handle_async_request(request)
            except Exception as exc:
                if span.is_recording():
                    span.set_attribute(ERROR_TYPE, type(exc).__qualname__)
                    span.set_status(StatusCode.ERROR)
                raise
            finish_client_span(span, response.status_code, end=False)
            return response

    async def aclose(self) -> None:
        await self.inner.aclose()


def finish_client_span(span: Span, status: int, *, end: bool = True) -> None:
    """Records a call's answer on its client span: a 4xx or 5xx is an error of the call (the HTTP
    conventions; a server span is in error only for a 5xx)."""
    if span.is_recording():
        if status >= 400:
            span.set_attributes({HTTP_RESPONSE_STATUS_CODE: status, ERROR_TYPE: str(status)})
            span.set_status(StatusCode.ERROR)
        else:
            span.set_attribute(HTTP_RESPONSE_STATUS_CODE, status)
    if end:
        span.end()


def default_port(scheme: str) -> int:
    return 443 if scheme == "https" else 80


def _origin(url: str) -> tuple[str, str, int]:
    parts = urlsplit(url)
    return parts.scheme, parts.hostname or "", parts.port or default_port(parts.scheme)


def split_host(value: str) -> tuple[str, int | None]:
    """A Host header's address and port (`[::1]:8000` -> `::1`, 8000)."""
    if value.startswith("["):
        address, _, rest = value[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    else:
        address, colon, port = value.rpartition(":")
        if not colon:
            address, port = value, ""
    return address, int(port) if port.isdigit() else None
