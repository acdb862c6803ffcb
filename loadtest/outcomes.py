"""What one answer meant for a load-test run, and the columns of the files a run writes. Kept apart
from the report so that the locust process does not load matplotlib."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

# What a response meant for the run; only "error" counts against the system.
OK, REJECTED, RATE_LIMITED, UNAVAILABLE, ERROR = "ok", "rejected", "rate_limited", "unavailable", "error"
OUTCOMES = (OK, REJECTED, RATE_LIMITED, UNAVAILABLE, ERROR)

REQUEST_FIELDS = ("t", "method", "route", "status", "latency_ms", "plan", "outcome", "error_code")
MEMORY_FIELDS = ("t", "process", "pid", "rss_bytes")
JOURNEY_FIELDS = ("t", "kind", "plan", "value")


def classify(status: int, body: Any, expected: Collection[int], rejected: Collection[str], pending: bool) -> str:
    """The outcome of one answer: `expected` statuses are ok, error codes in `rejected` are outcomes a
    journey meets by design, and a `pending` route may be missing from this gateway (the router's
    404 NOT_FOUND, or 405 where its path matches another route)."""
    code = body.get("error_code", "") if isinstance(body, dict) else ""
    if status in expected:
        return OK
    if status == 429:
        return RATE_LIMITED
    route_missing = (status == 404 and code == "NOT_FOUND") or status == 405
    if pending and route_missing:
        return UNAVAILABLE
    if 400 <= status < 500 and code in rejected:
        return REJECTED
    return ERROR
