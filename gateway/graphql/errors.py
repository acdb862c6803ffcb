"""What becomes of each error of a GraphQL answer: its `extensions.code`, its log line, and what the
caller reads of it.

- The document could not be read or is not valid (a syntax error, an unknown field, a bad variable):
  `GRAPHQL_PARSE_FAILED` / `GRAPHQL_VALIDATION_FAILED` (`QUERY_TOO_COMPLEX` when validation gave
  up), logged at INFO without a traceback: the caller's mistake, not the gateway's.
- A field answered an error on purpose (a service's problem, a missing scope, a bound of
  `limits.py`), or raised a `PorticoError` (a service unreachable or too slow, the request's deadline
  passed before a call), which REST would answer as a problem, with its detail and `status`: its
  own code, logged at INFO, or WARNING for a status of 500 or more (a service failed, the deadline
  passed), as REST logs those, without a traceback.
- Anything else raised while resolving is a fault of the gateway: logged at ERROR with its
  traceback, and answered as `INTERNAL_ERROR` "An internal error occurred.", as REST answers a 500.

Where introspection is off (production), no message suggests names ("Did you mean 'me'?"): those
would reveal the schema that introspection hides. graphql-core leaves them out when asked
(`hide_suggestions`): validation is asked in `limits.BoundedValidation`, the coercion of variables
while executing through `QuietExecutionContext`.
"""

from __future__ import annotations

import logging
from typing import Any

import strawberry
from graphql import GraphQLError
from graphql.validation.validate import ValidationAbortedError
from strawberry.schema.schema import StrawberryGraphQLCoreExecutionContext
from strawberry.types import ExecutionContext

from shared.errors import INTERNAL_DETAIL, PorticoError

logger = logging.getLogger("portico.gateway.graphql")


def _where(error: GraphQLError) -> str:
    return ".".join(str(key) for key in error.path) if error.path else "-"


class QuietExecutionContext(StrawberryGraphQLCoreExecutionContext):
    """strawberry's execution, with graphql-core's `hide_suggestions` on."""

    @classmethod
    def build(cls, *args: Any, **kwargs: Any) -> Any:
        return super().build(*args, **{**kwargs, "hide_suggestions": True})


class PorticoSchema(strawberry.Schema):
    """strawberry's schema, with the error handling described above in place of its own (which logs
    every error, a mistyped field included, at ERROR with a traceback)."""

    def __init__(self, *args: Any, hide_suggestions: bool, **kwargs: Any) -> None:
        if hide_suggestions:
            kwargs["execution_context_class"] = QuietExecutionContext
        super().__init__(*args, **kwargs)

    def process_errors(self, errors: list[GraphQLError], execution_context: ExecutionContext | None = None) -> None:
        parsed = execution_context is not None and execution_context.graphql_document is not None
        for error in errors:
            _process(error, parsed=parsed)


def _process(error: GraphQLError, *, parsed: bool) -> None:
    """Codes, logs and, for a fault of the gateway, masks one error."""
    extensions = dict(error.extensions or {})
    original = error.original_error
    if isinstance(original, PorticoError):
        # An answer, not a fault: what REST answers for it (its message is already the detail).
        extensions = {"code": original.code, "status": original.status_code}
        if original.errors is not None:
            extensions["errors"] = original.errors
    code = extensions.get("code")
    if original is not None and not isinstance(original, GraphQLError | PorticoError):
        logger.error("GraphQL field %s failed", _where(error), exc_info=original)
        error.message = INTERNAL_DETAIL
        extensions = {"code": PorticoError.error_code}
    elif code is None and error.path is not None:
        # GraphQL's own complaint about what a resolver returned (a null for a non-null field).
        logger.error("GraphQL field %s failed: %s", _where(error), error.message)
        extensions["code"] = PorticoError.error_code
    elif error.path is None:
        if code is None:
            if isinstance(error, ValidationAbortedError):
                code = "QUERY_TOO_COMPLEX"
            else:
                code = "GRAPHQL_VALIDATION_FAILED" if parsed else "GRAPHQL_PARSE_FAILED"
            extensions["code"] = code
        logger.info("GraphQL document refused (%s): %s", code, error.message)
    else:
        status = extensions.get("status")
        level = logging.WARNING if isinstance(status, int) and status >= 500 else logging.INFO
        logger.log(level, "GraphQL field %s answered %s: %s", _where(error), code, error.message)
    error.extensions = extensions
