"""Caching rules of the answers: what a browser or a shared cache may keep, and conditional GETs.

- A GET answered 200 gets a weak ETag (a SHA-256 of the body, unless the service sent its own), and a
  GET whose `If-None-Match` matches it is answered 304 without the body. The work upstream is still
  done; the client saves the transfer. Weak, because gzip further out changes the bytes, not the
  meaning.
- An answer to an authenticated caller is tenant data: `Cache-Control: private, no-cache` (a browser
  may keep it but must revalidate, which the ETag makes cheap; a shared cache must not keep it) and
  `Vary: Authorization, X-API-Key`, unless the route set its own Cache-Control.
- Answers that carry a secret (new API keys, tokens, webhook secrets: the routes whose row says
  `secret`) are `Cache-Control: no-store`, whatever the service said.

The edge applies these to a forwarded route's answer, which it holds whole (`finish`), and to the
answers of the routes FastAPI runs, as they stream out (`ConditionalAnswer`).
"""

from __future__ import annotations

import base64
import hashlib

from starlette.types import Message, Send

from gateway.edge.hygiene import add_vary
from shared.asgi import BodyChunks

CACHE_CONTROL = b"cache-control"
NO_STORE = b"no-store"
PRIVATE = b"private, no-cache"
VARY_CREDENTIALS = b"Authorization, X-API-Key"
ETAG = b"etag"
# Bodies larger than this are streamed on without an ETag rather than held in memory.
MAX_ETAG_BYTES = 4 * 1024 * 1024
# Headers a 304 keeps (RFC 9110 section 15.4.5).
NOT_MODIFIED_HEADERS = frozenset({b"cache-control", b"content-location", b"date", b"etag", b"expires", b"vary"})
EVENT_STREAM = b"text/event-stream"


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


def _value(raw: list[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    for key, value in raw:
        if key == name:
            return value
    return None


def cache_headers(raw: list[tuple[bytes, bytes]], *, secret: bool, tenant: bool) -> None:
    """Sets the answer's Cache-Control (and Vary) by who asked and what the answer holds."""
    if secret:
        raw[:] = [(key, value) for key, value in raw if key != CACHE_CONTROL]
        raw.append((CACHE_CONTROL, NO_STORE))
        return
    if not tenant:
        return
    if _value(raw, CACHE_CONTROL) is None:
        raw.append((CACHE_CONTROL, PRIVATE))
    add_vary(raw, VARY_CREDENTIALS)


def conditional(raw: list[tuple[bytes, bytes]], body: bytes, if_none_match: bytes | None) -> bool:
    """Tags a GET's 200 answer (`raw` gains the ETag); True when `If-None-Match` matches it, and the
    answer is then a 304 with only the headers a 304 keeps (`raw` is cut down to them)."""
    etag = _value(raw, ETAG)
    if etag is None:
        etag = weak_etag(body)
        raw.append((ETAG, etag))
    if if_none_match is None or not matches(if_none_match, etag):
        return False
    raw[:] = [(key, value) for key, value in raw if key in NOT_MODIFIED_HEADERS]
    return True


def taggable(status: int, raw: list[tuple[bytes, bytes]]) -> bool:
    """Whether a GET's answer gets an ETag: a 200 that is not an event stream."""
    return status == 200 and not (_value(raw, b"content-type") or b"").startswith(EVENT_STREAM)


class ConditionalAnswer:
    """A `send` for an answer that streams out of a route: a GET's 200 is held until its end to be
    tagged (up to `MAX_ETAG_BYTES`, past which it streams on untagged), and answered 304 when
    `If-None-Match` matches."""

    def __init__(self, send: Send, if_none_match: bytes | None) -> None:
        self.send = send
        self.if_none_match = if_none_match
        self.start: Message | None = None
        self.held = BodyChunks()

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            if taggable(message["status"], message.get("headers", [])):
                self.start = message
                return
            await self.send(message)
            return
        if message["type"] != "http.response.body" or self.start is None:
            await self.send(message)
            return
        self.held.add(message.get("body", b""))
        if message.get("more_body", False):
            if self.held.size > MAX_ETAG_BYTES:
                await self._flush()
            return
        start, self.start = self.start, None
        raw = list(start.get("headers", []))
        body = self.held.joined()
        if conditional(raw, body, self.if_none_match):
            await self.send({"type": "http.response.start", "status": 304, "headers": raw})
            await self.send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        await self.send({**start, "headers": raw})
        await self.send({"type": "http.response.body", "body": body, "more_body": False})

    async def _flush(self) -> None:
        start, self.start = self.start, None
        assert start is not None
        await self.send(start)
        for chunk in self.held.chunks:
            await self.send({"type": "http.response.body", "body": chunk, "more_body": True})
        self.held.chunks.clear()
