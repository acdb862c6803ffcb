"""What the gateway's OpenAPI document says beyond what FastAPI derives from the routes.

- security schemes: a bearer access token (JWT) or an `X-API-Key`, named per operation;
- the request headers the edge reads (`Idempotency-Key`) and the response headers it adds (rate-limit
  headers, `X-Request-ID`, `Idempotent-Replayed`, `Retry-After`);
- every error as `application/problem+json`, one response per status listing its `error_code`
  values (`x-error-codes`) with an example body for each;
- request bodies the gateway documents but does not parse (it forwards the bytes; the service that
  owns the schema validates them): `documented_body` names the service's pydantic model, and
  `add_components` puts its JSON schema in `components.schemas`.

`operation_docs` builds the `responses` and `openapi_extra` of one route from what it is (its method,
who may call it, its body and the errors its service answers). `Forward` rows use it through
`add_forwards`; a hand-written route passes its result to `add_api_route` the same way.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fastapi.routing import APIRoute
from pydantic import BaseModel, TypeAdapter
from starlette.routing import BaseRoute

from gateway.edge.access import Credentials
from gateway.edge.authfailures import TooManyAuthFailures
from gateway.edge.credentials import AmbiguousCredentials, InvalidApiKey, InvalidToken, TenantMismatch
from gateway.edge.store import EdgeStoreUnavailable
from shared.contract import (
    IDEMPOTENCY_HEADER,
    IDEMPOTENCY_KEY_PATTERN,
    IDEMPOTENT_METHODS,
    AuthenticationRequired,
    IdempotencyKeyInUse,
    IdempotencyKeyReused,
    IdempotentResponseNotStored,
    InsufficientScope,
    InvalidIdempotencyKey,
)
from shared.errors import (
    PROBLEM_BASE,
    PROBLEM_JSON,
    CircuitOpen,
    DownstreamBadResponse,
    DownstreamTimeout,
    DownstreamUnavailable,
    MalformedBody,
    PayloadTooLarge,
    PorticoError,
    TooManyRequests,
    ValidationFailed,
)
from shared.pagination import InvalidCursor

JSON = "application/json"
FORM = "application/x-www-form-urlencoded"
SCHEMAS_REF = "#/components/schemas/{model}"
PROBLEM_REF = {"$ref": SCHEMAS_REF.format(model="Problem")}

BEARER = "bearerAuth"
API_KEY = "apiKeyAuth"
SECURITY_SCHEMES: dict[str, dict[str, Any]] = {
    BEARER: {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "JWT",
        "description": "An access token from `POST /v1/auth/token`: `Authorization: Bearer <token>`.",
    },
    API_KEY: {
        "type": "apiKey",
        "in": "header",
        "name": "X-API-Key",
        "description": "An API key from `POST /v1/api-keys` (`sk_...`). Send one credential, not both.",
    },
}


def _header(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "schema": schema}


INTEGER = {"type": "integer", "minimum": 0}
STRING = {"type": "string"}
HEADERS: dict[str, dict[str, Any]] = {
    "X-Request-ID": _header("The request's id (the client's own `X-Request-ID` when it sent a valid one).", STRING),
    "RateLimit-Policy": _header(
        'The quotas this request counts against, e.g. `"plan-pro";q=1000;w=60` (draft-ietf-httpapi-ratelimit-headers).',
        STRING,
    ),
    "RateLimit": _header(
        'What is left of each quota, e.g. `"plan-pro";r=999;t=42` (r: remaining, t: seconds).', STRING
    ),
    "X-RateLimit-Limit": _header("The tightest quota's limit.", INTEGER),
    "X-RateLimit-Remaining": _header("Requests left in the tightest quota's window.", INTEGER),
    "X-RateLimit-Reset": _header("Seconds until the tightest quota's window resets.", INTEGER),
    "Retry-After": _header("Seconds to wait before trying again.", INTEGER),
    "Idempotent-Replayed": _header(
        "`true` when this is the stored answer to an earlier request with the same `Idempotency-Key`.",
        {"type": "string", "enum": ["true"]},
    ),
    "WWW-Authenticate": _header("The credentials the route accepts (`Bearer` or `ApiKey`).", STRING),
    "ETag": _header("A weak tag of the answer; send it back in `If-None-Match` to get 304 if unchanged.", STRING),
    "Cache-Control": _header(
        "`private, no-cache` for a caller's data; `no-store` for an answer that holds a secret.", STRING
    ),
}
RATE_LIMIT_HEADERS = (
    "RateLimit-Policy",
    "RateLimit",
    "X-RateLimit-Limit",
    "X-RateLimit-Remaining",
    "X-RateLimit-Reset",
)


def _headers(*names: str) -> dict[str, Any]:
    return {name: {"$ref": f"#/components/headers/{name}"} for name in names}


IDEMPOTENCY_KEY_PARAMETER: dict[str, Any] = {
    "name": IDEMPOTENCY_HEADER,
    "in": "header",
    "required": False,
    "description": (
        "Makes the request safe to retry: a repeat with the same key (and the same body) gets the first "
        "answer again, with `Idempotent-Replayed: true`, rather than doing the work twice. The key is the "
        "caller's own; 1 to 255 visible ASCII characters, e.g. a UUID."
    ),
    "schema": {"type": "string", "pattern": IDEMPOTENCY_KEY_PATTERN, "maxLength": 255},
    "example": "5f0c1c1e-4f5a-4c52-9d49-3c1f6b1a2e7d",
}

IF_NONE_MATCH_PARAMETER: dict[str, Any] = {
    "name": "If-None-Match",
    "in": "header",
    "required": False,
    "description": "The `ETag` of an answer already held: 304 without a body when it still matches.",
    "schema": {"type": "string"},
}

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

# What a caller can get back from the edge, whatever the route: rate limiting and failing services.
EDGE_ERRORS: tuple[type[PorticoError], ...] = (
    ValidationFailed,
    TooManyRequests,
    TooManyAuthFailures,
    DownstreamBadResponse,
    DownstreamUnavailable,
    # Any call to a service may find its circuit open.
    CircuitOpen,
    EdgeStoreUnavailable,
    DownstreamTimeout,
)
# For routes that need credentials.
CREDENTIAL_ERRORS: tuple[type[PorticoError], ...] = (
    AmbiguousCredentials,
    AuthenticationRequired,
    InvalidToken,
    InvalidApiKey,
    InsufficientScope,
    TenantMismatch,
)
# For authenticated writes, which the idempotency stage serves.
IDEMPOTENCY_ERRORS: tuple[type[PorticoError], ...] = (
    InvalidIdempotencyKey,
    IdempotencyKeyInUse,
    IdempotentResponseNotStored,
    IdempotencyKeyReused,
)
BODY_ERRORS: tuple[type[PorticoError], ...] = (MalformedBody, PayloadTooLarge)


def problem_example(error: type[PorticoError]) -> dict[str, Any]:
    body: dict[str, Any] = {
        "type": PROBLEM_BASE + error.slug,
        "title": error.title,
        "status": error.status_code,
        "detail": f"{error.title}.",
        "error_code": error.error_code,
        "request_id": EXAMPLE_REQUEST_ID,
        "trace_id": EXAMPLE_TRACE_ID,
    }
    if error.error_code in _EXAMPLE_FIELD_ERRORS:
        body["errors"] = _EXAMPLE_FIELD_ERRORS[error.error_code]
    return body


def problem_responses(errors: Iterable[type[PorticoError]]) -> dict[int | str, dict[str, Any]]:
    """One problem+json response per status among `errors`, naming each `error_code` it may carry."""
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
                        code: {"summary": error.title, "value": problem_example(error)} for code, error in codes.items()
                    },
                }
            },
        }
        if status == 401:
            response["headers"] = _headers("WWW-Authenticate", "X-Request-ID")
        elif status == 429:
            response["headers"] = _headers("Retry-After", *RATE_LIMIT_HEADERS, "X-Request-ID")
        else:
            response["headers"] = _headers("X-Request-ID")
        responses[status] = response
    return responses


@dataclass(frozen=True)
class DocumentedBody:
    """A request body shown in the reference but forwarded as bytes: `model` is the owning service's."""

    model: type[BaseModel]
    media_type: str = JSON
    required: bool = True

    def request_body(self) -> dict[str, Any]:
        return {
            "required": self.required,
            "content": {self.media_type: {"schema": {"$ref": SCHEMAS_REF.format(model=self.model.__name__)}}},
        }


def operation_docs(
    method: str,
    *,
    status_code: int,
    credentials: Credentials,
    body: DocumentedBody | None = None,
    errors: Sequence[type[PorticoError]] = (),
    paged: bool = False,
    parses_body: bool = False,
    conditional: bool | None = None,
) -> tuple[dict[int | str, dict[str, Any]], dict[str, Any]]:
    """The `responses` and `openapi_extra` of one route. `credentials`: "none" (sign-up, login),
    "any" (a token or an API key) or "token" (a user's token only); `body`: a body the route
    forwards without parsing; `parses_body`: the route has a body parameter of its own (which
    FastAPI documents); `paged`: a list with `cursor`; `conditional`: answers carry an ETag and
    `If-None-Match` may get 304 (every GET unless told otherwise, e.g. for a stream)."""
    all_errors = [*errors, *EDGE_ERRORS]
    extra: dict[str, Any] = {}
    if credentials == "none":
        extra["security"] = []
    else:
        all_errors += CREDENTIAL_ERRORS
        extra["security"] = [{BEARER: []}] + ([{API_KEY: []}] if credentials == "any" else [])
    idempotent = method in IDEMPOTENT_METHODS and credentials != "none"
    if idempotent:
        all_errors += IDEMPOTENCY_ERRORS
        extra["parameters"] = [IDEMPOTENCY_KEY_PARAMETER]
    if conditional is None:
        conditional = method == "GET"
    if conditional:
        extra["parameters"] = [IF_NONE_MATCH_PARAMETER]
    if body is not None:
        extra["requestBody"] = body.request_body()
    if body is not None or parses_body:
        all_errors += BODY_ERRORS
    if paged:
        all_errors.append(InvalidCursor)
    success_headers = ["X-Request-ID", *RATE_LIMIT_HEADERS, "Cache-Control"]
    success_headers += ["Idempotent-Replayed"] if idempotent else []
    success_headers += ["ETag"] if conditional else []
    responses: dict[int | str, dict[str, Any]] = {status_code: {"headers": _headers(*success_headers)}}
    if conditional:
        responses[304] = {
            "description": "Not Modified: the `If-None-Match` tag still matches; no body.",
            "headers": _headers("ETag", "Cache-Control", "X-Request-ID"),
        }
    responses.update(problem_responses(all_errors))
    return responses, extra


def documented_bodies(routes: Iterable[BaseRoute]) -> list[type[BaseModel]]:
    """The models of the bodies routes document without parsing (`documented_body` on the endpoint)."""
    models: list[type[BaseModel]] = []
    for route in routes:
        body = getattr(route.endpoint, "documented_body", None) if isinstance(route, APIRoute) else None
        if isinstance(body, DocumentedBody) and body.model not in models:
            models.append(body.model)
    return models


def add_components(schema: dict[str, Any], bodies: Sequence[type[BaseModel]]) -> None:
    """Security schemes, headers, and the JSON schemas of `bodies` (with the models they use) in
    `components`. A name FastAPI already gave a different schema is an error, not a silent overwrite."""
    components = schema.setdefault("components", {})
    components["securitySchemes"] = SECURITY_SCHEMES
    components["headers"] = HEADERS
    schemas: dict[str, Any] = components.setdefault("schemas", {})
    for model in bodies:
        generated = TypeAdapter(model).json_schema(ref_template=SCHEMAS_REF, mode="validation")
        definitions: Mapping[str, Any] = {**generated.pop("$defs", {}), model.__name__: generated}
        for name, definition in definitions.items():
            if schemas.setdefault(name, definition) != definition:
                raise RuntimeError(f"Two schemas are named {name} in the OpenAPI document; rename one model.")
