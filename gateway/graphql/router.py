"""`POST /graphql`: the schema of `schema.py` behind the same edge as REST (authentication, rate
limits and idempotency run before it), with the bounds of `limits.py` and the error handling of
`errors.py`.

Only POST is served here: GraphiQL's page is `graphiql.py`'s `GET /graphql` (where the API reference
is on), queries are not taken over GET, and there are no subscriptions (real-time events are
/v1/events and /v1/ws). Every refusal of the HTTP layer is problem+json, as on REST: a body that is
not JSON (or nests too deeply to read) is 400 MALFORMED_BODY, another content type 415, another
method 405 with an `Allow` naming what `/graphql` really serves.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from typing import Any

from cross_web import HTTPException
from fastapi import Request
from fastapi.routing import APIRoute
from starlette.routing import Route
from starlette.types import Receive, Scope, Send
from strawberry.extensions import DisableIntrospection, MaxTokensLimiter, SchemaExtension
from strawberry.fastapi import GraphQLRouter
from strawberry.types.unset import UNSET

from gateway.deps import Principal, UpstreamsDep
from gateway.graphql.context import GraphQLContext
from gateway.graphql.errors import PorticoSchema
from gateway.graphql.limits import BoundedValidation, Bounds, Shapes
from gateway.graphql.schema import Mutation, Query
from gateway.graphql.telemetry import OperationOnSpan
from gateway.openapi import operation_docs
from gateway.settings import GatewaySettings
from shared.contract import IDEMPOTENCY_HEADER, checked_idempotency_key
from shared.errors import (
    BadRequest,
    MalformedBody,
    MethodNotAllowed,
    UnsupportedMediaType,
    send_problem,
)
from shared.request_id import request_id_of
from shared.settings import settings_group

PATH = "/graphql"
JSON = "application/json"

# The operation in the OpenAPI document: a GraphQL request (GraphQL over HTTP, JSON) and its answer.
GRAPHQL_REQUEST_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["query"],
    "properties": {
        "query": {"type": "string", "minLength": 1, "description": "The GraphQL document: one query or mutation."},
        "variables": {
            "type": ["object", "null"],
            "additionalProperties": True,
            "description": "Values of the document's variables, by name.",
        },
        "operationName": {
            "type": ["string", "null"],
            "description": "Which operation of the document to run, when it holds several.",
        },
    },
}
GRAPHQL_REQUEST_EXAMPLE = {
    "query": "query Orders($first: Int!) { orders(limit: $first) { items { id status totalCents } nextCursor } }",
    "variables": {"first": 10},
    "operationName": "Orders",
}
GRAPHQL_ANSWER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "data": {"type": ["object", "null"], "additionalProperties": True},
        "errors": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["message"],
                "properties": {
                    "message": {"type": "string"},
                    "path": {"type": "array", "items": {"type": ["string", "integer"]}},
                    "locations": {"type": "array", "items": {"type": "object"}},
                    "extensions": {
                        "type": "object",
                        "additionalProperties": True,
                        "description": "`code`: the error_code a REST route would answer (e.g. `ORDER_NOT_FOUND`).",
                    },
                },
            },
        },
    },
}
GRAPHQL_ANSWER_EXAMPLE = {
    "data": {
        "orders": {
            "items": [{"id": "5b2e6f0a-3c1d-4e8f-9a7b-6c5d4e3f2a1b", "status": "confirmed", "totalCents": 3998}],
            "nextCursor": None,
        }
    }
}
GRAPHQL_DESCRIPTION = f"""Runs one GraphQL query or mutation: a JSON body (`{JSON}`) with `query`, and `variables` and
`operationName` when the document needs them. Needs credentials as REST does (a bearer token or an
`X-API-Key`, not both), counts against the same quotas, and a mutation takes an `Idempotency-Key`.

The answer is 200 with `data`, and `errors` for the fields that failed (each error's
`extensions.code` is the `error_code` REST would answer). Refusals of the request itself are
problem+json: 400 `MALFORMED_BODY` (not JSON) or `BAD_REQUEST` (no query, a batch, variables not an
object), 415 for another content type, and the edge's own (401, 429...). Queries are bounded in size,
depth, aliases and cost. Outside production the schema can be explored with GraphiQL at `GET {PATH}`."""


def create_schema(settings: GatewaySettings) -> PorticoSchema:
    # Filled from the schema once it is built: what each field answers, and how many at most.
    shapes = Shapes()
    bounds = settings_group(Bounds, settings, "graphql_", shapes=shapes)
    # Factories: strawberry builds each extension anew for every operation.
    extensions: list[type[SchemaExtension] | Callable[[], SchemaExtension]] = [
        # The parser stops at this many tokens: a document's size is bounded before it is read.
        functools.partial(MaxTokensLimiter, max_token_count=settings.graphql_max_tokens),
        OperationOnSpan,
        # Cost, depth, aliases and repeats, before validation; then validation, with a budget.
        functools.partial(BoundedValidation, bounds, hide_suggestions=not settings.docs_enabled),
    ]
    if not settings.docs_enabled:
        # As OpenAPI is off in production, so is the schema's introspection.
        extensions.append(DisableIntrospection)
    schema = PorticoSchema(
        query=Query, mutation=Mutation, extensions=extensions, hide_suggestions=not settings.docs_enabled
    )
    shapes.read(schema._schema)
    return schema


async def graphql_context(request: Request, identity: Principal, upstreams: UpstreamsDep) -> GraphQLContext:
    """Who asks (anonymous callers are refused with 401, as on REST), the services to ask, and the
    request's Idempotency-Key (400 INVALID_IDEMPOTENCY_KEY for a malformed one, as the services answer)."""
    return GraphQLContext(
        identity=identity,
        upstreams=upstreams,
        request_id=request_id_of(request.scope),
        idempotency_key=checked_idempotency_key(request.headers.get(IDEMPOTENCY_HEADER)),
    )


class MethodNotAllowedApp:
    """Answers any method no route of `/graphql` serves: 405 problem+json, `Allow` naming those that
    are. An ASGI app rather than an endpoint function, which Starlette would route for GET only."""

    def __init__(self, allowed: list[str]) -> None:
        self.allow = ", ".join(allowed)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        refusal = MethodNotAllowed(f"{scope['method']} is not served at {PATH}.", headers={"Allow": self.allow})
        await send_problem(refusal, scope, receive, send)


class GraphQLEndpoint(GraphQLRouter[GraphQLContext, None]):
    """`/graphql`'s routes. `graphiql`: the app serves GraphiQL's `GET /graphql` (`graphiql.py`,
    included where the API reference is on)."""

    def __init__(self, schema: PorticoSchema, *, graphiql: bool) -> None:
        super().__init__(
            schema,
            path=PATH,
            graphql_ide=None,
            allow_queries_via_get=False,
            subscription_protocols=(),
            context_getter=graphql_context,
            tags=["graphql"],
        )
        # strawberry also routes GET (queries, its own IDE) and WebSocket (subscriptions) here: none
        # of them is served, so none is routed, and a 405 names only what is.
        posts = [route for route in self.routes if isinstance(route, APIRoute) and route.methods == {"POST"}]
        for route in posts:
            _document(route)
        self.routes[:] = posts
        # Last, and for every method: reached only by one no route of the path takes.
        allowed = ["GET", "POST"] if graphiql else ["POST"]
        self.routes.append(Route(PATH, MethodNotAllowedApp(allowed), include_in_schema=False))

    async def run(self, request: Any, context: Any = UNSET, root_value: Any = UNSET) -> Any:
        media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
        if media_type != JSON:
            raise UnsupportedMediaType(
                f'POST {PATH} takes {JSON}: {{"query": "...", "variables": {{...}}, "operationName": "..."}}.'
            )
        try:
            return await super().run(request, context, root_value)
        except HTTPException as exc:
            # strawberry's refusals of a POST are 400s: no query, a query or variables not of the
            # right type, a batch.
            raise BadRequest(exc.reason) from None

    def decode_json(self, data: str | bytes) -> object:
        try:
            return json.loads(data)
        except RecursionError:
            raise MalformedBody("The request body nests too deeply to be read.") from None
        except ValueError:
            raise MalformedBody("The request body is not valid JSON.") from None


def _document(route: APIRoute) -> None:
    """strawberry's POST route as the reference shows it: named `graphql`, with its body and answers."""
    docs = operation_docs(
        "POST",
        status_code=200,
        credentials="any",
        parses_body=True,
        errors=[BadRequest, UnsupportedMediaType],
    )
    responses, extra = docs["responses"], docs["openapi_extra"]
    responses[200]["description"] = "The operation's result: `data`, and `errors` for the fields that failed."
    responses[200]["content"] = {JSON: {"schema": GRAPHQL_ANSWER_SCHEMA, "example": GRAPHQL_ANSWER_EXAMPLE}}
    extra["requestBody"] = {
        "required": True,
        "content": {JSON: {"schema": GRAPHQL_REQUEST_SCHEMA, "example": GRAPHQL_REQUEST_EXAMPLE}},
    }
    route.name = route.operation_id = "graphql"
    route.summary = "Run a GraphQL query or mutation"
    route.description = GRAPHQL_DESCRIPTION
    route.responses = responses
    route.openapi_extra = extra


def graphql_router(settings: GatewaySettings) -> GraphQLEndpoint:
    return GraphQLEndpoint(create_schema(settings), graphiql=settings.docs_enabled)
