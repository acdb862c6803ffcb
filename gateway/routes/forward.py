"""Public routes that forward to one service, declared as data.

Most of the public API is the same handler: check the caller (a dependency), send the request on to
a service at the same path, relay the answer. A `Forward` names what differs: method, path, the
caller dependency, and what the API reference shows. `add_forwards` turns each into a FastAPI route
whose parameters (path ids, documented query parameters) are validated here before anything is sent.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, Request
from fastapi.routing import APIRoute
from starlette.responses import Response
from starlette.routing import BaseRoute

from gateway.deps import UpstreamsDep
from gateway.proxy import Upstreams
from shared.contract import ANONYMOUS, Identity, ResourceIdPath
from shared.deprecation import Deprecation
from shared.pagination import DEFAULT_LIMIT, CursorQuery, LimitQuery

_PATH_PARAM = re.compile(r"{(\w+)}")

# The query parameters of a list, for the API reference; the service validates them again.
PAGE_QUERY: Mapping[str, tuple[Any, Any]] = {"limit": (LimitQuery, DEFAULT_LIMIT), "cursor": (CursorQuery, None)}


@dataclass(frozen=True)
class Forward:
    """One public route answered by the service at the same path (below the router's prefix)."""

    method: str
    path: str
    # The identity dependency: `AnyCaller`, `Principal` or a scope's `Annotated[Identity, Depends(...)]`.
    caller: Any
    name: str
    summary: str
    status_code: int | None = None
    # Query parameters shown in the API reference: name -> (annotation, default).
    query: Mapping[str, tuple[Any, Any]] = field(default_factory=dict)
    responses: dict[int | str, dict[str, Any]] | None = None
    # Sent to the service as nobody: the route is for callers without credentials (sign-up, login).
    anonymous: bool = False
    # Runs with the service's answer before it is relayed (e.g. forgetting a revoked API key).
    then: Callable[[Request, Response], None] | None = None
    # A retired route: `deprecated` in OpenAPI, and the deprecation headers on every answer
    # (`gateway/edge/deprecation.py`).
    deprecation: Deprecation | None = None


# The endpoint of one `Forward`: a callable whose signature FastAPI reads for its parameters. (A
# comment, not a docstring: FastAPI would show a docstring as every route's description.)
class _ForwardEndpoint:
    def __init__(self, service: str, upstream_path: str, route: Forward) -> None:
        self.service = service
        self.upstream_path = upstream_path
        self.anonymous = route.anonymous
        self.then = route.then
        self.deprecation = route.deprecation
        keyword = inspect.Parameter.KEYWORD_ONLY
        parameters = [
            inspect.Parameter("request", keyword, annotation=Request),
            inspect.Parameter("upstreams", keyword, annotation=UpstreamsDep),
            inspect.Parameter("identity", keyword, annotation=route.caller),
            # Path parameters are ids; anything else (dots, encoded slashes) never reaches a service path.
            *(inspect.Parameter(name, keyword, annotation=ResourceIdPath) for name in _PATH_PARAM.findall(route.path)),
            *(
                inspect.Parameter(name, keyword, annotation=annotation, default=default)
                for name, (annotation, default) in route.query.items()
            ),
        ]
        self.__signature__ = inspect.Signature(parameters, return_annotation=Response)

    async def __call__(self, *, request: Request, upstreams: Upstreams, identity: Identity, **_: Any) -> Response:
        # Path parameters were validated as ids, so they are safe to put in the service's path.
        path = self.upstream_path.format_map(request.path_params)
        response = await upstreams.forward(request, self.service, path, ANONYMOUS if self.anonymous else identity)
        if self.then is not None:
            self.then(request, response)
        return response


def add_forwards(router: APIRouter, service: str, routes: Iterable[Forward], *, upstream_prefix: str = "") -> None:
    """Adds each route to `router`, forwarding to `service` at `upstream_prefix` + the route's path."""
    for route in routes:
        router.add_api_route(
            route.path,
            _ForwardEndpoint(service, upstream_prefix + route.path, route),
            methods=[route.method],
            name=route.name,
            summary=route.summary,
            status_code=route.status_code,
            responses=route.responses,
            deprecated=route.deprecation is not None or None,
            description=route.deprecation.note() if route.deprecation is not None else None,
        )


def deprecated_routes(routes: Iterable[BaseRoute]) -> dict[tuple[str, str], Deprecation]:
    """The deprecated forwards among `routes`, by (method, route template)."""
    found: dict[tuple[str, str], Deprecation] = {}
    for route in routes:
        endpoint = getattr(route, "endpoint", None)
        if isinstance(route, APIRoute) and isinstance(endpoint, _ForwardEndpoint) and endpoint.deprecation is not None:
            for method in route.methods or ():
                found[(method, route.path)] = endpoint.deprecation
    return found
