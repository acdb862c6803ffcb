"""Our span encoder writes what OpenTelemetry's own OTLP encoder writes: the bytes of both, parsed
back, are the same `ExportTraceServiceRequest`, for spans of every shape the processes make (server
and client spans, events, links, errors, remote and local parents, trace state, attribute values of
every type, several resources and scopes, values past the cache's length)."""

from __future__ import annotations

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags, TraceState

from shared.otlp import CACHE_LIMIT, SpanEncoder


class Kept(SpanExporter):
    def __init__(self) -> None:
        self.spans: list[ReadableSpan] = []

    def export(self, spans):
        self.spans.extend(spans)
        return SpanExportResult.SUCCESS


def spans_of(service: str, kept: Kept) -> TracerProvider:
    provider = TracerProvider(resource=Resource.create({"service.name": service, "host.id": 7}))
    provider.add_span_processor(SimpleSpanProcessor(kept))
    return provider


def parsed(data: bytes) -> ExportTraceServiceRequest:
    message = ExportTraceServiceRequest()
    message.ParseFromString(data)
    return message


def made_spans() -> list[ReadableSpan]:
    kept = Kept()
    gateway = spans_of("gateway", kept)
    users = spans_of("users", kept)
    server = gateway.get_tracer("portico.server").start_span(
        "GET /v1/users/{user_id}",
        kind=SpanKind.SERVER,
        attributes={"http.request.method": "GET", "url.path": "/v1/users/" + "a" * 80, "server.port": 8000},
    )
    server.set_attributes({"http.route": "/v1/users/{user_id}", "http.response.status_code": 404, "ratio": 0.5})
    server.add_event("ratelimit", {"portico.duration_ms": 0.25, "http.request.method": "GET"})
    server.add_event("idempotency.claim")
    context = trace.set_span_in_context(server)
    client = gateway.get_tracer("portico.client", "1.2.3").start_span(
        "GET users /users/{id}", kind=SpanKind.CLIENT, context=context, attributes={"peer.service": "users"}
    )
    client.set_status(Status(StatusCode.ERROR, "the users service answered 404"))
    client.end()
    server.end()
    remote = SpanContext(
        trace_id=0x0AF7651916CD43DD8448EB211C80319C,
        span_id=0x00F067AA0BA902B7,
        is_remote=True,
        trace_flags=TraceFlags(1),
        trace_state=TraceState([("vendor", "value"), ("other", "x")]),
    )
    linked = users.get_tracer("portico.sql").start_span(
        "events.relay",
        context=trace.set_span_in_context(trace.NonRecordingSpan(remote)),
        links=[Link(remote, {"why": "carried"}), Link(server.get_span_context())],
        attributes={
            "flag": True,
            "off": False,
            "negative": -5,
            "big": 2**62,
            "names": ("a", "b"),
            "counts": [1, 2, 3],
            "raw": b"\x00\x01",
            "map": {"inner": "value", "n": 1},
            "empty": "",
        },
    )
    linked.set_status(Status(StatusCode.OK))
    linked.end()
    return kept.spans


def test_the_bytes_parse_into_what_the_librarys_encoder_builds():
    spans = made_spans()
    assert parsed(SpanEncoder().request(spans)) == encode_spans(spans)


def test_the_same_again_from_its_caches_and_after_they_fill():
    spans = made_spans()
    encoder = SpanEncoder()
    first = encoder.request(spans)
    assert encoder.request(spans) == first
    for n in range(CACHE_LIMIT + 10):
        encoder.attributes(b"\x4a", {f"key.{n}": "value"})
    assert parsed(encoder.request(spans)) == encode_spans(spans)
