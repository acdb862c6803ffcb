"""`POST /graphql`: the schema of `schema.py` behind the same edge as REST (authentication, rate
limits and idempotency run before it), with the bounds of `limits.py` and the error handling of
`errors.py`."""

from __future__ import annotations

import functools
from collections.abc import Callable

from fastapi import APIRouter, Request
from strawberry.extensions import DisableIntrospection, MaxTokensLimiter, SchemaExtension
from strawberry.fastapi import GraphQLRouter

from gateway.deps import Principal, UpstreamsDep
from gateway.graphql.context import GraphQLContext
from gateway.graphql.errors import PorticoSchema
from gateway.graphql.limits import BoundedValidation, Bounds, paged_fields
from gateway.graphql.schema import Mutation, Query
from gateway.settings import GatewaySettings
from shared.context import request_id_of
from shared.contract import IDEMPOTENCY_HEADER, checked_idempotency_key

PATH = "/graphql"


def create_schema(settings: GatewaySettings) -> PorticoSchema:
    # Filled from the schema once it is built: which fields take `limit`, and their default page.
    pages: dict[str, int] = {}
    bounds = Bounds(
        max_cost=settings.graphql_max_cost,
        max_depth=settings.graphql_max_depth,
        max_aliases=settings.graphql_max_aliases,
        max_repeats=settings.graphql_max_field_repeats,
        pages=pages,
    )
    # Factories: strawberry builds each extension anew for every operation.
    extensions: list[type[SchemaExtension] | Callable[[], SchemaExtension]] = [
        # The parser stops at this many tokens: a document's size is bounded before it is read.
        functools.partial(MaxTokensLimiter, max_token_count=settings.graphql_max_tokens),
        # Cost, depth, aliases and repeats, before validation; then validation, with a budget.
        functools.partial(BoundedValidation, bounds, hide_suggestions=not settings.docs_enabled),
    ]
    if not settings.docs_enabled:
        # As OpenAPI is off in production, so is the schema's introspection.
        extensions.append(DisableIntrospection)
    schema = PorticoSchema(
        query=Query, mutation=Mutation, extensions=extensions, hide_suggestions=not settings.docs_enabled
    )
    pages.update(paged_fields(schema._schema))
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


def graphql_router(settings: GatewaySettings) -> APIRouter:
    return GraphQLRouter[GraphQLContext, None](
        create_schema(settings),
        path=PATH,
        # GraphiQL is served by `graphiql.py`, with its assets from the gateway itself.
        graphql_ide=None,
        allow_queries_via_get=False,
        # No subscriptions: real-time events are /v1/events and /v1/ws.
        subscription_protocols=(),
        context_getter=graphql_context,
        tags=["graphql"],
    )
