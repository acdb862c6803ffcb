"""The ETag stage on answers larger than it may hold in memory: streamed on whole, without an ETag,
and never answered 304 (there is no tag to match)."""

from __future__ import annotations

import hashlib

import httpx
import pytest
from starlette.types import Receive, Scope, Send

from gateway.edge.caching import MAX_ETAG_BYTES, ConditionalAnswer, weak_etag
from shared.asgi import header

CHUNK = 64 * 1024


def streaming(size: int):
    """An app answering `size` bytes in chunks of 64 KiB."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        chunks = [bytes([index % 251]) * CHUNK for index in range(size // CHUNK)]
        chunks.append(b"z" * (size % CHUNK))
        for index, chunk in enumerate(chunks):
            await send({"type": "http.response.body", "body": chunk, "more_body": index < len(chunks) - 1})

    return app


def client_for(app) -> httpx.AsyncClient:
    """`app` behind the edge's conditional answer, as a route FastAPI runs is."""

    async def conditional(scope: Scope, receive: Receive, send: Send) -> None:
        await app(scope, receive, ConditionalAnswer(send, header(scope, b"if-none-match")))

    return httpx.AsyncClient(transport=httpx.ASGITransport(app=conditional), base_url="http://test")


def expected_body(size: int) -> bytes:
    return b"".join(bytes([index % 251]) * CHUNK for index in range(size // CHUNK)) + b"z" * (size % CHUNK)


async def test_an_answer_over_the_limit_streams_on_without_an_etag():
    size = MAX_ETAG_BYTES + 3 * CHUNK + 17
    app = streaming(size)
    async with client_for(app) as client:
        response = await client.get("/big", headers={"If-None-Match": "*"})
    assert response.status_code == 200  # no tag was made, so even "*" does not make it a 304
    assert "etag" not in response.headers
    assert len(response.content) == size
    assert hashlib.sha256(response.content).digest() == hashlib.sha256(expected_body(size)).digest()


@pytest.mark.parametrize("size", [MAX_ETAG_BYTES - 1, MAX_ETAG_BYTES])
async def test_an_answer_within_the_limit_gets_its_etag_and_304(size):
    app = streaming(size)
    async with client_for(app) as client:
        response = await client.get("/big")
        assert response.status_code == 200
        assert response.headers["etag"] == weak_etag(expected_body(size)).decode()
        again = await client.get("/big", headers={"If-None-Match": response.headers["etag"]})
    assert again.status_code == 304
    assert again.content == b""
