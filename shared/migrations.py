"""Alembic, driven from code: each service keeps its scripts in `<service>/alembic/` and its env.py
calls `run_env`. Works on SQLite (aiosqlite) and PostgreSQL (asyncpg)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from alembic import command, context
from alembic.config import Config
from sqlalchemy import MetaData, pool
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from shared.db import ensure_sqlite_dir


def alembic_config(service_dir: Path, database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(service_dir / "alembic"))
    config.attributes["database_url"] = database_url
    return config


def upgrade(service_dir: Path, database_url: str, revision: str = "head") -> None:
    """Migrates a database to `revision`. Blocking: call it from a thread inside an event loop."""
    ensure_sqlite_dir(database_url)
    command.upgrade(alembic_config(service_dir, database_url), revision)


def run_env(target_metadata: MetaData) -> None:
    """The body of every service's alembic env.py."""
    url: str = context.config.attributes["database_url"]

    def do_run(connection: Connection) -> None:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            render_as_batch=connection.dialect.name == "sqlite",
            compare_type=True,
        )
        with context.begin_transaction():
            context.run_migrations()

    async def run_async() -> None:
        engine = create_async_engine(url, poolclass=pool.NullPool)
        async with engine.connect() as connection:
            await connection.run_sync(do_run)
            await connection.commit()
        await engine.dispose()

    if context.is_offline_mode():
        context.configure(url=url, target_metadata=target_metadata, literal_binds=True)
        with context.begin_transaction():
            context.run_migrations()
    else:
        asyncio.run(run_async())
