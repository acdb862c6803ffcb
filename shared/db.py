"""Async database engine, the request-scoped session, what SQL errors mean (and answer), and the
readiness check of a service's database."""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, TypeVar

from fastapi import Depends, FastAPI, Request
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import BigInteger, DateTime, ForeignKey, Integer, Table, event, text
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import CursorResult, Dialect, Result, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, MappedColumn, Relationship, mapped_column, relationship
from sqlalchemy.pool import QueuePool
from sqlalchemy.types import TypeDecorator
from starlette.responses import Response

from shared.errors import DatabaseUnavailable, problem_response, retry_in
from shared.request_id import request_id_of
from shared.settings import BaseServiceSettings
from shared.state import ServiceState, app_state

# The logger of every error that becomes an answer (`shared/errors.py`).
logger = logging.getLogger("portico.errors")


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite drops the offset on its own)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetimes are not stored")
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id() -> str:
    """Primary keys of rows clients see: random UUIDs, so ids reveal no count or order."""
    return str(uuid.uuid4())


# SQLite only autoincrements an INTEGER PRIMARY KEY.
AutoIncrement = BigInteger().with_variant(Integer(), "sqlite")


class SerialKey:
    """A primary key `id` that the database numbers, first among the table's columns: for rows that
    clients never address on their own (an order's items, a delivery's attempts)."""

    id: Mapped[int] = mapped_column(AutoIncrement, primary_key=True, autoincrement=True, sort_order=-1)


def owner_key(column: str) -> MappedColumn[str]:
    """The column of a row that exists only as part of another, naming that one (`column`, as
    "orders.id"): indexed, and the row is deleted with its owner."""
    return mapped_column(ForeignKey(column, ondelete="CASCADE"), index=True)


def owned_rows(order_by: str) -> Relationship[Any]:
    """A parent's collection of rows that exist only as part of it (an order's items): loaded with the
    parent (one more SELECT for all the parents a query read), in `order_by` order ("Child.column"),
    and deleted with it, as is a row taken out of the collection."""
    return relationship(lazy="selectin", order_by=order_by, cascade="all, delete-orphan")


def is_sqlite(url: str) -> bool:
    return url.startswith("sqlite")


def ensure_sqlite_dir(url: str) -> None:
    """Creates the folder of a SQLite file database, so a fresh checkout runs as is."""
    if not is_sqlite(url):
        return
    database = make_url(url).database
    if database and database != ":memory:":
        Path(database).parent.mkdir(parents=True, exist_ok=True)


def create_engine(settings: BaseServiceSettings) -> AsyncEngine:
    url = settings.database_url
    ensure_sqlite_dir(url)
    kwargs: dict[str, Any] = {"echo": settings.db_echo, "pool_pre_ping": True}
    if is_sqlite(url):
        # SQLite serialises writers; wait for the lock rather than failing at once.
        kwargs["connect_args"] = {"timeout": 30}
    else:
        kwargs.update(
            pool_size=settings.db_pool_size,
            max_overflow=settings.db_max_overflow,
            pool_timeout=settings.db_pool_timeout_seconds,
        )
    engine = create_async_engine(url, **kwargs)
    if is_sqlite(url):

        @event.listens_for(engine.sync_engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _: Any) -> None:
            cursor = dbapi_conn.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

    return engine


def create_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
    """One session per request: committed when the route returns, rolled back if it raises. The
    request's transaction is this one; repositories never commit or roll back."""
    state: ServiceState[Any, Any] = app_state(request)
    async with state.sessionmaker() as session:
        try:
            yield session
        except BaseException:
            await session.rollback()
            raise
        else:
            await session.commit()


# scope="function": the commit happens before the response is sent, so a failed commit is an error
# the client sees, never a success that was not stored.
SessionDep = Annotated[AsyncSession, Depends(get_session, scope="function")]

R = TypeVar("R")


def on_session(repository: Callable[[AsyncSession], R]) -> Callable[[AsyncSession], Awaitable[R]]:
    """A dependency giving a route `repository` on the request's session:
    `RepoDep = Annotated[InventoryRepository, Depends(on_session(InventoryRepository))]`."""

    # `async def`: FastAPI runs a plain `def` dependency in a thread pool.
    async def dependency(session: SessionDep) -> R:
        return repository(session)

    return dependency


def table_of(model: type[DeclarativeBase]) -> Table:
    """The Table a declarative model maps, typed as one (`__table__` is typed as any FROM clause)."""
    return model.metadata.tables[model.__tablename__]


def rows_changed(result: Result[Any]) -> int:
    """How many rows an UPDATE or DELETE changed. SQLAlchemy types every execution's result as a
    `Result`; those statements' are `CursorResult`s, which count them."""
    if not isinstance(result, CursorResult):
        raise TypeError(f"{type(result).__name__} counts no changed rows: not an UPDATE or DELETE")
    return result.rowcount


def dialect_insert(session: AsyncSession, table: Table) -> postgresql.Insert | sqlite.Insert:
    """An INSERT that can take ON CONFLICT: the clause is the same on both backends, but each
    dialect has its own construct."""
    if session.get_bind().dialect.name == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)


# PostgreSQL's SQLSTATE for a lock wait that ran past `lock_timeout`.
LOCK_NOT_AVAILABLE = "55P03"


class LockNotAvailable(Exception):
    """A statement waited for a lock longer than its lock timeout allows."""


@contextlib.contextmanager
def raising_lock_not_available() -> Iterator[None]:
    """Turns the database's lock timeout into `LockNotAvailable`; other errors pass unchanged."""
    try:
        yield
    except sa_exc.DBAPIError as exc:
        if getattr(exc.orig, "sqlstate", None) != LOCK_NOT_AVAILABLE:
            raise
        raise LockNotAvailable(str(exc.orig)) from exc


def install_database_errors(app: FastAPI, on_pool_timeout: Callable[[], None] | None = None) -> None:
    """A database that refused or dropped the connection, or a pool that had none free in time, is a
    503 `DATABASE_UNAVAILABLE` (the request may succeed later), not a 500; `on_pool_timeout` counts
    the waits for a connection that ran out."""

    async def handler(request: Request, exc: Exception) -> Response:
        logger.error("database unavailable on %s %s: %r", request.method, request.url.path, exc)
        if isinstance(exc, sa_exc.TimeoutError) and on_pool_timeout is not None:
            on_pool_timeout()
        return problem_response(
            DatabaseUnavailable("The service's database is unavailable; try again shortly.", headers=retry_in(1)),
            request_id_of(request.scope),
        )

    for db_error in (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.TimeoutError, ConnectionError):
        app.add_exception_handler(db_error, handler)


async def check_database(state: ServiceState[Any, Any]) -> None:
    """The readiness check of a service's database."""
    async with state.engine.connect() as conn:
        await conn.execute(text("SELECT 1"))


POOL_GAUGES = {
    "portico_db_pool_size": "Connections the pool keeps open.",
    "portico_db_pool_checked_out": "Connections in use.",
    "portico_db_pool_overflow": "Connections open beyond the pool size.",
    "portico_db_pool_waiters": "Requests waiting for a free connection.",
}


class PoolMetrics(Collector):
    """The state of one process's database pool, read when /metrics is scraped:
    `portico_db_pool_size` (connections kept open), `portico_db_pool_checked_out` (in use),
    `portico_db_pool_overflow` (open beyond the size), `portico_db_pool_waiters` (requests waiting for a
    connection) and `portico_db_pool_timeouts_total` (waits that ran out: answered 503)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.engine: AsyncEngine | None = None
        self.timeouts = Counter(
            "portico_db_pool_timeouts_total",
            "Waits for a database connection that ran out (DB_POOL_TIMEOUT_SECONDS) and answered 503.",
            registry=registry,
        )
        registry.register(self)

    def watch(self, engine: AsyncEngine | None) -> None:
        self.engine = engine

    def describe(self) -> Iterator[Metric]:
        """The gauges this collector serves, whether or not a pool is watched yet (the registry and the
        generated metrics reference read their names from here)."""
        for name, documentation in POOL_GAUGES.items():
            yield GaugeMetricFamily(name, documentation, value=0)

    def collect(self) -> Iterator[Metric]:
        pool = self.engine.sync_engine.pool if self.engine is not None else None
        if not isinstance(pool, QueuePool):
            # No engine yet, or SQLite's pool, which keeps no count.
            return
        values = {
            "portico_db_pool_size": pool.size(),
            "portico_db_pool_checked_out": pool.checkedout(),
            "portico_db_pool_overflow": max(0, pool.overflow()),
            "portico_db_pool_waiters": _waiters(pool),
        }
        for name, value in values.items():
            yield GaugeMetricFamily(name, POOL_GAUGES[name], value=value)


def _waiters(pool: QueuePool) -> int:
    """How many are waiting on the pool's queue. SQLAlchemy has no public count: this reads its asyncio
    queue (created on first use), and says 0 when the queue is not of that kind."""
    queue = vars(pool._pool).get("_queue")
    getters = getattr(queue, "_getters", None)
    return sum(1 for waiter in getters if not waiter.done()) if getters else 0
