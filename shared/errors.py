"""The error hierarchy every process raises, and the one place that renders it as problem+json."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Self

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from opentelemetry import trace
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from shared.request_id import REQUEST_ID_HEADER_NAME, request_id_of, request_id_var

PROBLEM_JSON = "application/problem+json"
PROBLEM_JSON_BYTES = PROBLEM_JSON.encode("ascii")
PROBLEM_BASE = "https://portico.dev/problems/"

logger = logging.getLogger("portico.errors")

RETRY_AFTER = "Retry-After"
# All an unhandled error says of itself (as a 500 in REST, and in GraphQL): nothing of its internals.
INTERNAL_DETAIL = "An internal error occurred."


def retry_in(seconds: int | str) -> dict[str, str]:
    """The headers of an answer that tells the client when to try again."""
    return {RETRY_AFTER: str(seconds)}


class PorticoError(Exception):
    """Base of every error a process answers on purpose. Subclasses fix status, code and title as
    class keywords: `class SkuTaken(Conflict, code="SKU_TAKEN", title="SKU already in use")`. The
    problem type's slug is the code in lower case with dashes unless given (`slug=`)."""

    status_code: ClassVar[int] = 500
    error_code: ClassVar[str] = "INTERNAL_ERROR"
    title: ClassVar[str] = "Internal Server Error"
    slug: ClassVar[str] = "internal-error"

    def __init_subclass__(
        cls,
        *,
        status: int | None = None,
        code: str | None = None,
        title: str | None = None,
        slug: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init_subclass__(**kwargs)
        if status is not None:
            cls.status_code = status
        if code is not None:
            cls.error_code = code
            cls.slug = code.lower().replace("_", "-")
        if slug is not None:
            cls.slug = slug
        if title is not None:
            cls.title = title

    def __init__(
        self,
        detail: str | None = None,
        *,
        error_code: str | None = None,
        errors: Sequence[Mapping[str, Any]] | None = None,
        headers: Mapping[str, str] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        self.detail = detail or self.title
        self.code = error_code or self.error_code
        self.errors = list(errors) if errors is not None else None
        self.headers = dict(headers or {})
        self.extra = dict(extra or {})
        super().__init__(self.detail)


class BadRequest(PorticoError, status=400, code="BAD_REQUEST", title="Bad Request"):
    """A request the process cannot make sense of (a Starlette 400, or a malformed header the route
    reads)."""


class MalformedBody(BadRequest, code="MALFORMED_BODY", title="Malformed request body"):
    """A body that is not valid JSON (or not the form a route takes)."""


class Unauthorized(PorticoError, status=401, code="UNAUTHORIZED", title="Unauthorized"):
    """A request without the credentials the route needs (any other 401 of the framework)."""

    def __init__(
        self, detail: str | None = None, *, error_code: str | None = None, challenge: str = 'Bearer realm="portico"'
    ) -> None:
        super().__init__(detail, error_code=error_code, headers={"WWW-Authenticate": challenge})


class PaymentRequired(PorticoError, status=402, code="PLAN_UPGRADE_REQUIRED", title="Plan upgrade required"):
    """The tenant's plan does not include the feature: the answer names `required_plans` and
    `current_plan`."""


class Forbidden(PorticoError, status=403, code="FORBIDDEN", title="Forbidden"):
    """The caller may not do this (any other 403)."""


class NotFound(PorticoError, status=404, code="NOT_FOUND", title="Not Found"):
    """No such route, or no such resource for this caller: another tenant's resource answers exactly
    as a missing one."""

    # What is missing, as `for_id` names it: "No <resource> <id>."
    resource: ClassVar[str] = "resource"

    def __init_subclass__(cls, *, resource: str | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if resource is not None:
            cls.resource = resource

    @classmethod
    def for_id(cls, resource_id: str) -> Self:
        return cls(f"No {cls.resource} {resource_id}.")


class MethodNotAllowed(PorticoError, status=405, code="METHOD_NOT_ALLOWED", title="Method Not Allowed"):
    """The route exists but not for this method."""


class Conflict(PorticoError, status=409, code="CONFLICT", title="Conflict"):
    """The request conflicts with the resource's state (any other 409)."""


class PayloadTooLarge(PorticoError, status=413, code="PAYLOAD_TOO_LARGE", title="Request body too large"):
    """A request body over `MAX_BODY_BYTES`, refused before it is read in full."""


class UnsupportedMediaType(PorticoError, status=415, code="UNSUPPORTED_MEDIA_TYPE", title="Unsupported Media Type"):
    """A body in a media type the route does not take."""


class ValidationFailed(PorticoError, status=422, code="VALIDATION_FAILED", title="Validation failed"):
    """The body, a query or a path parameter is not valid: `errors` names each field and what is
    wrong."""


class TooManyRequests(PorticoError, status=429, code="RATE_LIMITED", title="Too Many Requests", slug="quota-exceeded"):
    """A rate-limit quota is spent: `Retry-After`, and `policy`, `limit`, `window_seconds`,
    `retry_after` in the body."""


class QuotaExceeded(TooManyRequests, code="QUOTA_EXCEEDED", title="Too Many Requests", slug="monthly-quota-exceeded"):
    """The tenant's monthly request quota is spent: `Retry-After` is the start of the next month (UTC),
    and `policy`, `limit`, `period_start`, `period_end`, `retry_after` are in the body."""


class ServiceUnavailable(PorticoError, status=503, code="SERVICE_UNAVAILABLE", title="Service Unavailable"):
    """The process cannot serve the request now (any other 503), with `Retry-After`."""


class UpstreamError(PorticoError):
    """A call to another Portico service failed; `service` names which. `error_code` and `headers`
    (a `Retry-After`) carry what the failing service itself said, when it is passed on."""

    def __init__(
        self,
        service: str,
        detail: str,
        *,
        error_code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(detail, error_code=error_code, headers=headers, extra={"service": service})
        self.service = service


# Named from the caller's side (the service it calls); the `DOWNSTREAM_*` codes are public names, so they stay.
class UpstreamBadResponse(UpstreamError, status=502, code="DOWNSTREAM_BAD_RESPONSE", title="Bad Gateway"):
    """A called service answered a 5xx of its own, or something that is not the answer it owes (its
    body is not passed on); `service` names it."""


class UpstreamUnavailable(UpstreamError, status=503, code="DOWNSTREAM_UNAVAILABLE", title="Service Unavailable"):
    """A called service could not be reached (refused, reset, or closed without answering, after the
    retry of a safe call): `Retry-After: 1`, `service` names it."""


class UpstreamTimeout(UpstreamError, status=504, code="DOWNSTREAM_TIMEOUT", title="Gateway Timeout"):
    """A called service did not answer within the caller's timeout (`HTTP_TIMEOUT_SECONDS`);
    `service` names it."""


class NoInstance(UpstreamUnavailable, code="SERVICE_UNAVAILABLE", title="Service Unavailable"):
    """No instance of `service` is known: its DNS name has not answered with an address since the
    process started. `Retry-After`; `service` names it."""

    def __init__(self, service: str, retry_after: int) -> None:
        super().__init__(service, f"No instance of the {service} service is known yet.", headers=retry_in(retry_after))


class CircuitOpen(UpstreamUnavailable, code="CIRCUIT_OPEN", title="Service Unavailable"):
    """Calls to `service` failed repeatedly: refused at once, without a call, until a trial succeeds."""

    def __init__(self, service: str, retry_after: int) -> None:
        super().__init__(
            service,
            f"The {service} service is failing; calls to it are paused for up to {retry_after} s.",
            headers=retry_in(retry_after),
        )


class Overloaded(ServiceUnavailable, code="OVERLOADED", title="Overloaded"):
    """The process has as many requests in progress as its adaptive limit allows (for the caller's
    plan, at the gateway): refused at once, before any work, with `Retry-After` (`shared/admission.py`)."""


class DeadlineExceeded(PorticoError, status=504, code="DEADLINE_EXCEEDED", title="Deadline exceeded"):
    """The request's `X-Request-Deadline` passed before the work could start: its caller has given
    up on it, so it is refused without touching the database or calling anyone."""


_STATUS_ERRORS: dict[int, type[PorticoError]] = {
    cls.status_code: cls
    for cls in (
        BadRequest,
        Unauthorized,
        PaymentRequired,
        Forbidden,
        NotFound,
        MethodNotAllowed,
        Conflict,
        PayloadTooLarge,
        UnsupportedMediaType,
        ValidationFailed,
        TooManyRequests,
        ServiceUnavailable,
    )
}


def current_trace_id() -> str | None:
    ctx = trace.get_current_span().get_span_context()
    return format(ctx.trace_id, "032x") if ctx.is_valid else None


def problem_body(exc: PorticoError, request_id: str | None) -> dict[str, Any]:
    """The problem+json body of `exc`, with the request's id and the current trace's."""
    body: dict[str, Any] = {
        "type": PROBLEM_BASE + exc.slug,
        "title": exc.title,
        "status": exc.status_code,
        "detail": exc.detail,
        "error_code": exc.code,
        "request_id": request_id,
        "trace_id": current_trace_id(),
    }
    if exc.errors is not None:
        body["errors"] = list(exc.errors)
    if exc.extra:
        body.update(exc.extra)
    return body


def _problem_json(exc: PorticoError, request_id: str | None) -> bytes:
    return orjson.dumps(problem_body(exc, request_id), default=str)


def problem_response(exc: PorticoError, request_id: str | None = None) -> Response:
    """Renders a Portico error; usable from handlers and from plain ASGI middleware."""
    rid = request_id or request_id_var.get()
    headers = dict(exc.headers)
    if rid:
        headers.setdefault(REQUEST_ID_HEADER_NAME, rid)
    return Response(
        content=_problem_json(exc, rid), status_code=exc.status_code, headers=headers, media_type=PROBLEM_JSON
    )


def problem_message(exc: PorticoError, request_id: str | None) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """The raw headers and body of a Portico error, for code that sends ASGI messages itself."""
    body = _problem_json(exc, request_id)
    headers = [(b"content-type", PROBLEM_JSON_BYTES), (b"content-length", str(len(body)).encode("latin-1"))]
    headers += [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in exc.headers.items()]
    return headers, body


async def send_problem(exc: PorticoError, scope: Scope, receive: Receive, send: Send) -> None:
    """Answers a request with `exc` from a pure ASGI stage."""
    await problem_response(exc, request_id_of(scope))(scope, receive, send)


def _request_id(request: Request) -> str | None:
    return request_id_of(request.scope)


def _jsonable_errors(errors: Sequence[Any]) -> list[dict[str, Any]]:
    out = []
    for err in errors:
        loc = [str(part) for part in err.get("loc", ())]
        out.append(
            {
                "loc": loc,
                "field": ".".join(p for p in loc if p not in ("body", "query", "path", "header")),
                "msg": err.get("msg", ""),
                "type": err.get("type", ""),
            }
        )
    return out


async def _portico_error_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, PorticoError)
    if exc.status_code >= 500:
        logger.warning("answered %s %s: %s", exc.status_code, exc.code, exc.detail)
    return problem_response(exc, _request_id(request))


def validation_failed(errors: Sequence[Any]) -> PorticoError:
    """The error of a request whose parameters or body broke their rules (pydantic's errors, with
    FastAPI's locations: `("query", "limit")`)."""
    if any(e.get("type") == "json_invalid" for e in errors):
        return MalformedBody("The request body is not valid JSON.")
    return ValidationFailed("The request did not pass validation.", errors=_jsonable_errors(errors))


async def _validation_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    return problem_response(validation_failed(list(exc.errors())), _request_id(request))


async def _http_exception_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    cls = _STATUS_ERRORS.get(exc.status_code, PorticoError)
    detail = exc.detail if isinstance(exc.detail, str) else cls.title
    if exc.status_code == 404 and detail == "Not Found":
        detail = f"No route matches {request.method} {request.url.path}."
    err = cls(detail)
    # Headers the exception carries (a challenge, Allow, Retry-After) win over the class's defaults.
    err.headers.update(exc.headers or {})
    if cls is PorticoError:
        # An HTTP status with no class of its own keeps its status.
        response = problem_response(err, _request_id(request))
        response.status_code = exc.status_code
        return response
    return problem_response(err, _request_id(request))


class DatabaseUnavailable(ServiceUnavailable, code="DATABASE_UNAVAILABLE", title="Database unavailable"):
    """The service's database is down, or no pool connection came within `DB_POOL_TIMEOUT_SECONDS`:
    `Retry-After: 1`."""


async def _client_gone_handler(request: Request, exc: Exception) -> Response:
    """The client closed its connection while a route read its body: its own outcome, counted as
    `client_closed` (`ObservabilityMiddleware` saw the disconnect), logged at INFO, never a 500. The
    answer is sent to nobody."""
    logger.info("client left %s %s before its body arrived", request.method, request.url.path)
    return problem_response(
        BadRequest("The client closed the connection before its body arrived."), _request_id(request)
    )


async def _unhandled_handler(request: Request, exc: Exception) -> Response:
    logger.exception("unhandled error on %s %s", request.method, request.url.path)
    response = problem_response(PorticoError(INTERNAL_DETAIL), _request_id(request))
    # Starlette's ServerErrorMiddleware raises the error again once this answer is sent, and the
    # server then closes the connection: the answer says so, so that a client opens a new connection
    # for its next request instead of racing the close.
    response.headers["connection"] = "close"
    return response


def install_error_handlers(app: FastAPI) -> None:
    """The one place errors become responses (a process with a database adds its own failures':
    `shared.db.install_database_errors`)."""
    app.add_exception_handler(PorticoError, _portico_error_handler)
    app.add_exception_handler(RequestValidationError, _validation_handler)
    app.add_exception_handler(StarletteHTTPException, _http_exception_handler)
    app.add_exception_handler(ClientDisconnect, _client_gone_handler)
    app.add_exception_handler(Exception, _unhandled_handler)


PROBLEM_SCHEMA: dict[str, Any] = {
    "title": "Problem",
    "type": "object",
    "description": (
        "RFC 9457 problem details, with Portico's extensions. `error_code` is stable and meant for "
        "programs; each response lists the codes it may carry. Some errors add members of their own "
        "(`required_scope`, `required_plans`, `service`, ...)."
    ),
    "properties": {
        "type": {"type": "string", "description": "A URI naming the kind of problem."},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string", "description": "What went wrong with this request, for people."},
        "error_code": {"type": "string", "description": "What went wrong, for programs.", "examples": ["NOT_FOUND"]},
        "request_id": {"type": ["string", "null"]},
        "trace_id": {"type": ["string", "null"], "description": "The W3C trace id of the request's trace."},
        "errors": {
            "type": "array",
            "description": "The fields that failed validation (422).",
            "items": {
                "title": "FieldError",
                "type": "object",
                "properties": {
                    "loc": {"type": "array", "items": {"type": "string"}},
                    "field": {"type": "string"},
                    "msg": {"type": "string"},
                    "type": {"type": "string"},
                },
            },
        },
    },
    "required": ["type", "title", "status", "detail", "error_code"],
}
