"""Caching rules of the answers: what a browser or a shared cache may keep, and conditional GETs.

- A GET answered 200 gets a weak ETag (a SHA-256 of the body, unless the service sent its own), and a
  GET whose `If-None-Match` matches it is answered 304 without the body. The work downstream is still
  done; the client saves the transfer. Weak, because gzip further out changes the bytes, not the
  meaning.
- An answer to an authenticated caller is tenant data: `Cache-Control: private, no-cache` (a browser
  may keep it but must revalidate, which the ETag makes cheap; a shared cache must not keep it) and
  `Vary: Authorization, X-API-Key`, unless the route set its own Cache-Control.
- Answers that carry a secret (new API keys, tokens, webhook secrets) are `Cache-Control: no-store`,
  whatever the service said.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterable

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.asgi import BodyChunks, header, on_response_start
from shared.context import request_context, span_of
from shared.contract import NO_STORE, SECRET_ROUTES

PRIVATE = b"private, no-cache"
VARY_CREDENTIALS = "Authorization, X-API-Key"
# Bodies larger than this are streamed on without an ETag rather than held in memory.
MAX_ETAG_BYTES = 4 * 1024 * 1024
# Headers a 304 keeps (RFC 9110 section 15.4.5).
NOT_MODIFIED_HEADERS = frozenset({b"cache-control", b"content-location", b"date", b"etag", b"expires", b"vary"})


def weak_etag(body: bytes) -> bytes:
    digest = base64.urlsafe_b64encode(hashlib.sha256(body).digest()[:16]).rstrip(b"=")
    return b'W/"' + digest + b'"'


def _opaque(tag: bytes) -> bytes:
    tag = tag.strip()
    return tag[2:] if tag.startswith(b"W/") else tag


def matches(if_none_match: bytes, etag: bytes) -> bool:
    """Weak comparison, as If-None-Match requires."""
    if if_none_match.strip() == b"*":
        return True
    wanted = _opaque(etag)
    return any(_opaque(candidate) == wanted for candidate in if_none_match.split(b","))


class CachingMiddleware:
    def __init__(self, app: ASGIApp, *, etag: bool, secret_routes: Iterable[tuple[str, str]] = SECRET_ROUTES) -> None:
        self.app = app
        self.etag = etag
        self.secret_routes = frozenset(secret_routes)

    def _is_secret(self, scope: Scope) -> bool:
        route = scope.get("route")
        return route is not None and (scope["method"], getattr(route, "path", "")) in self.secret_routes

    def _cache_headers(self, scope: Scope, message: Message) -> None:
        headers = MutableHeaders(scope=message)
        if self._is_secret(scope):
            headers["cache-control"] = NO_STORE
            return
        identity = request_context(scope).principal
        if identity is None or identity.tenant_id is None:
            return
        if "cache-control" not in headers:
            headers.raw.append((b"cache-control", PRIVATE))
        headers.add_vary_header(VARY_CREDENTIALS)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if not self.etag or scope["method"] != "GET":
            await self.app(scope, receive, on_response_start(send, lambda message: self._cache_headers(scope, message)))
            return
        await self._conditional(scope, receive, send)

    async def _conditional(self, scope: Scope, receive: Receive, send: Send) -> None:
        if_none_match = header(scope, b"if-none-match")
        start: Message | None = None
        held = BodyChunks()
        buffering = False

        async def flush() -> None:
            nonlocal buffering
            buffering = False
            assert start is not None
            await send(start)
            for chunk in held.chunks:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            held.chunks.clear()

        async def capture(message: Message) -> None:
            nonlocal start, buffering
            if message["type"] == "http.response.start":
                self._cache_headers(scope, message)
                content_type = MutableHeaders(scope=message).get("content-type", "")
                if message["status"] == 200 and not content_type.startswith("text/event-stream"):
                    start, buffering = message, True
                    return
                await send(message)
                return
            if message["type"] != "http.response.body" or not buffering:
                await send(message)
                return
            held.add(message.get("body", b""))
            if message.get("more_body", False):
                if held.size > MAX_ETAG_BYTES:
                    await flush()
                return
            await self._finish(scope, start, held.joined(), if_none_match, send)

        await self.app(scope, receive, capture)

    async def _finish(
        self, scope: Scope, start: Message | None, body: bytes, if_none_match: bytes | None, send: Send
    ) -> None:
        assert start is not None
        headers = MutableHeaders(scope=start)
        etag = headers.get("etag", "").encode("latin-1") or weak_etag(body)
        headers["etag"] = etag.decode("latin-1")
        if if_none_match is not None and matches(if_none_match, etag):
            span_of(scope).add_event("cache.not_modified", {"http.response.status_code": 304})
            kept = [(k, v) for k, v in headers.raw if k in NOT_MODIFIED_HEADERS]
            await send({"type": "http.response.start", "status": 304, "headers": kept})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        await send(start)
        await send({"type": "http.response.body", "body": body, "more_body": False})
