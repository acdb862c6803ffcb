"""Deprecated calls: the headers of a deprecated route, and a count of every deprecated call.

A route the gateway itself deprecates (`Forward(..., deprecation=...)`) gets the contract's
`Deprecation`, `Sunset` and `Link: <successor>; rel="successor-version"` headers on every answer; a
service may also mark one answer deprecated (the webhooks service does when a request uses the
retired `enabled` field). Either way, the call is counted in `portico_deprecated_calls_total{method,
route}` by route template, so operators see who still uses what is going away (the access log line of
the request names the caller's tenant).
"""

from __future__ import annotations

from prometheus_client import Counter

from shared.deprecation import DEPRECATION, LINK, Deprecation

_DEPRECATION = DEPRECATION.lower().encode("ascii")
_LINK = LINK.lower().encode("ascii")


def mark(raw: list[tuple[bytes, bytes]], deprecation: Deprecation) -> None:
    """Adds a deprecation's headers to an answer; a `Link` it already has is kept, the successor added."""
    for name, value in deprecation.headers().items():
        key, encoded = name.lower().encode("ascii"), value.encode("latin-1")
        for i, (existing_key, existing) in enumerate(raw):
            if existing_key == key:
                raw[i] = (key, existing + b", " + encoded if key == _LINK else encoded)
                break
        else:
            raw.append((key, encoded))


class Deprecations:
    def __init__(self, counter: Counter) -> None:
        self.counter = counter

    def apply(
        self, raw: list[tuple[bytes, bytes]], method: str, route: str | None, deprecation: Deprecation | None
    ) -> None:
        """Marks the answer of a deprecated route, and counts it when it says Deprecation (whoever said so)."""
        if route is None:
            return
        said = any(key == _DEPRECATION for key, _ in raw)
        if deprecation is not None and not said:
            mark(raw, deprecation)
            said = True
        if said:
            self.counter.labels(method, route).inc()
