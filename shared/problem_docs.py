"""Errors in an OpenAPI document: one `application/problem+json` response per status, listing the
`error_code` values it may carry (`x-error-codes`) with an example body for each.

The services document their routes' errors with it, and the gateway builds its own document's error
responses on it, from the same error classes: a route's specific errors are declared once, in the
owning service's `errors.py`, and used by the service's `responses=` and the gateway's `Forward` row.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from shared.errors import PROBLEM_BASE, PROBLEM_JSON, PorticoError, ValidationFailed

PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}
EXAMPLE_REQUEST_ID = "3f1d2c9e8b7a4d6c9f0e1a2b3c4d5e6f"
EXAMPLE_TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
_EXAMPLE_FIELD_ERRORS: dict[str, list[dict[str, Any]]] = {
    ValidationFailed.error_code: [
        {
            "loc": ["body", "items", "0", "quantity"],
            "field": "items.0.quantity",
            "msg": "Input should be greater than or equal to 1",
            "type": "greater_than_equal",
        }
    ],
}
# The headers of one error response, by status (none by default).
HeadersOf = Callable[[int], dict[str, Any]]


def problem_example(error: type[PorticoError], detail: str | None = None) -> dict[str, Any]:
    """An example body of `error`; `detail` is what the process would say (the title when not given)."""
    body: dict[str, Any] = {
        "type": PROBLEM_BASE + error.slug,
        "title": error.title,
        "status": error.status_code,
        "detail": detail or f"{error.title}.",
        "error_code": error.error_code,
        "request_id": EXAMPLE_REQUEST_ID,
        "trace_id": EXAMPLE_TRACE_ID,
    }
    if error.error_code in _EXAMPLE_FIELD_ERRORS:
        body["errors"] = _EXAMPLE_FIELD_ERRORS[error.error_code]
    return body


def problem_responses(
    errors: Iterable[type[PorticoError]],
    *,
    details: Mapping[str, str] | None = None,
    headers_of: HeadersOf | None = None,
) -> dict[int | str, dict[str, Any]]:
    """One problem+json response per status among `errors`, naming each `error_code` it may carry.
    `details`: the example's `detail` by error code."""
    details = details or {}
    by_status: dict[int, dict[str, type[PorticoError]]] = defaultdict(dict)
    for error in errors:
        by_status[error.status_code].setdefault(error.error_code, error)
    responses: dict[int | str, dict[str, Any]] = {}
    for status in sorted(by_status):
        codes = by_status[status]
        response: dict[str, Any] = {
            "description": "; ".join(f"`{code}`: {error.title}" for code, error in codes.items()),
            "x-error-codes": list(codes),
            "content": {
                PROBLEM_JSON: {
                    "schema": PROBLEM_REF,
                    "examples": {
                        code: {"summary": error.title, "value": problem_example(error, details.get(code))}
                        for code, error in codes.items()
                    },
                }
            },
        }
        if headers_of is not None:
            response["headers"] = headers_of(status)
        responses[status] = response
    return responses


def route_responses(errors: Iterable[type[PorticoError]]) -> dict[int | str, dict[str, Any]]:
    """A service route's error responses: its own `errors` and 422 (a parameter or body refused)."""
    return problem_responses([*errors, ValidationFailed])


def live_docs() -> dict[str, Any]:
    """What the reference says of `/health/live`."""
    return {
        "description": "200 while the process serves requests; checks nothing else.",
        "responses": {200: {"content": {"application/json": {"example": {"status": "ok"}}}}},
    }


def ready_docs(checks: list[str], not_ready: type[PorticoError]) -> dict[str, Any]:
    """What the reference says of `/health/ready`, which runs `checks` and answers `not_ready` when one fails."""
    example = {"status": "ok", "checks": dict.fromkeys(checks, "ok")}
    return {
        "description": (
            f"200 when every dependency answers ({', '.join(checks) or 'none'}); 503 `{not_ready.error_code}` "
            "naming those that fail (the reasons go to the log)."
        ),
        "responses": {
            200: {"content": {"application/json": {"example": example}}},
            **problem_responses(
                [not_ready], details={not_ready.error_code: f"Failing dependencies: {checks[0]}."} if checks else None
            ),
        },
    }
