"""Counters of the edge stages, served on the gateway's /metrics with the HTTP metrics."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

# How many tenants `portico_usage_top_tenant_requests` exports.
TOP_TENANTS = 10
TOP_TENANT_REQUESTS = "portico_usage_top_tenant_requests"
# Gauges over a changing set of labels, whose zero samples are not served with several workers.
SPARSE_GAUGES = frozenset({TOP_TENANT_REQUESTS})


class EdgeMetrics:
    """The edge stages' counters, in the gateway's registry beside its HTTP metrics."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.store_errors = Counter(
            "gateway_store_errors_total",
            "Failed or timed-out calls to the edge stores, by stage and what the request got instead.",
            ("stage", "outcome"),
            registry=registry,
        )
        self.rate_limit = Counter(
            "gateway_rate_limit_decisions_total",
            "Rate limit decisions, by policy and decision.",
            ("policy", "decision"),
            registry=registry,
        )
        self.idempotency = Counter(
            "gateway_idempotency_total",
            "Requests with an Idempotency-Key, by outcome.",
            ("outcome",),
            registry=registry,
        )
        self.api_keys = Counter(
            "gateway_api_key_lookups_total",
            "API key resolutions, by where the answer came from and what it was.",
            ("source", "result"),
            registry=registry,
        )

        self.auth_failures = Counter(
            "gateway_auth_failures_total",
            "Failed authentications counted per client address (failed), and requests refused for an "
            "address past its limit (refused).",
            ("outcome",),
            registry=registry,
        )
        self.deprecated_calls = Counter(
            "portico_deprecated_calls_total",
            "Answers that said Deprecation (a deprecated route, or a retired field used), by route.",
            ("method", "route"),
            registry=registry,
        )

        # Per tenant, but only the few with most requests: a label per tenant would be unbounded.
        # Several workers: summed over the live ones, a tenant out of a worker's top at 0 there, not
        # served (`SPARSE_GAUGES`).
        self.top_tenants = Gauge(
            TOP_TENANT_REQUESTS,
            "Requests this gateway process answered each tenant in the current hour (UTC), for the "
            f"{TOP_TENANTS} tenants with most (the others are not exported; the sum over live workers).",
            ("tenant",),
            registry=registry,
            multiprocess_mode="livesum",
        )
