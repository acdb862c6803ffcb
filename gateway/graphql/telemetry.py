"""The GraphQL operation on the request's server span: `graphql.operation.name` and
`graphql.operation.type` (OpenTelemetry's GraphQL conventions), so a trace says which operation a
`POST /graphql` ran, not only its path."""

from __future__ import annotations

from collections.abc import Iterator

from strawberry.extensions import SchemaExtension
from strawberry.fastapi import BaseContext

from shared.context import span_of

OPERATION_NAME = "graphql.operation.name"
OPERATION_TYPE = "graphql.operation.type"


class OperationOnSpan(SchemaExtension):
    def on_parse(self) -> Iterator[None]:
        yield
        context = self.execution_context
        request = context.context.request if isinstance(context.context, BaseContext) else None
        if context.graphql_document is None or request is None:
            return
        try:
            operation_type = context.operation_type
        except RuntimeError:
            # No operation to run (none by that name, or several and none named): GraphQL says so.
            return
        span = span_of(request.scope)
        span.set_attribute(OPERATION_TYPE, operation_type.value)
        if context.operation_name:
            span.set_attribute(OPERATION_NAME, context.operation_name)
