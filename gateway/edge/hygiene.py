"""HTTP hygiene at the outer edge: security headers, trusted hosts and CORS (compression is
`gateway/edge/compression.py`).

The edge (`gateway/edge/pipeline.py`) applies these before authentication, so every answer, a 401 or
a 429 included, carries the security headers and, for an allowed origin, the CORS headers a browser
needs to read it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

from starlette.types import Scope

from shared.asgi import header, headers
from shared.contract import AGGREGATE_COMPLETE_HEADER, IDEMPOTENT_REPLAYED_HEADER
from shared.docs import DOCS_CSP, DOCS_PAGES
from shared.errors import RETRY_AFTER, BadRequest, Forbidden
from shared.request_id import REQUEST_ID_HEADER_NAME

CORS_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
CORS_REQUEST_HEADERS = frozenset(
    {
        "accept",
        "accept-language",
        "authorization",
        "content-language",
        "content-type",
        "idempotency-key",
        "if-match",
        "if-none-match",
        "last-event-id",
        "traceparent",
        "tracestate",
        "x-api-key",
        REQUEST_ID_HEADER_NAME.lower(),
        "x-tenant-id",
    }
)
CORS_EXPOSED_HEADERS = (
    "ETag",
    "Location",
    RETRY_AFTER,
    "RateLimit",
    "RateLimit-Policy",
    "X-RateLimit-Limit",
    "X-RateLimit-Remaining",
    "X-RateLimit-Reset",
    IDEMPOTENT_REPLAYED_HEADER,
    REQUEST_ID_HEADER_NAME,
    "traceresponse",
    AGGREGATE_COMPLETE_HEADER,
    "Deprecation",
    "Sunset",
    "Link",
)


class InvalidHost(BadRequest, code="INVALID_HOST", title="Invalid Host header"):
    """A `Host` that is not in `GATEWAY_TRUSTED_HOSTS`."""


class CorsRefused(Forbidden, code="CORS_REFUSED", title="Cross-origin request refused"):
    """A CORS preflight from an origin, for a method or with a header the gateway does not allow;
    the detail names what was refused."""


def _host_of(value: str) -> str:
    value = value.strip().lower()
    if value.startswith("["):  # an IPv6 literal with or without a port
        return value[: value.find("]") + 1] if "]" in value else value
    return value.split(":", 1)[0]


class TrustedHosts:
    """Which `Host` headers are served: `*.example.com` matches subdomains."""

    def __init__(self, hosts: Iterable[str]) -> None:
        patterns = [h.strip().lower() for h in hosts]
        self.exact = frozenset(p for p in patterns if not p.startswith("*."))
        self.suffixes = tuple(p[1:] for p in patterns if p.startswith("*."))

    def allowed(self, host: str) -> bool:
        return host in self.exact or (bool(self.suffixes) and host.endswith(self.suffixes))

    def refusal(self, scope: Scope) -> InvalidHost | None:
        """The 400 for a request to another host; None when its host is served here."""
        host = (header(scope, b"host") or b"").decode("latin-1")
        if self.allowed(_host_of(host)):
            return None
        return InvalidHost(f"The host {host!r} is not served here.")


class Preflight(NamedTuple):
    """A CORS preflight's answer: 204 with these headers, or a 403 problem (with `Vary: Origin`)."""

    headers: list[tuple[bytes, bytes]]
    refusal: CorsRefused | None


class Cors:
    """CORS for the configured origins; preflights are answered at the edge, before authentication.

    A preflight from an origin, for a method or with headers that are not allowed is refused with a
    403 problem (not a bare answer a browser would only report as a network error in the console).
    """

    def __init__(self, *, origins: Iterable[str], allow_credentials: bool, max_age: int) -> None:
        self.origins = frozenset(o.rstrip("/") for o in origins)
        self.any_origin = "*" in self.origins
        self.allow_credentials = allow_credentials
        self.preflight_headers = [
            (b"access-control-allow-methods", ", ".join(CORS_METHODS).encode()),
            (b"access-control-max-age", str(max_age).encode()),
        ]
        self.expose = ", ".join(CORS_EXPOSED_HEADERS).encode()

    def _origin_headers(self, origin: bytes) -> list[tuple[bytes, bytes]]:
        # With "*" and no credentials, "*" itself keeps shared caches from storing one copy per origin.
        value = b"*" if self.any_origin and not self.allow_credentials else origin
        headers = [(b"access-control-allow-origin", value)]
        if self.allow_credentials:
            headers.append((b"access-control-allow-credentials", b"true"))
        return headers

    def check(self, scope: Scope) -> tuple[Preflight | None, list[tuple[bytes, bytes]]]:
        """A preflight's answer (or None for any other request), and the headers an allowed origin's
        answer carries (none without an allowed `Origin`; a `Vary: Origin` to merge is among them)."""
        origin, request_method, request_headers = headers(
            scope, b"origin", b"access-control-request-method", b"access-control-request-headers"
        )
        if origin is None:
            return None, []
        allowed = self.any_origin or origin.decode("latin-1") in self.origins
        if scope["method"] == "OPTIONS" and request_method is not None:
            return self._preflight(origin if allowed else None, request_method, request_headers), []
        if not allowed:
            return None, []
        return None, [*self._origin_headers(origin), (b"access-control-expose-headers", self.expose), VARY_ORIGIN]

    def _preflight(self, origin: bytes | None, method: bytes, requested: bytes | None) -> Preflight:
        names = [h.strip().lower() for h in (requested or b"").decode("latin-1").split(",") if h.strip()]
        refused_headers = sorted(set(names) - CORS_REQUEST_HEADERS)
        problem = None
        if origin is None:
            problem = "This origin may not call the API from a browser."
        elif method.decode("latin-1") not in CORS_METHODS:
            problem = f"The method {method.decode('latin-1')} is not allowed cross-origin."
        elif refused_headers:
            problem = f"The headers {', '.join(refused_headers)} are not allowed cross-origin."
        if problem is not None:
            return Preflight([VARY_ORIGIN], CorsRefused(problem))
        assert origin is not None
        answer = [
            *self._origin_headers(origin),
            *self.preflight_headers,
            (b"vary", b"Origin, Access-Control-Request-Method, Access-Control-Request-Headers"),
            (b"content-length", b"0"),
        ]
        if names:
            answer.append((b"access-control-allow-headers", ", ".join(names).encode()))
        return Preflight(answer, None)


class SecurityHeaders:
    """Headers that keep browsers from sniffing, framing or leaking API answers; HSTS when the
    gateway is reached over TLS (`hsts_max_age_seconds` > 0). Every answer gets them, the edge's own
    refusals included; a header the answer already has (a page's own policy) is kept."""

    def __init__(self, *, hsts_max_age: int, hsts_include_subdomains: bool) -> None:
        common = [
            (b"x-content-type-options", b"nosniff"),
            (b"x-frame-options", b"DENY"),
            (b"referrer-policy", b"no-referrer"),
        ]
        if hsts_max_age > 0:
            value = f"max-age={hsts_max_age}" + ("; includeSubDomains" if hsts_include_subdomains else "")
            common.append((b"strict-transport-security", value.encode()))
        # The docs pages run scripts and styles, all served by this process (`shared/docs.py`).
        self.docs_headers = [*common, (b"content-security-policy", DOCS_CSP.encode())]
        self.api_headers = [*common, (b"content-security-policy", b"default-src 'none'; frame-ancestors 'none'")]
        self.names = frozenset(name for name, _ in self.api_headers)

    def for_path(self, path: str) -> list[tuple[bytes, bytes]]:
        return self.docs_headers if path in DOCS_PAGES else self.api_headers

    def add_missing(self, raw: list[tuple[bytes, bytes]], path: str) -> None:
        present = {name for name, _ in raw if name in self.names}
        extra = self.for_path(path)
        if present:
            raw.extend(pair for pair in extra if pair[0] not in present)
        else:
            raw.extend(extra)


VARY = b"vary"
VARY_ORIGIN = (VARY, b"Origin")


def add_headers(raw: list[tuple[bytes, bytes]], extra: Iterable[tuple[bytes, bytes]]) -> None:
    """Adds `extra` to an answer's raw headers, merging a `Vary` into the one it has."""
    for name, value in extra:
        if name == VARY:
            add_vary(raw, value)
        else:
            raw.append((name, value))


def add_vary(raw: list[tuple[bytes, bytes]], value: bytes) -> None:
    for i, (name, existing) in enumerate(raw):
        if name == VARY:
            raw[i] = (VARY, existing + b", " + value)
            return
    raw.append((VARY, value))
