"""OpenTelemetry setup driven by the standard OTEL_* variables.

Spans are always recorded (so trace ids exist for logs and errors); they are exported only when
`OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set, over OTLP/HTTP.
"""

from __future__ import annotations

import os
import re

from opentelemetry import metrics, trace
from opentelemetry.context import Context
from opentelemetry.instrumentation.sqlalchemy.engine import EngineTracer
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from sqlalchemy.ext.asyncio import AsyncEngine

# A W3C `traceparent` of version 00, the only one we write: what a stored row keeps of the trace
# that wrote it, so work done later for that row (a webhook delivery) continues the same trace.
TRACEPARENT_LENGTH = 55
TRACEPARENT_PATTERN = re.compile(r"^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$")
_W3C = TraceContextTextMapPropagator()


def exporting_enabled() -> bool:
    return bool(os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))


def create_tracer_provider(default_service_name: str) -> TracerProvider:
    """A provider per app; `OTEL_SERVICE_NAME` and `OTEL_RESOURCE_ATTRIBUTES` win over the default name.

    It starts nothing: `start_export` (called from the lifespan) adds the exporter.
    """
    attributes = {} if os.environ.get("OTEL_SERVICE_NAME") else {SERVICE_NAME: default_service_name}
    return TracerProvider(resource=Resource.create(attributes))


def start_export(provider: TracerProvider) -> bool:
    """Adds the OTLP/HTTP batch exporter when an endpoint is configured; says whether it did."""
    if not exporting_enabled() or os.environ.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return False
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    return True


def instrument_engine(engine: AsyncEngine, provider: TracerProvider) -> None:
    """SQL spans for one engine, through this app's provider.

    `SQLAlchemyInstrumentor().instrument()` is once per process and patches engine creation
    globally; an engine tracer per engine keeps several apps in one process (tests) apart.
    """
    tracer = trace.get_tracer("opentelemetry.instrumentation.sqlalchemy", tracer_provider=provider)
    usage = metrics.get_meter("opentelemetry.instrumentation.sqlalchemy").create_up_down_counter(
        name="db.client.connections.usage", unit="connections", description="Connections in use."
    )
    EngineTracer(tracer, engine.sync_engine, usage)  # type: ignore[no-untyped-call]


def set_global_provider_once(provider: TracerProvider) -> None:
    """The first app in a process becomes the global provider (for code that uses the global API)."""
    if isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        trace.set_tracer_provider(provider)


def current_traceparent() -> str | None:
    """The W3C `traceparent` of the current span; None outside any span."""
    carrier: dict[str, str] = {}
    _W3C.inject(carrier)
    return carrier.get("traceparent")


def context_of(traceparent: str | None) -> Context | None:
    """A context whose current span is the one `traceparent` names, for starting its children; None
    when there is no valid one to continue."""
    if traceparent is None or not TRACEPARENT_PATTERN.match(traceparent):
        return None
    context = _W3C.extract({"traceparent": traceparent})
    return context if trace.get_current_span(context).get_span_context().is_valid else None
