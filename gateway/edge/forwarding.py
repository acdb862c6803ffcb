"""Running a forwarded route: the caller's access, the route's parameters, then the request's bytes
to the service and its answer back, through the pool's thinnest path (`ServiceClient.forward`).

The routes are declared as rows (`gateway/routes/forward.py`) and compiled into `CompiledForward`s,
which the edge matches (`gateway/edge/router.py`) and runs here."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn
from urllib.parse import parse_qsl

from pydantic import BaseModel, ValidationError, create_model
from starlette.types import Scope

from gateway.edge.access import Access
from gateway.edge.apikeys import ApiKeyResolver
from gateway.settings import Quota
from gateway.upstreams import (
    FORWARD_REQUEST_HEADERS,
    FORWARD_RESPONSE_HEADERS,
    Upstreams,
    refused_our_identity,
)
from shared.contract import ANONYMOUS, Identity, ResourceIdPath
from shared.deprecation import Deprecation
from shared.errors import UpstreamBadResponse, validation_failed
from shared.http import Answer
from shared.request_id import REQUEST_ID_HEADER_NAME, request_id_of

# A query parameter shown in the reference and validated at the edge: (annotation, default).
QueryParameter = tuple[Any, Any]
# A path parameter of a route template: `{name}`.
PATH_PARAMETER = re.compile(r"{(\w+)}")


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
    # `<METHOD> <service> <path template>`; both follow from the fields above.
    upstream_template: str = field(init=False)
    span_name: str = field(init=False)

    def __post_init__(self) -> None:
        template = PATH_PARAMETER.sub("{id}", self.upstream)
        object.__setattr__(self, "upstream_template", template)
        object.__setattr__(self, "span_name", f"{self.method} {self.service} {template}")

    def upstream_path(self, path_params: Mapping[str, str]) -> str:
        # Path parameters were validated as ids, so they are safe to put in the service's path.
        return self.upstream.format_map(path_params) if path_params else self.upstream


class Forwarder:
    def __init__(self, upstreams: Upstreams, api_keys: ApiKeyResolver) -> None:
        self.upstreams = upstreams
        self.api_keys = api_keys

    async def run(
        self,
        route: CompiledForward,
        scope: Scope,
        identity: Identity,
        params: Mapping[str, str],
        body: bytes | None,
    ) -> Answer:
        """The service's answer to the request (the caller's access and the route's parameters checked
        first, as FastAPI would: 401, 402, 403, then 422)."""
        route.access.check(identity)
        if route.parameters is not None:
            route.parameters.check(params, scope["query_string"])
        # Raw bytes, as the client sent them, latin-1 both ways: any byte passes unchanged.
        headers = [
            (name.decode("latin-1"), value.decode("latin-1"))
            for name, value in scope["headers"]
            if name in FORWARD_REQUEST_HEADERS and value
        ]
        request_id = request_id_of(scope)
        if request_id:
            headers.append((REQUEST_ID_HEADER_NAME, request_id))
        service = self.upstreams[route.service]
        answer = await service.forward(
            route.method,
            route.upstream_path(params),
            identity=ANONYMOUS if route.access.anonymous else identity,
            headers=headers,
            body=body or None,
            query=scope["query_string"],
            span_name=route.span_name,
            template=route.upstream_template,
            keep=FORWARD_RESPONSE_HEADERS,
        )
        if refused_our_identity(answer.status, answer.header(b"www-authenticate")):
            raise UpstreamBadResponse(
                route.service, f"The {route.service} service refused the gateway's internal identity."
            )
        if route.forget_key_on is not None and answer.status == route.forget_key_on:
            self.api_keys.forget(params["key_id"])
        return answer
