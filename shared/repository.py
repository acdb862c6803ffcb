"""The base of every service's repository: the queries all of them run the same way.

A repository holds SQL only. It flushes, so the database checks what it must (unique keys, foreign
keys) inside the caller's transaction, but it never commits or rolls back: the transaction belongs
to the request's session (`SessionDep`, committed when the route returns, rolled back when it
raises) or to a service function that opens its own (`transaction`). A unique key that is already
taken becomes a typed error (`flush_unique`) or a False (`insert_if_absent`), never a rollback here.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from sqlalchemy import ColumnElement, and_, inspect, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import DeclarativeBase, InstrumentedAttribute, Mapped, make_transient_to_detached

from shared.db import dialect_insert, table_of
from shared.errors import NotFound, PorticoError
from shared.pagination import Cursor, Page, PageQuery, page_of


class TenantRow:
    """What `Repository.get` and `Repository.page` rely on: a string id, the tenant it belongs to, and
    when it was created. Models list it as a base for the type checker; each maps the columns itself
    (declared here only for type checking, so it adds nothing to any table)."""

    if TYPE_CHECKING:
        id: Mapped[str]
        tenant_id: Mapped[str]
        created_at: Mapped[datetime]


M = TypeVar("M", bound=TenantRow)
T = TypeVar("T")
R = TypeVar("R", bound="Repository")


@dataclass(frozen=True)
class ChildRows(Generic[M]):
    """The `model` rows that belong to a row of `parent`, whose id `link` holds: what
    `Repository.list_under` lists. `missing` is the 404 for a parent the tenant does not have."""

    model: type[M]
    link: InstrumentedAttribute[str]
    parent: type[TenantRow]
    missing: type[NotFound]


class Repository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def add(self, row: object) -> None:
        self.session.add(row)
        await self.session.flush()

    async def save(self) -> None:
        """Writes the changes made to loaded rows."""
        await self.session.flush()

    async def flush_unique(self, conflict: PorticoError) -> None:
        """Flushes pending changes; a unique key already taken raises `conflict`. (Made before the
        flush: a failed flush expires the rows it was writing.) The transaction is then unusable, and
        its owner rolls it back as the error passes."""
        try:
            await self.session.flush()
        except IntegrityError as exc:
            raise conflict from exc

    async def insert_if_absent(self, row: DeclarativeBase) -> bool:
        """Inserts `row` unless one of its unique keys is taken (ON CONFLICT DO NOTHING); True when it
        was inserted, and the row is then part of the session like any loaded one. The transaction
        stays usable either way, so the caller can read the row that was there first."""
        mapper = inspect(row).mapper
        table = table_of(type(row))
        given = {attr.columns[0].key: getattr(row, attr.key) for attr in mapper.column_attrs if attr.key in vars(row)}
        inserted = (
            await self.session.execute(
                dialect_insert(self.session, table).values(given).on_conflict_do_nothing().returning(*table.c)
            )
        ).one_or_none()
        if inserted is None:
            return False
        # Column defaults were applied by the INSERT: take them as stored, so nothing is left unloaded.
        for attr in mapper.column_attrs:
            setattr(row, attr.key, inserted._mapping[attr.columns[0]])
        make_transient_to_detached(row)
        self.session.add(row)
        return True

    async def get(self, model: type[M], tenant_id: str, row_id: str, *, lock: bool = False) -> M | None:
        """The tenant's row, or None: another tenant's row is as missing as one that never existed.
        `lock`: held until the transaction ends (SELECT ... FOR UPDATE). Always read afresh, since
        conditional UPDATE statements change rows behind the session's back."""
        query = select(model).where(model.id == row_id, model.tenant_id == tenant_id)
        if lock:
            query = query.with_for_update()
        return await self.session.scalar(query.execution_options(populate_existing=True))

    async def one(
        self, model: type[M], tenant_id: str, row_id: str, missing: type[NotFound], *, lock: bool = False
    ) -> M:
        """`get`, or `missing` (a 404 naming the id) when there is no such row of the tenant."""
        row = await self.get(model, tenant_id, row_id, lock=lock)
        if row is None:
            raise missing.for_id(row_id)
        return row

    async def page(
        self, model: type[M], tenant_id: str, cursor: Cursor | None, limit: int, *where: ColumnElement[bool]
    ) -> Sequence[M]:
        """A page of the tenant's rows, newest first, after `cursor`: up to `limit + 1` rows, the extra
        one telling that another page follows (`shared.pagination.page_of`)."""
        query = select(model).where(model.tenant_id == tenant_id, *where)
        if cursor is not None:
            query = query.where(older_than(model.created_at, model.id, cursor))
        query = query.order_by(model.created_at.desc(), model.id.desc()).limit(limit + 1)
        return (await self.session.scalars(query)).all()

    async def list_page(
        self,
        model: type[M],
        tenant_id: str,
        position: Cursor | None,
        limit: int,
        convert: Callable[[M], T],
        *where: ColumnElement[bool],
    ) -> Page[T]:
        """`page`, as the `{"items", "next_cursor"}` a list route answers."""
        return page_of(await self.page(model, tenant_id, position, limit, *where), limit, convert)

    async def list_under(
        self, rows: ChildRows[M], tenant_id: str, parent_id: str, query: PageQuery, convert: Callable[[M], T]
    ) -> Page[T]:
        """A page of the `rows` that belong to one parent row. The tenant must have that parent
        (`rows.missing`, a 404, otherwise); a bad cursor is judged before that."""
        position = query.position()
        await self.one(rows.parent, tenant_id, parent_id, rows.missing)
        return await self.list_page(rows.model, tenant_id, position, query.limit, convert, rows.link == parent_id)


def older_than(
    created_col: InstrumentedAttribute[datetime], id_col: InstrumentedAttribute[str], cursor: Cursor
) -> ColumnElement[bool]:
    """The rows after `cursor` in newest-first order."""
    return or_(created_col < cursor.created_at, and_(created_col == cursor.created_at, id_col < cursor.id))


def matching(*filters: tuple[InstrumentedAttribute[Any], object]) -> list[ColumnElement[bool]]:
    """Equality conditions for the filters a client gave: `(column, value)` pairs, None meaning
    not filtered."""
    return [column == value for column, value in filters if value is not None]


@contextlib.asynccontextmanager
async def transaction(
    sessionmaker: async_sessionmaker[AsyncSession], repository: Callable[[AsyncSession], R]
) -> AsyncIterator[R]:
    """A repository in a transaction of its own, committed when the block ends and rolled back when it
    raises: for service functions that span several transactions (the order saga) and for workers."""
    async with sessionmaker.begin() as session:
        yield repository(session)
