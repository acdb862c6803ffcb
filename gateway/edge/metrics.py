"""Counters of the edge stages, served on the gateway's /metrics with the HTTP metrics."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


def _counter(name: str, documentation: str, labels: tuple[str, ...]) -> Counter:
    # Made unregistered: the app's registry exists only once the common middleware is installed.
    return Counter(name, documentation, labels, registry=None)


# How many tenants `portico_usage_top_tenant_requests` exports.
TOP_TENANTS = 10


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
        self.deprecated_calls = _counter(
            "portico_deprecated_calls_total",
            "Answers that said Deprecation (a deprecated route, or a retired field used), by route.",
            ("method", "route"),
        )

        # Per tenant, but only the few with most requests: a label per tenant would be unbounded.
        self.top_tenants = Gauge(
            "portico_usage_top_tenant_requests",
            "Requests this gateway process answered each tenant in the current hour (UTC), for the "
            f"{TOP_TENANTS} tenants with most (the others are not exported).",
            ("tenant",),
            registry=None,
        )

    def register(self, registry: CollectorRegistry) -> None:
        collectors = (
            self.top_tenants,
            self.store_errors,
            self.rate_limit,
            self.idempotency,
            self.api_keys,
            self.auth_failures,
            self.deprecated_calls,
        )
        for collector in collectors:
            registry.register(collector)
