"""The sampler and the span names: new traces are kept at the setting's ratio, a continued trace
follows its caller, and client span names hold routes, not ids."""

from __future__ import annotations

import os

import pytest
from pydantic import ValidationError

from shared.settings import ProcessSettings
from shared.telemetry import ServerSpans, create_tracer_provider, path_template, split_host


def scope(headers: list[tuple[bytes, bytes]] | None = None, path: str = "/v1/users/me") -> dict:
    return {"type": "http", "method": "GET", "path": path, "headers": headers or [], "client": ("10.0.0.7", 5000)}


def traceparent(flags: str) -> list[tuple[bytes, bytes]]:
    return [(b"traceparent", f"00-{os.urandom(16).hex()}-{os.urandom(8).hex()}-{flags}".encode())]


def test_ratio_zero_records_no_new_trace_but_follows_a_sampled_caller():
    spans = ServerSpans(create_tracer_provider("test", sample_ratio=0.0))
    new = spans.start(scope())
    assert new is not None
    assert not new[0].is_recording()
    # A trace id exists all the same, for logs and error bodies.
    assert new[0].get_span_context().is_valid

    continued = spans.start(scope(traceparent("01")))
    assert continued is not None
    assert continued[0].is_recording()

    dropped_upstream = ServerSpans(create_tracer_provider("test", sample_ratio=1.0)).start(scope(traceparent("00")))
    assert dropped_upstream is not None
    assert not dropped_upstream[0].is_recording()


def test_ratio_one_records_every_new_trace_and_probes_are_not_traced():
    spans = ServerSpans(create_tracer_provider("test", sample_ratio=1.0))
    started = [spans.start(scope()) for _ in range(20)]
    assert all(s is not None and s[0].is_recording() for s in started)
    assert spans.start(scope(path="/health/ready")) is None
    assert spans.start(scope(path="/metrics")) is None


def test_the_ratio_is_a_setting_between_zero_and_one():
    assert ProcessSettings().trace_sample_ratio == 1.0
    assert ProcessSettings(trace_sample_ratio=0.25).trace_sample_ratio == 0.25
    with pytest.raises(ValidationError, match="trace_sample_ratio"):
        ProcessSettings(trace_sample_ratio=1.5)


def test_client_span_paths_name_routes_not_ids():
    assert path_template("/users/0b7f2c1e-8c2a-4a7e-9d0e-2f4b6c8d0a1e") == "/users/{id}"
    assert path_template("/orders/0b7f2c1e-8c2a-4a7e-9d0e-2f4b6c8d0a1e/cancel") == "/orders/{id}/cancel"
    assert path_template("/users/me") == "/users/me"


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("api.example.com", ("api.example.com", None)),
        ("api.example.com:8443", ("api.example.com", 8443)),
        ("[::1]:8000", ("::1", 8000)),
        ("[::1]", ("::1", None)),
        ("127.0.0.1:x", ("127.0.0.1", None)),
    ],
)
def test_host_header_is_split_into_address_and_port(host, expected):
    assert split_host(host) == expected
