"""Running a forwarded route: the caller's access, the route's parameters, then the request's bytes
to the service and its answer back, through the pool's thinnest path (`ServiceClient.forward`)."""

from __future__ import annotations

from collections.abc import Mapping

from starlette.types import Scope

from gateway.edge.apikeys import ApiKeyResolver
from gateway.routes.forward import CompiledForward
from gateway.upstreams import (
    FORWARD_REQUEST_HEADERS,
    FORWARD_RESPONSE_HEADERS,
    Upstreams,
    refused_our_identity,
)
from shared.context import request_id_of
from shared.contract import ANONYMOUS, Identity
from shared.errors import DownstreamBadResponse
from shared.http import Answer


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
            headers.append(("x-request-id", request_id))
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
            raise DownstreamBadResponse(
                route.service, f"The {route.service} service refused the gateway's internal identity."
            )
        if route.forget_key_on is not None and answer.status == route.forget_key_on:
            self.api_keys.forget(params["key_id"])
        return answer
