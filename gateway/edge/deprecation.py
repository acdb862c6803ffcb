"""Deprecated calls: the headers of a deprecated route, and a count of every deprecated call.

A route the gateway itself deprecates (`Forward(..., deprecation=...)`, or any route listed here) gets
the contract's `Deprecation`, `Sunset` and `Link: <successor>; rel="successor-version"` headers on
every answer; a service may also mark one answer deprecated (the webhooks service does when a request
uses the retired `enabled` field). Either way, the call is counted in
`portico_deprecated_calls_total{method, route}` by route template, so operators see who still uses
what is going away (the access log line of the request names the caller's tenant).
"""

from __future__ import annotations

from collections.abc import Mapping

from prometheus_client import Counter
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.asgi import on_response_start
from shared.deprecation import DEPRECATION, Deprecation

# (method, route template) -> its deprecation.
DeprecatedRoutes = Mapping[tuple[str, str], Deprecation]


class DeprecationMiddleware:
    def __init__(self, app: ASGIApp, *, routes: DeprecatedRoutes, counter: Counter) -> None:
        self.app = app
        self.routes = routes
        self.counter = counter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        def mark(message: Message) -> None:
            route = getattr(scope.get("route"), "path", None)
            if route is None:
                return
            headers = MutableHeaders(scope=message)
            deprecation = self.routes.get((scope["method"], route))
            if deprecation is not None and DEPRECATION not in headers:
                deprecation.mark(headers)
            if DEPRECATION in headers:
                self.counter.labels(scope["method"], route).inc()

        await self.app(scope, receive, on_response_start(send, mark))
