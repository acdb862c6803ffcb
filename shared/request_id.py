"""The request id, readable from anywhere that handles a request: a context variable (for log lines
and errors rendered outside a route) and the request context's own (`shared/context.py`).

Apart from the request context so that what renders errors (`shared/errors.py`) needs nothing that
knows about callers or spans."""

from __future__ import annotations

import re
from contextvars import ContextVar
from random import getrandbits
from typing import Protocol

from starlette.types import Scope

request_id_var: ContextVar[str | None] = ContextVar("portico_request_id", default=None)

# Where a request's context is kept in its ASGI scope (`shared/context.py` opens it).
CONTEXT_KEY = "portico.context"


# The header a request's id travels in: accepted from the client, echoed on the answer, and sent on
# with every call the request makes; `REQUEST_ID_HEADER` is its name as ASGI spells it.
REQUEST_ID_HEADER_NAME = "X-Request-ID"
REQUEST_ID_HEADER = REQUEST_ID_HEADER_NAME.lower().encode("ascii")
# A request id a client may send, kept as the request's own (else a new one is made).
CLIENT_REQUEST_ID = re.compile(rb"^[A-Za-z0-9._:\-]{8,128}$")


def new_request_id() -> str:
    """A new request id: 32 hex digits, 128 random bits.

    From `random`'s generator, not the system's: an id only has to be unique, never secret, and
    `os.urandom` is a system call per request (reseeded in a forked worker by `random` itself)."""
    return f"{getrandbits(128):032x}"


class _HasRequestId(Protocol):
    request_id: str


def request_id_of(scope: Scope) -> str | None:
    """The request id, also for errors rendered before or around the request context stage."""
    context: _HasRequestId | None = scope.get(CONTEXT_KEY)
    return context.request_id if context is not None else request_id_var.get()


def request_id_headers() -> dict[str, str]:
    """The headers that carry the current request's id on a call to another service (none outside a
    request)."""
    request_id = request_id_var.get()
    return {REQUEST_ID_HEADER_NAME: request_id} if request_id else {}
