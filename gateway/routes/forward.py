"""Public routes that forward to one service, declared as data and compiled once.

Most of the public API is the same work: check the caller, send the request on to a service at the
same path, relay the answer. A `Forward` row holds everything that differs, in one place: method and
path, who may call it (`Access`: credentials, scope, plans), whether its answer holds a secret, its
own rate limit, its deprecation, the errors its service answers, and what the API reference shows.

`ForwardRouter` collects one service's rows under a prefix and makes two things of each:

- a `CompiledForward`, which the edge (`gateway/edge/pipeline.py`) matches and runs itself: no
  dependency solving, no `Request` object, one pass;
- a documentation-only FastAPI route with the same path, parameters, body and answers as the row, so
  the OpenAPI document is FastAPI's own. The edge answers every request that matches a row before
  FastAPI's router would see it, so these routes' endpoint never runs.

What the reference shows comes from the service that answers: `body` and `answer` are the service's
own pydantic models (imported from `services/<name>/schemas.py`, never copied), `errors` the error
classes it raises for the route. The edge's own answers (401, 403, 413, 429, 502-504, the
idempotency errors of a keyed write) are added by `gateway/openapi.py`. The gateway does not parse a
body it forwards: the service validates it. Path parameters and the documented query parameters are
validated here, before anything is sent (`Parameters`).
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NoReturn

from fastapi import APIRouter
from pydantic import BaseModel

from gateway.edge.access import Access
from gateway.edge.forwarding import PATH_PARAMETER, CompiledForward, Parameters, QueryParameter
from gateway.openapi import JSON, DocumentedBody, operation_docs
from gateway.settings import Quota
from shared.contract import Plan, ResourceIdPath
from shared.deprecation import Deprecation
from shared.errors import PorticoError
from shared.pagination import DEFAULT_LIMIT, CursorQuery, LimitQuery, Page

HttpMethod = Literal["GET", "POST", "PUT", "PATCH", "DELETE"]
# Methods whose requests carry a body the service reads.
BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})

# The query parameters of a list; the service validates them again.
PAGE_QUERY: Mapping[str, QueryParameter] = {"limit": (LimitQuery, DEFAULT_LIMIT), "cursor": (CursorQuery, None)}


@dataclass(frozen=True)
class Forward:
    """One public route answered by the service at the same path (below the router's prefixes)."""

    method: HttpMethod
    path: str
    access: Access
    name: str
    summary: str
    status_code: int = 200
    # What the reference says of the route beyond its summary (Markdown): what it does, what to send,
    # the errors a client should expect and handle.
    description: str = ""
    # Query parameters shown in the reference and validated before the request is sent. A list (a
    # `Page` answer) takes `limit` and `cursor`: PAGE_QUERY when the row names no query of its own.
    query: Mapping[str, QueryParameter] = field(default_factory=dict)
    # The request body: the service's model, shown in the reference and validated by the service.
    body: type[BaseModel] | None = None
    body_media_type: str = JSON
    body_required: bool = True
    # The success answer's model (`Page[...]` for a list); None for an answer without a body.
    answer: type[BaseModel] | None = None
    # The errors the service answers this route with (the edge's own are added by the reference).
    errors: Sequence[type[PorticoError]] = ()
    # Statuses of the service's answer that count as a failed authentication of the client address
    # (a wrong password, an email already taken).
    failure_statuses: frozenset[int] = frozenset()
    # When the service answers this status, this gateway process forgets the API key named by the
    # `key_id` path parameter at once (a revocation or rotation); others follow within the key
    # cache's TTL.
    forget_key_on: int | None = None
    # The answer holds a secret (a token, a new API key, a webhook secret): `Cache-Control: no-store`
    # whatever the service said, and the idempotency store never keeps its body.
    secret: bool = False
    # A quota of the route's own, counted on top of the caller's plan (or address) quota.
    rate_limit: Quota | None = None
    # A retired route: `deprecated` in OpenAPI, and the deprecation headers on every answer.
    deprecation: Deprecation | None = None

    def __post_init__(self) -> None:
        if self.answer is None or not issubclass(self.answer, Page):
            return
        if not self.query:
            object.__setattr__(self, "query", PAGE_QUERY)
        elif not PAGE_QUERY.keys() <= self.query.keys():
            raise ValueError(f"{self.method} {self.path} answers a page: its query must hold {', '.join(PAGE_QUERY)}")


def _documentation_only(row: Forward) -> Any:
    """The endpoint of a row's FastAPI route: a signature for the reference (path ids, documented
    query parameters). The edge answers the route, so this never runs."""

    async def endpoint(**_: Any) -> NoReturn:
        raise RuntimeError(f"{row.method} {row.path} is answered by the edge, not by FastAPI")

    keyword = inspect.Parameter.KEYWORD_ONLY
    parameters = [
        *(inspect.Parameter(name, keyword, annotation=ResourceIdPath) for name in PATH_PARAMETER.findall(row.path)),
        *(
            inspect.Parameter(name, keyword, annotation=annotation, default=default)
            for name, (annotation, default) in row.query.items()
        ),
    ]
    endpoint.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]  # read by FastAPI
    return endpoint


class ForwardRouter:
    """One service's forwarded routes under `prefix` (the service's own paths under `upstream_prefix`).

    `errors`: what every route of the router may also answer; `plans`/`feature`: a plan gate on every
    route (402 before anything else is checked, e.g. webhooks, a paid feature)."""

    def __init__(
        self,
        service: str,
        *,
        prefix: str = "",
        tags: Sequence[str] = (),
        upstream_prefix: str = "",
        errors: Sequence[type[PorticoError]] = (),
        plans: tuple[Plan, ...] = (),
        feature: str = "",
    ) -> None:
        self.service = service
        self.prefix = prefix
        self.upstream_prefix = upstream_prefix
        self.errors = tuple(errors)
        self.plans = plans
        self.feature = feature
        # The documentation-only routes, included in the app for its OpenAPI document.
        self.docs = APIRouter(prefix=prefix, tags=list(tags))
        self.compiled: list[CompiledForward] = []
        self.rows: list[Forward] = []
        self.documented_bodies: list[DocumentedBody] = []

    def add(self, *rows: Forward) -> None:
        for row in rows:
            self._add(row)

    def __iter__(self) -> Iterator[CompiledForward]:
        return iter(self.compiled)

    def _add(self, row: Forward) -> None:
        self.rows.append(row)
        access = row.access
        if self.plans:
            access = Access(access.anonymous, access.scope, self.plans, self.feature, access.api_key)
        path_names = PATH_PARAMETER.findall(row.path)
        self.compiled.append(
            CompiledForward(
                method=row.method,
                path=self.prefix + row.path,
                name=row.name,
                service=self.service,
                upstream=self.upstream_prefix + row.path,
                access=access,
                parameters=Parameters(path_names, row.query) if path_names or row.query else None,
                reads_body=row.method in BODY_METHODS,
                failure_statuses=row.failure_statuses,
                forget_key_on=row.forget_key_on,
                secret=row.secret,
                rate_limit=row.rate_limit,
                deprecation=row.deprecation,
            )
        )
        body = DocumentedBody(row.body, row.body_media_type, row.body_required) if row.body is not None else None
        if body is not None:
            self.documented_bodies.append(body)
        docs = operation_docs(
            row.method,
            status_code=row.status_code,
            credentials=access.credentials,
            body=body,
            errors=[*row.errors, *self.errors],
            answer=row.answer,
        )
        description = row.description
        if row.deprecation is not None:
            description = f"{description}\n\n{row.deprecation.note()}".strip()
        self.docs.add_api_route(
            row.path,
            _documentation_only(row),
            methods=[row.method],
            name=row.name,
            # The name is the operation's id, so a generated client's functions are named after it.
            operation_id=row.name,
            summary=row.summary,
            status_code=row.status_code,
            response_model=row.answer,
            **docs,
            deprecated=row.deprecation is not None or None,
            description=description or None,
        )


def compiled_routes(routers: Iterable[ForwardRouter]) -> list[CompiledForward]:
    return [route for router in routers for route in router]
