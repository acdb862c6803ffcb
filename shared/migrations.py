"""Alembic, driven from code: each service keeps its scripts in `<service>/alembic/` and its env.py
calls `run_env`. Works on SQLite (aiosqlite) and PostgreSQL (asyncpg).

A database already at head is left alone (`at_head`): the scripts' head is read from the revision
identifiers written in the versions directory's files, without importing them (they import the
service's column types, and with them much of the service), the database's revision from its
`alembic_version` table, and only a database behind is migrated."""

from __future__ import annotations

import ast
import asyncio
import logging
from pathlib import Path

from alembic import command, context
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import MetaData, inspect, pool, text
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import create_async_engine

logger = logging.getLogger("portico.migrations")


def alembic_config(service_dir: Path, database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(service_dir / "alembic"))
    config.attributes["database_url"] = database_url
    return config


def _identifiers(script: Path) -> tuple[str, tuple[str, ...]] | None:
    """A revision file's `revision` and `down_revision`, as written in it (literals, as alembic's
    template writes them); None when they are not literals."""
    found: dict[str, object] = {}
    for node in ast.parse(script.read_bytes(), str(script)).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target, value = node.targets[0], node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            target, value = node.target, node.value
        else:
            continue
        if isinstance(target, ast.Name) and target.id in ("revision", "down_revision"):
            try:
                found[target.id] = ast.literal_eval(value)
            except ValueError:
                return None
    revision, down = found.get("revision"), found.get("down_revision")
    if not isinstance(revision, str):
        return None
    if down is None:
        return revision, ()
    if isinstance(down, str):
        return revision, (down,)
    if isinstance(down, tuple | list) and all(isinstance(d, str) for d in down):
        return revision, tuple(down)
    return None


def head_revisions(service_dir: Path) -> set[str]:
    """The head revisions of a service's scripts: those no other revision revises. Read from the
    versions directory's files without importing them; when one is not written as alembic writes
    them, from alembic's script directory, which imports them all."""
    versions = service_dir / "alembic" / "versions"
    revisions: dict[str, tuple[str, ...]] = {}
    for script in versions.glob("*.py"):
        identifiers = _identifiers(script)
        if identifiers is None:
            return set(ScriptDirectory(str(service_dir / "alembic")).get_heads())
        revisions[identifiers[0]] = identifiers[1]
    revised = {down for downs in revisions.values() for down in downs}
    return set(revisions) - revised


def current_revisions(database_url: str) -> set[str]:
    """The revisions a database is at (its `alembic_version`): none for a new database. A SQLite file
    that does not exist is not created. Blocking, as `upgrade`."""
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite":
        database = url.database
        if not database or database == ":memory:" or not Path(database).exists():
            return set()

    def select(connection: Connection) -> set[str]:
        # Alembic's default version table, which env.py keeps.
        if not inspect(connection).has_table("alembic_version"):
            return set()
        return {revision for (revision,) in connection.execute(text("SELECT version_num FROM alembic_version"))}

    async def read() -> set[str]:
        engine = create_async_engine(database_url, poolclass=pool.NullPool)
        try:
            async with engine.connect() as connection:
                return await connection.run_sync(select)
        finally:
            await engine.dispose()

    return asyncio.run(read())


def at_head(service_dir: Path, database_url: str) -> bool:
    """Whether a database is at its service's head revision. Blocking, as `upgrade`."""
    return current_revisions(database_url) == head_revisions(service_dir)


def upgrade(service_dir: Path, database_url: str, revision: str = "head") -> None:
    """Migrates a database to `revision`; to head only when it is not there already. Blocking: call it
    from a thread inside an event loop."""
    # Imported here: what `at_head` needs (`make run` asks it of every database before starting
    # anything) is much less than shared.db imports.
    from shared.db import ensure_sqlite_dir

    ensure_sqlite_dir(database_url)
    if revision == "head" and at_head(service_dir, database_url):
        logger.info("already at head, nothing to migrate")
        return
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
