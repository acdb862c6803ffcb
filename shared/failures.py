"""What a failed call to another service stands for: the upstream error (502/503/504 naming the
service that failed) of a 5xx answer, or of an attempt that got no answer at all."""

from __future__ import annotations

from typing import Any

import aiohttp
import httpx
import orjson

from shared.errors import UpstreamBadResponse, UpstreamError, UpstreamTimeout, UpstreamUnavailable, retry_in

# aiohttp's failures that mean the service never got (or never began to answer) the request: a
# refused or timed-out connect, a connection reset or closed before any answer, a request that could
# not be written (a pooled connection the service closed as it was taken: "Cannot write to closing
# transport"). Safe to try again.
_NOT_ANSWERED = (
    aiohttp.ClientConnectorError,
    aiohttp.ConnectionTimeoutError,
    aiohttp.ServerDisconnectedError,
    aiohttp.ClientConnectionResetError,
)


def no_answer(exc: Exception) -> tuple[bool, bool]:
    """Why an attempt on either transport got no answer: whether it timed out, and whether the service
    never got the request (its connection failed), so that it is safe to send again."""
    if isinstance(exc, httpx.TransportError):
        refused = isinstance(exc, httpx.TimeoutException) and _refused(exc)
        timed_out = isinstance(exc, httpx.TimeoutException) and not refused
        return timed_out, refused or isinstance(exc, httpx.ConnectTimeout | httpx.ConnectError)
    if isinstance(exc, aiohttp.ClientError):
        connect_failed = isinstance(exc, _NOT_ANSWERED) or type(exc) is aiohttp.ClientOSError
        return isinstance(exc, aiohttp.ServerTimeoutError), connect_failed
    # The whole call's timeout.
    return True, False


def _refused(exc: httpx.TimeoutException) -> bool:
    """True when a "timeout" is really a refused, failed or dropped connection.

    httpx-aiohttp maps every aiohttp connection error, a refused connect and a server that closed the
    connection without answering included, to ConnectTimeout; the aiohttp cause tells them apart (a
    connection error that is not a TimeoutError).
    """
    cause = exc.__cause__
    return isinstance(cause, OSError | aiohttp.ClientConnectionError) and not isinstance(cause, TimeoutError)


def timed_out(service: str) -> UpstreamTimeout:
    return UpstreamTimeout(service, f"The {service} service did not answer in time.")


def unreachable(service: str) -> UpstreamUnavailable:
    return UpstreamUnavailable(service, f"The {service} service is unreachable.", headers=retry_in(1))


def _problem_of(content_type: str, body: bytes) -> dict[str, Any]:
    if not content_type.startswith("application/problem+json"):
        return {}
    try:
        problem = orjson.loads(body)
    except orjson.JSONDecodeError:
        return {}
    return problem if isinstance(problem, dict) else {}


_FAILURE_CLASSES: dict[int, type[UpstreamError]] = {
    502: UpstreamBadResponse,
    503: UpstreamUnavailable,
    504: UpstreamTimeout,
}


def failure_of(
    service: str, status: int, *, content_type: str = "", retry_after: str | None = None, body: bytes = b""
) -> tuple[UpstreamError, bool]:
    """The error a 5xx answer of `service` stands for, and whether it is the service's own failure
    (False: it relays the failure of a service further down, which keeps being named)."""
    problem = _problem_of(content_type, body)
    named = problem.get("service")
    cls = _FAILURE_CLASSES.get(status)
    headers = retry_in(retry_after) if retry_after is not None else None
    if cls is not None and isinstance(named, str) and named and named != service:
        detail = str(problem.get("detail") or f"The {named} service failed.")
        code = problem.get("error_code")
        return cls(named, detail, error_code=code if isinstance(code, str) else None, headers=headers), False
    if status == 503:
        # The service says it cannot serve now (its database, its own limits): passed on as such.
        code = problem.get("error_code")
        detail = f"The {service} service is unavailable."
        if isinstance(problem.get("detail"), str):
            detail = f"The {service} service is unavailable: {problem['detail']}"
        return (
            UpstreamUnavailable(service, detail, error_code=code if isinstance(code, str) else None, headers=headers),
            True,
        )
    if status == 504:
        return UpstreamTimeout(service, f"The {service} service timed out."), True
    return UpstreamBadResponse(service, f"The {service} service answered {status}."), True
