"""Cursor pagination for every list: `limit` and an opaque `cursor` in, `{"items", "next_cursor"}` out.

A cursor is a keyset position (the sort key of the last item served), so a page costs the same at any
depth and rows added while a client pages through never shift or repeat what it sees. Lists are sorted
newest first on (created_at, id); the id breaks ties between rows created in the same instant.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Generic, Protocol, TypeVar

from fastapi import Depends, Query
from pydantic import BaseModel

from shared.errors import ValidationFailed

DEFAULT_LIMIT = 50
MAX_LIMIT = 200

T = TypeVar("T")

LimitQuery = Annotated[
    int, Query(ge=1, le=MAX_LIMIT, description=f"Items per page (default {DEFAULT_LIMIT}, at most {MAX_LIMIT}).")
]
CursorQuery = Annotated[str | None, Query(max_length=512, description="The `next_cursor` of the previous page.")]


@dataclass(frozen=True, slots=True)
class PageQuery:
    """What a list route was asked for: `limit` and the raw `cursor` (the service decodes it, so a
    forged cursor is judged after the route's other parameters)."""

    limit: int
    cursor: str | None

    def position(self) -> Cursor | None:
        """Where the page starts; a cursor this API did not hand out is a 422 naming `cursor`."""
        return Cursor.decode(self.cursor)


async def page_query(limit: LimitQuery = DEFAULT_LIMIT, cursor: CursorQuery = None) -> PageQuery:
    return PageQuery(limit, cursor)


PageDep = Annotated[PageQuery, Depends(page_query)]


class InvalidCursor(ValidationFailed, code="INVALID_CURSOR", title="Invalid cursor"):
    """A `cursor` that is not the `next_cursor` of an earlier page."""


class Page(BaseModel, Generic[T]):
    items: list[T]
    next_cursor: str | None


@dataclass(frozen=True, slots=True)
class Cursor:
    created_at: datetime
    id: str

    def encode(self) -> str:
        raw = json.dumps([self.created_at.isoformat(), self.id], separators=(",", ":")).encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @classmethod
    def decode(cls, value: str | None) -> Cursor | None:
        """The position a client sent back; anything not made by `encode` is a 422 naming `cursor`."""
        if value is None:
            return None
        try:
            raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
            created, item_id = json.loads(raw)
            created_at = datetime.fromisoformat(created)
            if not isinstance(item_id, str) or created_at.tzinfo is None:
                raise ValueError(value)
            # A forged cursor must not reach the database with what it cannot store or compare: a
            # control character (PostgreSQL refuses NUL) or a time outside the range once in UTC.
            if not item_id.isprintable():
                raise ValueError(value)
            created_at = created_at.astimezone(UTC)
        except (ValueError, TypeError, OverflowError, binascii.Error, UnicodeDecodeError):
            raise InvalidCursor(
                "The cursor is not one this list handed out.",
                errors=[{"loc": ["query", "cursor"], "field": "cursor", "msg": "invalid cursor", "type": "cursor"}],
            ) from None
        return cls(created_at, item_id)


class Keyed(Protocol):
    @property
    def created_at(self) -> datetime: ...

    @property
    def id(self) -> str: ...


R = TypeVar("R", bound=Keyed)


def page_of(rows: Sequence[R], limit: int, convert: Callable[[R], T]) -> Page[T]:
    """Builds a page from up to `limit + 1` fetched rows: the extra one only says that more follow."""
    shown = rows[:limit]
    next_cursor = Cursor(shown[-1].created_at, shown[-1].id).encode() if len(rows) > limit else None
    return Page[T](items=[convert(row) for row in shown], next_cursor=next_cursor)
