"""`python -m <process> [serve|migrate|<worker>]`: the entry point of every process."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

import uvicorn
from fastapi import FastAPI

from shared.logging import configure_logging
from shared.serving import serve_workers, serving_protocol
from shared.settings import BaseServiceSettings, ProcessSettings

S = TypeVar("S", bound=ProcessSettings)


@dataclass(frozen=True)
class Served(Generic[S]):
    """An app a command serves: built from the process's settings, on the port they give it, logging
    as `process` (a worker beside a service logs and traces under its own name)."""

    process: str
    app_factory: Callable[[S], FastAPI]
    port: Callable[[S], int]


def alembic_migrations(service_dir: Path) -> Callable[[BaseServiceSettings], None]:
    """Migrates a service's database with the Alembic scripts in `<service_dir>/alembic`."""

    def migrate(settings: BaseServiceSettings) -> None:
        # Imported here: serving never needs Alembic.
        from shared.migrations import upgrade

        upgrade(service_dir, settings.database_url)

    return migrate


def run_cli(
    name: str,
    settings_type: Callable[[], S],
    app_factory: Callable[[S], FastAPI],
    migrate: Callable[[S], None] | None = None,
    *,
    workers: Mapping[str, Served[S]] | None = None,
) -> None:
    """Serves the app that `app_factory` builds from the process's settings, migrates its database
    (`migrate`, for processes that have one), or serves one of its `workers` (command -> app)."""
    process = name.rsplit(".", 1)[-1]
    commands: dict[str, Served[S]] = {"serve": Served(process, app_factory, lambda s: s.port), **(workers or {})}
    parser = argparse.ArgumentParser(prog=f"python -m {name}")
    parser.add_argument("command", choices=[*commands, "migrate"], nargs="?", default="serve")
    args = parser.parse_args()
    settings = settings_type()
    served = commands.get(args.command)
    configure_logging(served.process if served else process, level=settings.log_level, json_lines=settings.log_json)
    if served is None:
        if migrate is None:
            logging.getLogger("portico").info("%s has no database to migrate", name)
            return
        migrate(settings)
        logging.getLogger("portico").info("%s migrated to head", name)
        return
    port = served.port(settings)
    # Only `serve`: a background worker (webhook delivery) runs as one process and scales by replicas.
    if settings.workers > 1 and args.command == "serve":

        def load() -> FastAPI:
            # In each worker, after the fork: logging and the app are the worker's own.
            configure_logging(served.process, level=settings.log_level, json_lines=settings.log_json)
            return served.app_factory(settings)

        serve_workers(served.process, settings, port, load)
        return
    uvicorn.run(
        served.app_factory(settings),
        host=settings.host,
        port=port,
        log_config=None,
        access_log=False,
        proxy_headers=False,
        # httptools with the process's limits on the request head (431 beyond them).
        http=serving_protocol(settings),
        timeout_graceful_shutdown=settings.shutdown_timeout_seconds,
        timeout_keep_alive=settings.server_keep_alive_seconds,
    )
