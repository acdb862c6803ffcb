"""What the gateway's OpenAPI document says beyond what FastAPI derives from the routes.

- security schemes: a bearer access token (JWT) or an `X-API-Key`, named per operation;
- the request headers the edge reads (`Idempotency-Key`) and the response headers it adds (rate-limit
  headers, `X-Request-ID`, `Idempotent-Replayed`, `Retry-After`);
- every error as `application/problem+json`, one response per status listing its `error_code`
  values (`x-error-codes`) with an example body for each;
- request bodies the gateway documents but does not parse (it forwards the bytes; the service that
  owns the schema validates them): a `DocumentedBody` names the service's pydantic model (each
  `ForwardRouter` keeps those of its rows in `documented_bodies`), and `add_components` puts its
  JSON schema in `components.schemas`.

`operation_docs` builds the `responses` and `openapi_extra` of one route from what it is (its method,
who may call it, its body and the errors its service answers). `Forward` rows use it through
`ForwardRouter`; a hand-written route passes its result to `add_api_route` (or its decorator) the same
way, as keyword arguments: `**docs`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypedDict

from pydantic import BaseModel, TypeAdapter

from gateway.edge.access import Credentials
from gateway.edge.authfailures import TooManyAuthFailures
from gateway.edge.credentials import AmbiguousCredentials, InvalidApiKey, InvalidToken, TenantMismatch
from gateway.edge.store import EdgeStoreUnavailable
from gateway.settings import GatewaySettings, Quota
from shared.contract import (
    CACHE_CONTROL,
    IDEMPOTENCY_HEADER,
    IDEMPOTENCY_KEY_PATTERN,
    IDEMPOTENT_METHODS,
    IDEMPOTENT_REPLAYED_HEADER,
    AuthenticationRequired,
    IdempotencyKeyInUse,
    IdempotencyKeyReused,
    IdempotentResponseNotStored,
    InsufficientScope,
    InvalidIdempotencyKey,
)
from shared.errors import (
    RETRY_AFTER,
    CircuitOpen,
    MalformedBody,
    Overloaded,
    PayloadTooLarge,
    PorticoError,
    QuotaExceeded,
    TooManyRequests,
    UpstreamBadResponse,
    UpstreamTimeout,
    UpstreamUnavailable,
    ValidationFailed,
)
from shared.pagination import Page
from shared.problem_docs import problem_responses as shared_problem_responses
from shared.request_id import REQUEST_ID_HEADER_NAME

JSON = "application/json"
FORM = "application/x-www-form-urlencoded"
SCHEMAS_REF = "#/components/schemas/{model}"

BEARER = "bearerAuth"
API_KEY = "apiKeyAuth"
SECURITY_SCHEMES: dict[str, dict[str, Any]] = {
    BEARER: {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "JWT",
        "description": (
            "An access token from `POST /v1/auth/token`: `Authorization: Bearer <token>`. Send one credential, "
            "not both: a token with an `X-API-Key` too is 400 `AMBIGUOUS_CREDENTIALS`."
        ),
    },
    API_KEY: {
        "type": "apiKey",
        "in": "header",
        "name": "X-API-Key",
        "description": (
            "An API key from `POST /v1/api-keys` (`sk_...`). Send one credential, not both: a key with an "
            "`Authorization` header too is 400 `AMBIGUOUS_CREDENTIALS`."
        ),
    },
}


def _header(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "schema": schema}


INTEGER = {"type": "integer", "minimum": 0}
# The settings' defaults, for the figures the reference quotes (a deployment may change them).
_DEFAULTS = GatewaySettings.model_construct()
_PRO = _DEFAULTS.rate_limit_pro
STRING = {"type": "string"}
HEADERS: dict[str, dict[str, Any]] = {
    REQUEST_ID_HEADER_NAME: _header(
        "The request's id (the client's own `X-Request-ID` when it sent a valid one).", STRING
    ),
    "RateLimit-Policy": _header(
        "The quotas this request counts against (draft-ietf-httpapi-ratelimit-headers), each named, with its "
        f'limit `q` and window `w` in seconds, e.g. `"pro";q={_PRO.limit};w={_PRO.window_seconds}`.',
        STRING,
    ),
    "RateLimit": _header(
        f'What is left of each quota, e.g. `"pro";r={_PRO.limit - 1};t=42` (r: requests remaining, t: seconds until '
        "the window resets).",
        STRING,
    ),
    "X-RateLimit-Limit": _header("The tightest quota's limit.", INTEGER),
    "X-RateLimit-Remaining": _header("Requests left in the tightest quota's window.", INTEGER),
    "X-RateLimit-Reset": _header("Seconds until the tightest quota's window resets.", INTEGER),
    RETRY_AFTER: _header("Seconds to wait before trying again.", INTEGER),
    IDEMPOTENT_REPLAYED_HEADER: _header(
        "`true` when this is the stored answer to an earlier request with the same `Idempotency-Key`.",
        {"type": "string", "enum": ["true"]},
    ),
    "WWW-Authenticate": _header("The credentials the route accepts (`Bearer` or `ApiKey`).", STRING),
    "ETag": _header("A weak tag of the answer; send it back in `If-None-Match` to get 304 if unchanged.", STRING),
    CACHE_CONTROL: _header(
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

# What a caller can get back from the edge, whatever the route: rate limiting and failing services.
EDGE_ERRORS: tuple[type[PorticoError], ...] = (
    ValidationFailed,
    TooManyRequests,
    QuotaExceeded,
    TooManyAuthFailures,
    # Refused for load, before any work (`shared/admission.py`).
    Overloaded,
    UpstreamBadResponse,
    UpstreamUnavailable,
    # Any call to a service may find its circuit open.
    CircuitOpen,
    EdgeStoreUnavailable,
    UpstreamTimeout,
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


# What the example body of each error says: as the gateway or the service words it, with example values.
EXAMPLE_DETAILS: dict[str, str] = {
    "AMBIGUOUS_CREDENTIALS": "Send either Authorization or X-API-Key, not both.",
    "AUTHENTICATION_REQUIRED": "This route needs credentials.",
    "INVALID_TOKEN": "The access token has expired.",
    "INVALID_API_KEY": "The API key is unknown, revoked or expired.",
    "INVALID_CREDENTIALS": "The email or password is wrong.",
    "INSUFFICIENT_SCOPE": "Missing scope orders:write.",
    "TENANT_MISMATCH": "X-Tenant-Id does not match the tenant of the credentials.",
    "USER_REQUIRED": "API keys are managed with a user's access token, not with an API key.",
    "SCOPE_NOT_HELD": "A caller cannot grant more authority than it holds: the key would hold webhooks:write.",
    "PLAN_NOT_SELF_SERVICE": (
        "The enterprise plan is not available at sign-up; choose free or pro. Another plan is given to an "
        "existing tenant by the operator."
    ),
    "PLAN_UPGRADE_REQUIRED": "Webhooks needs the pro or enterprise plan; this tenant is on free.",
    "UNKNOWN_USER": "The user these credentials were issued to no longer exists.",
    "RATE_LIMITED": (
        f"The pro quota of {_DEFAULTS.rate_limit_pro.limit} requests per {_DEFAULTS.rate_limit_pro.window_seconds} s "
        "is spent; retry in 12 s."
    ),
    "QUOTA_EXCEEDED": (
        f"The pro plan's monthly quota of {_DEFAULTS.quota_pro:,} requests is spent; it starts again on the 1st "
        "(00:00 UTC)."
    ),
    "OVERLOADED": "The gateway has as many requests in progress as it can serve well; retry in 1 s.",
    "TOO_MANY_AUTH_FAILURES": (
        f"Too many failed authentications from this address (at most {_DEFAULTS.auth_failure_limit.limit} per "
        f"{_DEFAULTS.auth_failure_limit.window_seconds} s); retry in 41 s."
    ),
    "LOGIN_THROTTLED": "Too many wrong passwords for this account; try again in 30 s.",
    "PASSWORD_HASHING_BUSY": "Too many password checks are under way; try again shortly.",
    "NO_SIGNING_KEY": "No signing key is loaded yet; try again shortly.",
    "REALTIME_CONNECTION_LIMIT": (
        f"The free plan allows {_DEFAULTS.realtime_connections_free} real-time connections per gateway instance; "
        "close one."
    ),
    "MALFORMED_BODY": "The request body is not valid JSON.",
    "PAYLOAD_TOO_LARGE": f"The request body exceeds the limit of {_DEFAULTS.max_body_bytes} bytes.",
    "UNSUPPORTED_MEDIA_TYPE": (
        "This route takes application/x-www-form-urlencoded with the fields username (the email) and password, "
        "the OAuth2 password form, not application/json."
    ),
    "VALIDATION_FAILED": "items.0.quantity: Input should be greater than or equal to 1",
    "INVALID_CURSOR": "The cursor is not one this list handed out.",
    "INVALID_IDEMPOTENCY_KEY": "Idempotency-Key must be 1 to 255 visible ASCII characters.",
    "IDEMPOTENCY_KEY_IN_USE": "A request with this Idempotency-Key is still being processed; retry shortly.",
    "IDEMPOTENCY_KEY_REUSED": "This Idempotency-Key was used for a different request; use a new key for a new request.",
    "IDEMPOTENT_RESPONSE_NOT_STORED": (
        "A request with this Idempotency-Key was already done (201); its response held a secret or was too "
        "large and was not kept. List the resource to find the result."
    ),
    "CIRCUIT_OPEN": "The orders service is failing; calls to it are paused for up to 5 s.",
    "DOWNSTREAM_UNAVAILABLE": "The orders service is unavailable.",
    "DOWNSTREAM_TIMEOUT": "The orders service did not answer in time.",
    "DOWNSTREAM_BAD_RESPONSE": "The orders service answered something that is not JSON.",
    "EDGE_STORE_UNAVAILABLE": "The rate limit store is unavailable; try again shortly.",
    "EMAIL_TAKEN": "The email ada@example.com is already registered.",
    "USER_NOT_FOUND": "No user 7c9e6679-7425-40de-944b-e07fc1f90ae7.",
    "API_KEY_NOT_FOUND": "No API key 1f0e3dad-9990-4e64-a0b4-4f6e0a7c3c21.",
    "API_KEY_NOT_ROTATABLE": "The API key 1f0e3dad-9990-4e64-a0b4-4f6e0a7c3c21 is revoked.",
    "PRODUCT_NOT_FOUND": "No product 0b9d6c2e-5d7c-4a5e-9a4b-2f1e8c3d7a61.",
    "SKU_TAKEN": "The SKU TSHIRT-BLUE-M is already used by another product.",
    "INSUFFICIENT_STOCK": "Product 0b9d6c2e-5d7c-4a5e-9a4b-2f1e8c3d7a61 has 1 in stock; 2 were asked for.",
    "STOCK_LIMIT_EXCEEDED": (
        "Product 0b9d6c2e-5d7c-4a5e-9a4b-2f1e8c3d7a61 has 999999990 in stock; the most a product holds is 1000000000."
    ),
    "CREDIT_LIMIT_EXCEEDED": (
        "This order of 3998 cents and the user's open orders of 98000 cents would exceed the credit limit of "
        "100000 cents."
    ),
    "ORDER_NOT_FOUND": "No order 5b2e6f0a-3c1d-4e8f-9a7b-6c5d4e3f2a1b.",
    "ORDER_ALREADY_CANCELLED": "Order 5b2e6f0a-3c1d-4e8f-9a7b-6c5d4e3f2a1b is already cancelled.",
    "ORDERS_BUSY": "Too many orders are being placed right now; retry shortly.",
    "ORDER_ATTEMPT_EXPIRED": "The order took too long to place and was given up; its stock was released. Try again.",
    "WEBHOOK_URL_REFUSED": "The host 10.0.0.7 is a private address.",
    "WEBHOOK_ENDPOINT_LIMIT_REACHED": "A tenant can register at most 20 webhook endpoints; delete one first.",
    "WEBHOOK_ENDPOINT_NOT_FOUND": "No webhook endpoint 2a7c1e9b-8d4f-4b3a-9e6c-1f2d3c4b5a69.",
    "WEBHOOK_DELIVERY_NOT_FOUND": "No webhook delivery 9e8d7c6b-5a4f-4e3d-8c2b-1a0f9e8d7c6b.",
    "WEBHOOK_ENDPOINT_DISABLED": (
        "The endpoint 2a7c1e9b-8d4f-4b3a-9e6c-1f2d3c4b5a69 is disabled; enable it (PATCH status active) before "
        "recovering."
    ),
    "INVALID_LAST_EVENT_ID": "Last-Event-ID must be the id of an event this API sent (a decimal number).",
    "EVENTS_EXPIRED": (
        "Events after 1041 are no longer kept (the oldest kept comes after 5120). Resync: read the current state "
        "(GET /v1/orders), then open the stream without Last-Event-ID."
    ),
    "BAD_REQUEST": "No GraphQL query found in the request.",
}


def _problem_headers(status: int) -> dict[str, Any]:
    if status == 401:
        return _headers("WWW-Authenticate", REQUEST_ID_HEADER_NAME)
    if status == 429:
        return _headers(RETRY_AFTER, *RATE_LIMIT_HEADERS, REQUEST_ID_HEADER_NAME)
    return _headers(REQUEST_ID_HEADER_NAME)


def problem_responses(errors: Iterable[type[PorticoError]]) -> dict[int | str, dict[str, Any]]:
    """One problem+json response per status among `errors`, naming each `error_code` it may carry, with
    an example body per code saying what the gateway or the service would (`EXAMPLE_DETAILS`)."""
    return shared_problem_responses(errors, details=EXAMPLE_DETAILS, headers_of=_problem_headers)


@dataclass(frozen=True)
class DocumentedBody:
    """A request body shown in the reference but forwarded as bytes: `model` is the owning service's."""

    model: type[BaseModel]
    media_type: str = JSON
    required: bool = True

    def request_body(self) -> dict[str, Any]:
        content: dict[str, Any] = {"schema": {"$ref": SCHEMAS_REF.format(model=self.model.__name__)}}
        example = model_example(self.model)
        if example is not None:
            content["example"] = example
        return {"required": self.required, "content": {self.media_type: content}}


# What a `next_cursor` looks like: opaque to clients (base64url of the last item's sort key).
EXAMPLE_CURSOR = "eyJjIjoiMjAyNi0wMS0zMVQwOTozMDowMFoiLCJpIjoiOGQzZTFmMmEifQ"


def model_example(model: type[BaseModel]) -> Any:
    """The first example a model's `json_schema_extra` gives; for a `Page[X]`, a page of X's example
    with a `next_cursor`. None when the model gives none."""
    generic = model.__pydantic_generic_metadata__
    if generic["origin"] is Page:
        item = model_example(generic["args"][0])
        return None if item is None else {"items": [item], "next_cursor": EXAMPLE_CURSOR}
    extra = model.model_config.get("json_schema_extra")
    examples = extra.get("examples") if isinstance(extra, dict) else None
    return examples[0] if isinstance(examples, list) and examples else None


class OperationDocs(TypedDict):
    """The keyword arguments of a route that document its operation beyond what FastAPI derives."""

    responses: dict[int | str, dict[str, Any]]
    openapi_extra: dict[str, Any]


def operation_docs(
    method: str,
    *,
    status_code: int,
    credentials: Credentials,
    body: DocumentedBody | None = None,
    errors: Sequence[type[PorticoError]] = (),
    parses_body: bool = False,
    conditional: bool | None = None,
    answer: type[BaseModel] | None = None,
) -> OperationDocs:
    """The `responses` and `openapi_extra` of one route. `credentials`: "none" (sign-up, login),
    "any" (a token or an API key) or "token" (a user's token only); `body`: a body the route
    forwards without parsing; `parses_body`: the route has a body parameter of its own (which
    FastAPI documents); `conditional`: answers carry an ETag and `If-None-Match` may get 304 (every
    GET unless told otherwise, e.g. for a stream); `answer`: the success answer's model, whose
    example the success response shows."""
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
    success_headers = [REQUEST_ID_HEADER_NAME, *RATE_LIMIT_HEADERS, CACHE_CONTROL]
    success_headers += [IDEMPOTENT_REPLAYED_HEADER] if idempotent else []
    success_headers += ["ETag"] if conditional else []
    responses: dict[int | str, dict[str, Any]] = {status_code: {"headers": _headers(*success_headers)}}
    example = model_example(answer) if answer is not None else None
    if example is not None:
        responses[status_code]["content"] = {JSON: {"example": example}}
    if conditional:
        responses[304] = {
            "description": "Not Modified: the `If-None-Match` tag still matches; no body.",
            "headers": _headers("ETag", CACHE_CONTROL, REQUEST_ID_HEADER_NAME),
        }
    responses.update(problem_responses(all_errors))
    return OperationDocs(responses=responses, openapi_extra=extra)


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


# Every tag of the document, in the order the reference shows them, with what its operations are for.
TAGS: list[dict[str, str]] = [
    {
        "name": "users",
        "description": (
            "Sign-up (a tenant and its first admin), access tokens (the OAuth2 password form), the users of a "
            "tenant and their credit limits, and the public keys tokens are signed with."
        ),
    },
    {
        "name": "api keys",
        "description": (
            "Long-lived credentials for programs: `X-API-Key: sk_...`, with some of their creator's scopes. "
            "Created, listed, rotated (with a grace period) and revoked with a user's access token."
        ),
    },
    {
        "name": "products",
        "description": "The tenant's catalogue: products (SKU, name, price in cents) and their stock adjustments.",
    },
    {
        "name": "orders",
        "description": (
            "Orders reserve every line's stock or none, count against the user's credit limit, and emit "
            "`order.created` / `order.cancelled` to webhooks and the event stream."
        ),
    },
    {
        "name": "aggregates",
        "description": (
            "Answers the gateway composes from several services at once: a user's dashboard (partial when a "
            "part fails, with `X-Aggregate-Complete: false`) and an order's checks without placing it."
        ),
    },
    {
        "name": "webhooks",
        "description": (
            "Endpoints that receive the tenant's events, signed per Standard Webhooks; their deliveries, "
            "attempt logs, replays and recovery after an outage. A paid feature."
        ),
    },
    {
        "name": "usage",
        "description": (
            "What the tenant used: requests by hour or day, route and status class, and the month's quota, "
            "for the tenant's admins (scope `usage:read`)."
        ),
    },
    {
        "name": "events",
        "description": (
            "The tenant's order events as they happen, as server-sent events (resumable with `Last-Event-ID`); "
            "the same stream is at `/v1/ws` as a WebSocket."
        ),
    },
    {
        "name": "graphql",
        "description": (
            "One endpoint for reads and writes across users, products and orders, behind the same edge as REST "
            "(credentials, rate limits, idempotency). Outside production, GraphiQL is at `GET /graphql`."
        ),
    },
    {"name": "health", "description": "Probes for orchestrators: liveness, and readiness of every dependency."},
]


def _quota(quota: Quota) -> str:
    return f"{quota.limit:,} requests per {quota.window_seconds} s"


def _monthly(quota: int | None) -> str:
    return "unlimited" if quota is None else f"{quota:,}"


def api_description(
    settings: GatewaySettings,
    plan_features: Mapping[str, Sequence[str]],
    route_quotas: Mapping[tuple[str, str], Quota],
) -> str:
    """The document's `info.description` (Markdown): how to use the API as a whole. The figures come from
    `settings`; `plan_features`: each paid feature and the plans that include it; `route_quotas`: the
    routes that have quotas of their own (method, template)."""
    plans = settings.plan_quotas()
    connections = settings.realtime_connection_caps()
    feature_of = {plan: [name for name, allowed in plan_features.items() if plan in allowed] for plan in plans}
    monthly = settings.monthly_quotas()
    plan_rows = "\n".join(
        f"| `{plan}` | {_quota(quota)} | {_monthly(monthly[plan])} | {connections[plan]:,} | "
        f"{', '.join(feature_of[plan]) or '-'} |"
        for plan, quota in plans.items()
    )
    route_rows = "\n".join(
        f"- `{method} {path}`: {_quota(route_quotas[method, path])}"
        for method, path in sorted(route_quotas, key=lambda route: (route[1], route[0]))
    )
    return f"""\
Portico's public API: users and tenants, API keys, products and stock, orders, webhooks, a real-time event
stream and GraphQL, behind one gateway. Bodies are JSON (`application/json`) unless an operation says
otherwise.

## Authentication

Most operations need one credential, either:

- **A bearer access token** (`bearerAuth`): `POST /v1/auth/token` with the form fields `username` (the
  email) and `password` answers `{{"access_token": "...", "token_type": "bearer", "expires_in": ...}}`; send
  it as `Authorization: Bearer <access_token>`. A token acts as its user, with the scopes of the user's
  role.
- **An API key** (`apiKeyAuth`): created with `POST /v1/api-keys` (with a token), sent as
  `X-API-Key: sk_...`. A key holds the scopes it was given and acts for the tenant.

Send one of them, **never both**: a request with both `Authorization` and `X-API-Key` is refused with 400
`AMBIGUOUS_CREDENTIALS`. Without credentials an operation that needs them answers 401
`AUTHENTICATION_REQUIRED`; a token or key that does not verify is 401 `INVALID_TOKEN` / `INVALID_API_KEY`,
with a `WWW-Authenticate` challenge; a missing scope is 403 `INSUFFICIENT_SCOPE`. Signing up
(`POST /v1/tenants`), logging in and the JWKS need no credentials (`security: []`). Repeated failed
authentications from one address ({_quota(settings.auth_failure_limit)}) are answered 429
`TOO_MANY_AUTH_FAILURES`.

## Tenants

Every resource belongs to a tenant, the organisation that signed up. Credentials carry their tenant: every
operation sees only that tenant's data (another tenant's resource is 404, as one that does not exist).
`X-Tenant-Id` is optional; when sent it must name the credentials' tenant (403 `TENANT_MISMATCH`).

## Plans and quotas

A tenant is on a plan. Each plan has a request quota, counted per tenant across every gateway instance, and
a number of real-time connections per gateway instance:

| Plan | Requests | Requests per month (UTC) | Real-time connections | Paid features |
| --- | --- | --- | --- | --- |
{plan_rows}

Callers without credentials are counted per client address: {_quota(settings.rate_limit_anonymous)}. Some
routes have a quota of their own, counted on top, per tenant (per client address without credentials):

{route_rows}

A feature a plan does not include answers 402 `PLAN_UPGRADE_REQUIRED` with `required_plans` and
`current_plan`.

## Rate-limit headers

Every answer says where the caller stands (draft-ietf-httpapi-ratelimit-headers):
`RateLimit-Policy` lists the quotas the request counted against (`"<name>";q=<limit>;w=<window seconds>`),
`RateLimit` what is left of each (`"<name>";r=<remaining>;t=<seconds to reset>`), and
`X-RateLimit-Limit` / `X-RateLimit-Remaining` / `X-RateLimit-Reset` repeat the tightest one. A spent quota
is 429 `RATE_LIMITED` with `Retry-After` (seconds). A tenant's monthly quota is the policy `"monthly"`,
listed after the per-minute one; past it, 429 `QUOTA_EXCEEDED` with `Retry-After` to the start of the next
month. `GET /v1/usage` shows a tenant's admins what it used, by route and status class.

## Overload

When the gateway has as many requests in progress as it can serve well, it answers at once with 503
`OVERLOADED` and `Retry-After` rather than making every caller wait: anonymous and free-plan requests first,
then pro, then enterprise.

## Idempotency

`POST` and `PATCH` with credentials take an `Idempotency-Key` header (1 to 255 visible ASCII characters,
e.g. a UUID): repeating the request with the same key and body gets the first answer again, with
`Idempotent-Replayed: true`, instead of doing the work twice, for {settings.idempotency_ttl_seconds:,} s.
While the first is still running a repeat is 409 `IDEMPOTENCY_KEY_IN_USE` (retry after `Retry-After`);
the same key with a different request is 422 `IDEMPOTENCY_KEY_REUSED`. An answer that holds a secret (a
token, a new API key or webhook secret) is never stored: its repeat is 409
`IDEMPOTENT_RESPONSE_NOT_STORED`.

## Errors

Every error is `application/problem+json` (RFC 9457): `type`, `title`, `status`, `detail`, a stable
`error_code` to branch on, the `request_id` (also in `X-Request-ID`) and `trace_id` to quote when reporting
a problem, and for a refused field `errors` (`loc`, `field`, `msg`, `type`). Each operation lists the
codes each status may carry (`x-error-codes`), with an example. 5xx answers from the gateway say which
service failed (`service`): 502 a bad answer, 503 unavailable (or its circuit open, with `Retry-After`),
504 too slow.

## Pagination

Lists answer `{{"items": [...], "next_cursor": "..."}}`, newest first. Pass `next_cursor` back as `cursor`
for the next page; it is `null` on the last. `limit` sets the page size. A cursor is opaque: a forged one is
422 `INVALID_CURSOR`.

## Caching

`GET` answers carry an `ETag`; send it back in `If-None-Match` to get `304 Not Modified` without a body
when nothing changed.
"""


def describe_api(
    schema: dict[str, Any],
    settings: GatewaySettings,
    plan_features: Mapping[str, Sequence[str]],
    route_quotas: Mapping[tuple[str, str], Quota],
) -> None:
    """`info.description` and the tags' descriptions, in the document."""
    schema["info"]["description"] = api_description(settings, plan_features, route_quotas)
    used = {
        tag for item in schema["paths"].values() for operation in item.values() for tag in operation.get("tags", ())
    }
    schema["tags"] = [tag for tag in TAGS if tag["name"] in used]
