"""Public routes that forward to one service, declared as data.

Most of the public API is the same handler: check the caller (a dependency), send the request on to
a service at the same path, relay the answer. A `Forward` names what differs: method, path, the
caller dependency, and what the API reference shows. `add_forwards` turns each into a FastAPI route
whose parameters (path ids, documented query parameters) are validated here before anything is sent.

What the reference shows comes from the service that answers: `body` and `answer` are the service's
own pydantic models (imported from `services/<name>/schemas.py`, never copied), `errors` the error
classes it raises for the route. `add_forwards` adds what the edge itself may answer (401, 403, 413,
429, 502-504, the idempotency errors of a keyed write), the security schemes and the edge's headers
(`gateway/openapi.py`). The gateway does not parse a body it forwards: the service validates it.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, Request
from fastapi.routing import APIRoute
from pydantic import BaseModel
from starlette.responses import Response
from starlette.routing import BaseRoute

from gateway.deps import UpstreamsDep
from gateway.openapi import JSON, Credentials, DocumentedBody, operation_docs
from gateway.proxy import Upstreams
from shared.contract import ANONYMOUS, Identity, ResourceIdPath
from shared.errors import PorticoError
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
    status_code: int = 200
    # Query parameters shown in the API reference: name -> (annotation, default).
    query: Mapping[str, tuple[Any, Any]] = field(default_factory=dict)
    # The request body: the service's model, shown in the reference and validated by the service.
    body: type[BaseModel] | None = None
    body_media_type: str = JSON
    body_required: bool = True
    # The success answer's model (`Page[...]` for a list); None for an answer without a body.
    answer: Any = None
    # The errors the service answers this route with (the edge's own are added by `add_forwards`).
    errors: Sequence[type[PorticoError]] = ()
    # Sent to the service as nobody: the route is for callers without credentials (sign-up, login).
    # Credentials sent anyway are not looked at: the caller is its client address (gateway/auth.py).
    anonymous: bool = False
    # Whether an API key may call the route (a key cannot manage keys: those need a user's token).
    api_key: bool = True
    # Statuses of the service's answer that count as a failed authentication of the client address
    # (a wrong password, an email already taken).
    failure_statuses: frozenset[int] = frozenset()
    # Runs with the service's answer before it is relayed (e.g. forgetting a revoked API key).
    then: Callable[[Request, Response], None] | None = None


# The endpoint of one `Forward`: a callable whose signature FastAPI reads for its parameters. (A
# comment, not a docstring: FastAPI would show a docstring as every route's description.)
class _ForwardEndpoint:
    def __init__(self, service: str, upstream_path: str, route: Forward) -> None:
        self.service = service
        self.upstream_path = upstream_path
        self.anonymous = route.anonymous
        self.failure_statuses = route.failure_statuses
        self.then = route.then
        # Read by `gateway.openapi.documented_bodies` for the document's components.
        self.documented_body = (
            DocumentedBody(route.body, route.body_media_type, route.body_required) if route.body is not None else None
        )
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


def anonymous_forwards(routes: Iterable[BaseRoute]) -> list[tuple[APIRoute, frozenset[int]]]:
    """The routes forwarded as nobody, each with the statuses that count as a failed authentication."""
    return [
        (route, route.endpoint.failure_statuses)
        for route in routes
        if isinstance(route, APIRoute) and isinstance(route.endpoint, _ForwardEndpoint) and route.endpoint.anonymous
    ]


def add_forwards(
    router: APIRouter,
    service: str,
    routes: Iterable[Forward],
    *,
    upstream_prefix: str = "",
    errors: Sequence[type[PorticoError]] = (),
) -> None:
    """Adds each route to `router`, forwarding to `service` at `upstream_prefix` + the route's path.
    `errors`: what every route of the router may also answer (e.g. a plan gate's 402)."""
    for route in routes:
        endpoint = _ForwardEndpoint(service, upstream_prefix + route.path, route)
        credentials: Credentials = "none" if route.anonymous else "any" if route.api_key else "token"
        responses, openapi_extra = operation_docs(
            route.method,
            status_code=route.status_code,
            credentials=credentials,
            body=endpoint.documented_body,
            errors=[*route.errors, *errors],
            paged="cursor" in route.query,
        )
        router.add_api_route(
            route.path,
            endpoint,
            methods=[route.method],
            name=route.name,
            # The name is the operation's id, so a generated client's functions are named after it.
            operation_id=route.name,
            summary=route.summary,
            status_code=route.status_code,
            response_model=route.answer,
            responses=responses,
            openapi_extra=openapi_extra,
        )
