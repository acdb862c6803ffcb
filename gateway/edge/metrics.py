"""Counters of the edge stages, served on the gateway's /metrics with the HTTP metrics."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter


class EdgeMetrics:
    def __init__(self) -> None:
        # Made unregistered: the app's registry exists only once the common middleware is installed.
        self.store_errors = Counter(
            "gateway_store_errors_total",
            "Failed or timed-out calls to the edge stores, by stage and what the request got instead.",
            ("stage", "outcome"),
            registry=None,
        )
        self.rate_limit = Counter(
            "gateway_rate_limit_decisions_total",
            "Rate limit decisions, by policy and decision.",
            ("policy", "decision"),
            registry=None,
        )
        self.idempotency = Counter(
            "gateway_idempotency_total",
            "Requests with an Idempotency-Key, by outcome.",
            ("outcome",),
            registry=None,
        )
        self.api_keys = Counter(
            "gateway_api_key_lookups_total",
            "API key resolutions, by where the answer came from and what it was.",
            ("source", "result"),
            registry=None,
        )

    def register(self, registry: CollectorRegistry) -> None:
        for collector in (self.store_errors, self.rate_limit, self.idempotency, self.api_keys):
            registry.register(collector)
