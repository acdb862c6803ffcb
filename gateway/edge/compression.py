"""gzip at the edge, as Starlette's `GZipMiddleware` does it: an answer of `minimum` bytes or more is
compressed when the client sends `Accept-Encoding: gzip` (and its type is worth compressing), and says
`Vary: Accept-Encoding` either way.

The edge compresses the answers it holds whole (a forwarded route's, its own) here; the answers of
the routes FastAPI runs stream through Starlette's own responders (`responder`). Either way the
compression is the last thing done to an answer: the ETag and the idempotency record are of the
uncompressed bytes, so a replay fits any client.
"""

from __future__ import annotations

import asyncio
import zlib

from starlette.middleware.gzip import DEFAULT_EXCLUDED_CONTENT_TYPES, GZipResponder, IdentityResponder
from starlette.types import ASGIApp, Scope

from gateway.edge.hygiene import add_vary
from shared.asgi import header

# Bodies this large are compressed in a thread: inline, they would hold the event loop up.
THREAD_MINIMUM = 128 * 1024
_EXCLUDED = frozenset(content_type.encode("ascii") for content_type in DEFAULT_EXCLUDED_CONTENT_TYPES)
_CONTENT_ENCODING = b"content-encoding"


def _excluded(content_type: bytes) -> bool:
    media_type = content_type.partition(b";")[0].strip().lower()
    return media_type in _EXCLUDED or media_type.partition(b"/")[0] + b"/*" in _EXCLUDED


def _gzip(body: bytes, level: int) -> bytes:
    compressor = zlib.compressobj(level, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    return compressor.compress(body) + compressor.flush()


class Compression:
    def __init__(self, *, minimum: int, level: int) -> None:
        self.minimum = minimum
        self.level = level

    @staticmethod
    def wanted(scope: Scope) -> bool:
        return b"gzip" in (header(scope, b"accept-encoding") or b"")

    async def encode(self, scope: Scope, raw: list[tuple[bytes, bytes]], body: bytes) -> bytes:
        """The body to send (compressed when it should be; `raw` then says so)."""
        if len(body) < self.minimum:
            return body
        add_vary(raw, b"Accept-Encoding")
        content_type = b""
        for name, value in raw:
            if name == _CONTENT_ENCODING:
                return body
            if name == b"content-type":
                content_type = value
        if _excluded(content_type) or not self.wanted(scope):
            return body
        if len(body) >= THREAD_MINIMUM:
            compressed = await asyncio.to_thread(_gzip, body, self.level)
        else:
            compressed = _gzip(body, self.level)
        raw.append((_CONTENT_ENCODING, b"gzip"))
        return compressed

    def responder(self, scope: Scope, app: ASGIApp) -> ASGIApp:
        """`app`'s answers, compressed as they stream out when the client asks for it."""
        if self.wanted(scope):
            return GZipResponder(app, self.minimum, compresslevel=self.level)
        return IdentityResponder(app, self.minimum)
