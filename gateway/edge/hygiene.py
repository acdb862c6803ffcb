"""HTTP hygiene at the outer edge: security headers, trusted hosts and CORS (gzip is Starlette's).

These run before authentication, so every answer, a 401 or a 429 included, carries the security
headers and, for an allowed origin, the CORS headers a browser needs to read it.
"""

from __future__ import annotations

from collections.abc import Iterable

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.asgi import header, headers, on_response_start
from shared.context import request_id_of
from shared.docs import DOCS_CSP, DOCS_PAGES
from shared.errors import BadRequest, Forbidden, problem_response, send_problem

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
        "x-request-id",
        "x-tenant-id",
    }
)
CORS_EXPOSED_HEADERS = (
    "ETag",
    "Location",
    "Retry-After",
    "RateLimit",
    "RateLimit-Policy",
    "X-RateLimit-Limit",
    "X-RateLimit-Remaining",
    "X-RateLimit-Reset",
    "Idempotent-Replayed",
    "X-Request-ID",
    "X-Aggregate-Complete",
    "Deprecation",
    "Sunset",
    "Link",
)


class InvalidHost(BadRequest, code="INVALID_HOST", title="Invalid Host header"): ...


class CorsRefused(Forbidden, code="CORS_REFUSED", title="Cross-origin request refused"): ...


def _host_of(value: str) -> str:
    value = value.strip().lower()
    if value.startswith("["):  # an IPv6 literal with or without a port
        return value[: value.find("]") + 1] if "]" in value else value
    return value.split(":", 1)[0]


class TrustedHostMiddleware:
    """Refuses requests whose Host is not one of `hosts` (`*.example.com` matches subdomains)."""

    def __init__(self, app: ASGIApp, *, hosts: Iterable[str]) -> None:
        self.app = app
        patterns = [h.strip().lower() for h in hosts]
        self.exact = frozenset(p for p in patterns if not p.startswith("*."))
        self.suffixes = tuple(p[1:] for p in patterns if p.startswith("*."))

    def allowed(self, host: str) -> bool:
        return host in self.exact or (bool(self.suffixes) and host.endswith(self.suffixes))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        host = (header(scope, b"host") or b"").decode("latin-1")
        if self.allowed(_host_of(host)):
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008, "reason": "invalid host"})
            return
        await send_problem(InvalidHost(f"The host {host!r} is not served here."), scope, receive, send)


class CorsMiddleware:
    """CORS for the configured origins; preflights are answered here, before authentication.

    A preflight from an origin, for a method or with headers that are not allowed is refused with a
    403 problem (not a bare answer a browser would only report as a network error in the console).
    """

    def __init__(self, app: ASGIApp, *, origins: Iterable[str], allow_credentials: bool, max_age: int) -> None:
        self.app = app
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

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        origin, request_method, request_headers = headers(
            scope, b"origin", b"access-control-request-method", b"access-control-request-headers"
        )
        if origin is None:
            await self.app(scope, receive, send)
            return
        allowed = self.any_origin or origin.decode("latin-1") in self.origins
        if scope["method"] == "OPTIONS" and request_method is not None:
            await self._preflight(scope, receive, send, origin if allowed else None, request_method, request_headers)
            return
        if not allowed:
            await self.app(scope, receive, send)
            return
        cors_headers = [*self._origin_headers(origin), (b"access-control-expose-headers", self.expose)]

        def add_cors(message: Message) -> None:
            response_headers = MutableHeaders(scope=message)
            response_headers.raw.extend(cors_headers)
            response_headers.add_vary_header("Origin")

        await self.app(scope, receive, on_response_start(send, add_cors))

    async def _preflight(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        origin: bytes | None,
        method: bytes,
        requested: bytes | None,
    ) -> None:
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
            response = problem_response(CorsRefused(problem), request_id_of(scope))
            response.headers.append("Vary", "Origin")
            await response(scope, receive, send)
            return
        assert origin is not None
        answer = [
            *self._origin_headers(origin),
            *self.preflight_headers,
            (b"vary", b"Origin, Access-Control-Request-Method, Access-Control-Request-Headers"),
            (b"content-length", b"0"),
        ]
        if names:
            answer.append((b"access-control-allow-headers", ", ".join(names).encode()))
        await send({"type": "http.response.start", "status": 204, "headers": answer})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


class SecurityHeadersMiddleware:
    """Headers that keep browsers from sniffing, framing or leaking API answers; HSTS when the
    gateway is reached over TLS (`hsts_max_age_seconds` > 0)."""

    def __init__(self, app: ASGIApp, *, hsts_max_age: int, hsts_include_subdomains: bool) -> None:
        self.app = app
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

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        extra = self.docs_headers if scope["path"] in DOCS_PAGES else self.api_headers

        def add_missing(message: Message) -> None:
            raw = MutableHeaders(scope=message).raw
            present = {name for name, _ in raw}
            raw.extend(pair for pair in extra if pair[0] not in present)

        await self.app(scope, receive, on_response_start(send, add_missing))
