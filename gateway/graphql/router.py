"""`POST /graphql`: the schema of `schema.py` behind the same edge as REST (authentication, rate
limits and idempotency run before it), with the token, depth, alias and cost bounds of the settings."""

from __future__ import annotations

import functools
from collections.abc import Callable

import strawberry
from fastapi import APIRouter, Request
from strawberry.extensions import (
    DisableIntrospection,
    MaxAliasesLimiter,
    MaxTokensLimiter,
    QueryDepthLimiter,
    SchemaExtension,
)
from strawberry.fastapi import GraphQLRouter

from gateway.deps import Principal, UpstreamsDep
from gateway.graphql.context import GraphQLContext
from gateway.graphql.limits import QueryCostLimiter
from gateway.graphql.schema import Mutation, Query
from gateway.settings import GatewaySettings
from shared.request_id import request_id_of

PATH = "/graphql"


def create_schema(settings: GatewaySettings) -> strawberry.Schema:
    # Factories: strawberry builds each extension anew for every operation.
    extensions: list[type[SchemaExtension] | Callable[[], SchemaExtension]] = [
        # The parser stops at this many tokens: a document's size is bounded before it is read.
        functools.partial(MaxTokensLimiter, max_token_count=settings.graphql_max_tokens),
        # Before validation: the depth and alias limits then only ever walk affordable documents.
        functools.partial(QueryCostLimiter, max_cost=settings.graphql_max_cost),
        functools.partial(QueryDepthLimiter, max_depth=settings.graphql_max_depth),
        functools.partial(MaxAliasesLimiter, max_alias_count=settings.graphql_max_aliases),
    ]
    if not settings.docs_enabled:
        # As OpenAPI is off in production, so is the schema's introspection.
        extensions.append(DisableIntrospection)
    return strawberry.Schema(query=Query, mutation=Mutation, extensions=extensions)


async def graphql_context(request: Request, identity: Principal, upstreams: UpstreamsDep) -> GraphQLContext:
    """Who asks (anonymous callers are refused with 401, as on REST) and the services to ask."""
    return GraphQLContext(identity=identity, upstreams=upstreams, request_id=request_id_of(request.scope))


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
