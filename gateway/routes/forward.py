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
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NoReturn
from urllib.parse import parse_qsl

from fastapi import APIRouter
from pydantic import BaseModel, ValidationError, create_model

from gateway.edge.credentials import API_KEY_CHALLENGE
from gateway.openapi import JSON, Credentials, DocumentedBody, operation_docs
from gateway.settings import Quota
from shared.contract import PLANS, AuthenticationRequired, Identity, Plan, ResourceIdPath
from shared.deprecation import Deprecation
from shared.errors import PaymentRequired, PorticoError, validation_failed
from shared.pagination import DEFAULT_LIMIT, CursorQuery, LimitQuery

HttpMethod = Literal["GET", "POST", "PUT", "PATCH", "DELETE"]
PATH_PARAMETER = re.compile(r"{(\w+)}")
# Methods whose requests carry a body the service reads.
BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})

# A query parameter shown in the reference and validated at the edge: (annotation, default).
QueryParameter = tuple[Any, Any]
# The query parameters of a list; the service validates them again.
PAGE_QUERY: Mapping[str, QueryParameter] = {"limit": (LimitQuery, DEFAULT_LIMIT), "cursor": (CursorQuery, None)}


BEARER_CHALLENGE = 'Bearer realm="portico"'
CHALLENGES = f"{BEARER_CHALLENGE}, {API_KEY_CHALLENGE}"


@dataclass(frozen=True, slots=True)
class Access:
    """Who may call a route, checked in this order: credentials (401), plan (402), scope (403).

    `anonymous`: the route is for callers without credentials (sign-up, login). It is sent to the
    service as nobody and credentials sent anyway are not looked at: the caller is its client address
    (for the authentication-failure limit and the rate limits). `api_key`: whether an API key may call
    it, as the reference says (keys are managed with a user's token; the users service refuses a key).
    """

    anonymous: bool = False
    scope: str | None = None
    plans: tuple[Plan, ...] = ()
    # The feature the plans unlock, named in the 402.
    feature: str = ""
    api_key: bool = True

    def __post_init__(self) -> None:
        unknown = set(self.plans) - set(PLANS)
        if unknown:
            raise ValueError(f"unknown plans {sorted(unknown)}")

    @property
    def credentials(self) -> Credentials:
        """What the reference says the route takes."""
        return "none" if self.anonymous else "any" if self.api_key else "token"

    def check(self, identity: Identity) -> None:
        """Raises 401 for a route that needs a caller and has none, 402 for a plan that does not
        unlock it, 403 for a missing scope."""
        if self.anonymous:
            return
        if identity.is_anonymous:
            # Every scheme the route takes, one challenge each (RFC 9110 section 11.6.1).
            challenge = CHALLENGES if self.api_key else BEARER_CHALLENGE
            raise AuthenticationRequired("This route needs credentials.", challenge=challenge)
        if self.plans and identity.plan not in self.plans:
            plans = tuple(plan for plan in PLANS if plan in self.plans)
            raise PaymentRequired(
                f"{self.feature} needs the {' or '.join(plans)} plan; this tenant is on {identity.plan}.",
                extra={"required_plans": list(plans), "current_plan": identity.plan},
            )
        if self.scope is not None:
            identity.require_scope(self.scope)


ANONYMOUS_ACCESS = Access(anonymous=True)
# Any caller with credentials, whatever its scopes.
PRINCIPAL = Access()
# A user's token only (never an API key), whatever its scopes.
USER_TOKEN = Access(api_key=False)


def readers_and_writers(domain: str) -> tuple[Access, Access]:
    """The access of a domain's routes: those that read need `<domain>:read`, those that change
    need `<domain>:write`."""
    return Access(scope=f"{domain}:read"), Access(scope=f"{domain}:write")


@dataclass(frozen=True)
class Forward:
    """One public route answered by the service at the same path (below the router's prefixes)."""

    method: HttpMethod
    path: str
    access: Access
    name: str
    summary: str
    status_code: int = 200
    # Query parameters shown in the reference and validated before the request is sent.
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


class Parameters:
    """The path parameters (ids) and documented query parameters of a route, validated as FastAPI
    would (the same pydantic rules and the same error locations), without a dependency graph."""

    __slots__ = ("model", "query_names")

    def __init__(self, path_names: Sequence[str], query: Mapping[str, QueryParameter]) -> None:
        fields: dict[str, Any] = dict.fromkeys(path_names, (ResourceIdPath, ...))
        fields.update(query)
        self.model: type[BaseModel] = create_model("Parameters", **fields)
        self.query_names = frozenset(query)

    def check(self, path_params: Mapping[str, str], query_string: bytes) -> None:
        """Raises 422 naming every parameter that breaks its rule."""
        values: dict[str, Any] = dict(path_params)
        if self.query_names and query_string:
            # As Starlette reads a query: latin-1, blank values kept, the last of repeated names wins.
            for name, value in parse_qsl(query_string.decode("latin-1"), keep_blank_values=True):
                if name in self.query_names:
                    values[name] = value
        try:
            self.model.model_validate(values)
        except ValidationError as exc:
            self._refuse(exc, path_params)

    @staticmethod
    def _refuse(exc: ValidationError, path_params: Mapping[str, str]) -> NoReturn:
        errors = [
            {**error, "loc": ("path" if error["loc"][0] in path_params else "query", *error["loc"])}
            for error in exc.errors(include_url=False)
        ]
        raise validation_failed(errors) from None


@dataclass(frozen=True, slots=True, eq=False)
class CompiledForward:
    """A row as the edge runs it."""

    method: str
    # The public route template: what metrics, spans and access lines name the route by.
    path: str
    name: str
    service: str
    # The service's path, with the route's path parameters in braces.
    upstream: str
    access: Access
    parameters: Parameters | None
    reads_body: bool
    failure_statuses: frozenset[int]
    forget_key_on: int | None
    secret: bool
    rate_limit: Quota | None
    deprecation: Deprecation | None
    # The service's path as spans name it, ids as `{id}`, and the client span's name:
    # `<METHOD> <service> <path template>`.
    upstream_template: str
    span_name: str

    def upstream_path(self, path_params: Mapping[str, str]) -> str:
        # Path parameters were validated as ids, so they are safe to put in the service's path.
        return self.upstream.format_map(path_params) if path_params else self.upstream


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
        self.documented_bodies: list[DocumentedBody] = []

    def add(self, *rows: Forward) -> None:
        for row in rows:
            self._add(row)

    def __iter__(self) -> Iterator[CompiledForward]:
        return iter(self.compiled)

    def _add(self, row: Forward) -> None:
        access = row.access
        if self.plans:
            access = Access(access.anonymous, access.scope, self.plans, self.feature, access.api_key)
        path_names = PATH_PARAMETER.findall(row.path)
        upstream = self.upstream_prefix + row.path
        upstream_template = PATH_PARAMETER.sub("{id}", upstream)
        self.compiled.append(
            CompiledForward(
                method=row.method,
                path=self.prefix + row.path,
                name=row.name,
                service=self.service,
                upstream=upstream,
                access=access,
                parameters=Parameters(path_names, row.query) if path_names or row.query else None,
                reads_body=row.method in BODY_METHODS,
                failure_statuses=row.failure_statuses,
                forget_key_on=row.forget_key_on,
                secret=row.secret,
                rate_limit=row.rate_limit,
                deprecation=row.deprecation,
                upstream_template=upstream_template,
                span_name=f"{row.method} {self.service} {upstream_template}",
            )
        )
        body = DocumentedBody(row.body, row.body_media_type, row.body_required) if row.body is not None else None
        if body is not None:
            self.documented_bodies.append(body)
        responses, openapi_extra = operation_docs(
            row.method,
            status_code=row.status_code,
            credentials=access.credentials,
            body=body,
            errors=[*row.errors, *self.errors],
            paged="cursor" in row.query,
        )
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
            responses=responses,
            openapi_extra=openapi_extra,
            deprecated=row.deprecation is not None or None,
            description=row.deprecation.note() if row.deprecation is not None else None,
        )


def compiled_routes(routers: Iterable[ForwardRouter]) -> list[CompiledForward]:
    return [route for router in routers for route in router]
