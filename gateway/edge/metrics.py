"""Counters of the edge stages, served on the gateway's /metrics with the HTTP metrics."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter


def _counter(name: str, documentation: str, labels: tuple[str, ...]) -> Counter:
    # Made unregistered: the app's registry exists only once the common middleware is installed.
    return Counter(name, documentation, labels, registry=None)


class EdgeMetrics:
    def __init__(self) -> None:
        self.store_errors = _counter(
            "gateway_store_errors_total",
            "Failed or timed-out calls to the edge stores, by stage and what the request got instead.",
            ("stage", "outcome"),
        )
        self.rate_limit = _counter(
            "gateway_rate_limit_decisions_total",
            "Rate limit decisions, by policy and decision.",
            ("policy", "decision"),
        )
        self.idempotency = _counter(
            "gateway_idempotency_total", "Requests with an Idempotency-Key, by outcome.", ("outcome",)
        )
        self.api_keys = _counter(
            "gateway_api_key_lookups_total",
            "API key resolutions, by where the answer came from and what it was.",
            ("source", "result"),
        )

        self.auth_failures = _counter(
            "gateway_auth_failures_total",
            "Failed authentications counted per client address (failed), and requests refused for an "
            "address past its limit (refused).",
            ("outcome",),
        )

    def register(self, registry: CollectorRegistry) -> None:
        for collector in (self.store_errors, self.rate_limit, self.idempotency, self.api_keys, self.auth_failures):
            registry.register(collector)
