"""What an outbox event keeps of the trace that wrote it, and how a delivery attempt continues it."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from opentelemetry.sdk.trace import TracerProvider

from shared.events import FeedEvent
from shared.telemetry import TRACEPARENT_LENGTH, context_of, current_traceparent

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def test_the_current_span_is_written_as_a_traceparent_and_continued_from_it():
    tracer = TracerProvider().get_tracer("test")
    assert current_traceparent() is None  # outside any span there is nothing to keep
    with tracer.start_as_current_span("writes the event") as writer:
        kept = current_traceparent()
    assert kept is not None
    assert len(kept) == TRACEPARENT_LENGTH
    with tracer.start_as_current_span("attempt", context=context_of(kept)) as attempt:
        pass
    assert attempt.context.trace_id == writer.context.trace_id
    assert attempt.parent is not None
    assert attempt.parent.span_id == writer.context.span_id


@pytest.mark.parametrize(
    "value", [None, "", "garbage", "00-" + "0" * 32 + "-00f067aa0ba902b7-01", TRACEPARENT.upper(), TRACEPARENT + "-x"]
)
def test_nothing_valid_to_continue_starts_a_new_trace(value):
    assert context_of(value) is None


def test_the_feed_keeps_a_traceparent_and_drops_anything_else():
    event = {
        "seq": 1,
        "id": "e1",
        "type": "order.created",
        "tenant_id": "t",
        "created_at": datetime(2026, 1, 1, tzinfo=UTC),
        "data": {},
    }
    assert FeedEvent.model_validate(event).traceparent is None  # older feeds send none
    assert FeedEvent.model_validate({**event, "traceparent": TRACEPARENT}).traceparent == TRACEPARENT
    for bad in ("x" * 10_000, 42, "00-zz"):
        assert FeedEvent.model_validate({**event, "traceparent": bad}).traceparent is None
