"""Small pieces every pure ASGI stage needs: reading request headers and keeping a response body as it passes.

Headers are read straight from the scope's raw list, as bytes: no `Headers` object, no decoding and
no exception for a missing header, since several stages run this on every request.
"""

from __future__ import annotations

from collections.abc import Iterable

from starlette.types import Scope


def header(scope: Scope, name: bytes) -> bytes | None:
    """The first value of the lower-case header `name`, or None."""
    raw: list[tuple[bytes, bytes]] = scope["headers"]
    for key, value in raw:
        if key == name:
            return value
    return None


def headers(scope: Scope, *names: bytes) -> list[bytes | None]:
    """The first value of each lower-case header in `names` (None where absent), in one pass."""
    return find_headers(scope["headers"], *names)


def find_headers(raw: Iterable[tuple[bytes, bytes]], *names: bytes) -> list[bytes | None]:
    """`headers` over raw header pairs (names in lower case), as a server's protocol holds them."""
    found: list[bytes | None] = [None] * len(names)
    for key, value in raw:
        if key in names:
            index = names.index(key)
            if found[index] is None:
                found[index] = value
    return found


def declared_length(value: bytes | None) -> int:
    """The body size a `Content-Length` value declares; -1 without one, or for one that is not a
    number (which the body's reader refuses)."""
    try:
        return int(value) if value is not None else -1
    except ValueError:
        return -1


def header_list(scope: Scope, name: bytes) -> list[bytes]:
    """Every value of a header that may be repeated (X-Forwarded-For)."""
    raw: list[tuple[bytes, bytes]] = scope["headers"]
    return [value for key, value in raw if key == name]


class BodyChunks:
    """The chunks of a response body as they pass, and their total size. Past `keep_up_to` bytes a
    chunk is counted but not kept (the body is then incomplete)."""

    __slots__ = ("chunks", "keep_up_to", "size")

    def __init__(self, keep_up_to: int | None = None) -> None:
        self.chunks: list[bytes] = []
        self.size = 0
        self.keep_up_to = keep_up_to

    def add(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.keep_up_to is None or self.size <= self.keep_up_to:
            self.chunks.append(chunk)

    @property
    def complete(self) -> bool:
        return self.keep_up_to is None or self.size <= self.keep_up_to

    def joined(self) -> bytes:
        return b"".join(self.chunks)
