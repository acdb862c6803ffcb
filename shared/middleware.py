"""Pure ASGI middleware shared by every process: request id + access log, and the body size limit."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.asgi import header, on_response_start
from shared.context import open_context, request_id_of
from shared.errors import PayloadTooLarge, problem_response

REQUEST_ID_HEADER = b"x-request-id"
# Accepted from clients as is; anything else is replaced, so ids are safe to log and forward.
_REQUEST_ID_RE = re.compile(rb"^[A-Za-z0-9._:\-]{8,128}$")

# After refusing a streamed body, how much more of it is read and discarded, and for how long.
LINGER_FACTOR = 4
LINGER_SECONDS = 2.0

access_logger = logging.getLogger("portico.access")


def _declared_length(value: bytes | None) -> int:
    try:
        return int(value) if value is not None else -1
    except ValueError:
        return -1


def new_request_id() -> str:
    return uuid.uuid4().hex


class RequestContextMiddleware:
    """Accepts a well-formed `X-Request-ID` or makes one, echoes it, and writes one access line."""

    def __init__(self, app: ASGIApp, *, access_log: bool = True) -> None:
        self.app = app
        self.access_log = access_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        sent = header(scope, REQUEST_ID_HEADER)
        request_id = sent.decode("ascii") if sent is not None and _REQUEST_ID_RE.match(sent) else new_request_id()
        open_context(scope, request_id)
        raw_id = request_id.encode("ascii")
        start = time.perf_counter()
        status = 0

        def stamp(message: Message) -> None:
            nonlocal status
            status = message["status"]
            headers = [(k, v) for k, v in message.get("headers", ()) if k != REQUEST_ID_HEADER]
            headers.append((REQUEST_ID_HEADER, raw_id))
            message["headers"] = headers

        try:
            await self.app(scope, receive, on_response_start(send, stamp))
        finally:
            if self.access_log and scope["type"] == "http":
                route = scope.get("route")
                access_logger.info(
                    "%s %s %s",
                    scope["method"],
                    scope["path"],
                    status or 500,
                    extra={
                        "http_method": scope["method"],
                        "http_route": getattr(route, "path", None),
                        "http_status": status or 500,
                        "duration_ms": round((time.perf_counter() - start) * 1000, 3),
                    },
                )


class BodySizeLimitMiddleware:
    """Refuses bodies over `max_bytes` with 413, before they are read in full.

    A declared Content-Length over the limit is refused at once; a chunked body is counted as it
    arrives and refused when it crosses the limit.
    """

    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if _declared_length(header(scope, b"content-length")) > self.max_bytes:
            await self._refuse(scope, receive, send)
            return

        received = 0
        max_bytes = self.max_bytes

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > max_bytes:
                    if message.get("more_body", False):
                        await self._linger(receive)
                    raise PayloadTooLarge(f"The request body exceeds the limit of {max_bytes} bytes.")
            return message

        await self.app(scope, limited_receive, send)

    async def _linger(self, receive: Receive) -> None:
        """Reads and discards what a client still sends of a refused body, within a bound, before
        the 413 is sent.

        A client that writes its whole body before reading would otherwise see the connection reset
        (closed with unread data) instead of the 413; this is nginx's lingering close. Nothing read
        here is kept.
        """
        budget = self.max_bytes * LINGER_FACTOR
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(LINGER_SECONDS):
                while budget > 0:
                    message = await receive()
                    if message["type"] != "http.request" or not message.get("more_body", False):
                        return
                    budget -= len(message.get("body", b""))

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = problem_response(
            PayloadTooLarge(f"The request body exceeds the limit of {self.max_bytes} bytes."),
            request_id_of(scope),
        )
        await self._linger(receive)
        # Closing the connection stops a client that is still sending.
        response.headers["Connection"] = "close"
        await response(scope, receive, send)
