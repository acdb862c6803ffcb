"""The SQL spans: a CLIENT span for each statement a service's engine runs (`instrument_engine`),
beside the server and client spans of `shared/telemetry.py`. A module of its own so that a process
without a database (the gateway) never loads SQLAlchemy."""

from __future__ import annotations

import re
from typing import Any

from opentelemetry.instrumentation.utils import is_instrumentation_enabled
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.semconv.attributes.db_attributes import (
    DB_COLLECTION_NAME,
    DB_NAMESPACE,
    DB_OPERATION_NAME,
    DB_QUERY_TEXT,
    DB_SYSTEM_NAME,
)
from opentelemetry.semconv.attributes.error_attributes import ERROR_TYPE
from opentelemetry.semconv.attributes.server_attributes import SERVER_ADDRESS, SERVER_PORT
from opentelemetry.trace import Span, SpanKind, StatusCode
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine

# The table a statement is about: the first one it reads, writes, joins or locks (quotes and a schema
# kept out). Not a SQL parser: a name for the span, and nothing else depends on it.
_SQL_TABLE = re.compile(r'\b(?:FROM|INTO|UPDATE|JOIN|TABLE)\s+(?:"?\w+"?\.)?"?(\w+)"?', re.IGNORECASE)
_SQL_OPERATION = re.compile(r"^\s*(?:/\*.*?\*/\s*)*(\w+)", re.DOTALL)


def sql_span_name(statement: str) -> tuple[str, str | None, str]:
    """A statement's operation and table, and its span's name: `<OPERATION> <table>`."""
    found = _SQL_OPERATION.match(statement)
    operation = found[1].upper() if found else "SQL"
    table = _SQL_TABLE.search(statement)
    name = table[1] if table else None
    return operation, name, f"{operation} {name}" if name else operation


class SqlSpans:
    """A CLIENT span for each statement an engine runs, named `<OPERATION> <table>` with the stable
    database conventions (`db.system.name`, `db.namespace`, `db.operation.name`,
    `db.collection.name`, `db.query.text`: the statement with its parameters as placeholders, never
    their values). Nothing while instrumentation is suppressed (probes, idle background loops)."""

    def __init__(self, engine: AsyncEngine, provider: TracerProvider) -> None:
        self.tracer = provider.get_tracer("portico.sql")
        url = engine.url
        system = {"postgresql": "postgresql", "sqlite": "sqlite"}.get(url.get_backend_name(), url.get_backend_name())
        self.attributes: dict[str, str | int] = {DB_SYSTEM_NAME: system}
        if url.database:
            self.attributes[DB_NAMESPACE] = url.database
        if url.host:
            self.attributes[SERVER_ADDRESS] = url.host
        if url.port:
            self.attributes[SERVER_PORT] = url.port
        event.listen(engine.sync_engine, "before_cursor_execute", self._before)
        event.listen(engine.sync_engine, "after_cursor_execute", self._after)
        event.listen(engine.sync_engine, "handle_error", self._failed)

    def _before(self, conn: Any, cursor: Any, statement: str, params: Any, context: Any, many: bool) -> None:
        if not is_instrumentation_enabled():
            return
        operation, table, name = sql_span_name(statement)
        attributes = {**self.attributes, DB_OPERATION_NAME: operation, DB_QUERY_TEXT: statement}
        if table is not None:
            attributes[DB_COLLECTION_NAME] = table
        context._portico_span = self.tracer.start_span(name, kind=SpanKind.CLIENT, attributes=attributes)

    @staticmethod
    def _after(conn: Any, cursor: Any, statement: str, params: Any, context: Any, many: bool) -> None:
        span: Span | None = getattr(context, "_portico_span", None)
        if span is not None:
            span.end()

    @staticmethod
    def _failed(exception_context: Any) -> None:
        span: Span | None = getattr(exception_context.execution_context, "_portico_span", None)
        if span is not None:
            span.set_attribute(ERROR_TYPE, type(exception_context.original_exception).__qualname__)
            span.set_status(StatusCode.ERROR)
            span.end()


def instrument_engine(engine: AsyncEngine, provider: TracerProvider) -> None:
    """SQL spans for one engine, through this app's provider (so that several apps in one process,
    as in tests, stay apart)."""
    SqlSpans(engine, provider)
