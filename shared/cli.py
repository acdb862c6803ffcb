"""`python -m <process> [serve|migrate|<worker>|<task> ...]`: the entry point of every process."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

import uvicorn
from fastapi import FastAPI

from shared.contract import WEBSOCKET_MAX_MESSAGE_BYTES
from shared.logging import configure_logging
from shared.serving import DrainingServer, before_shutdown_of, serve_workers, serving_protocol
from shared.settings import BaseServiceSettings, ProcessSettings

S = TypeVar("S", bound=ProcessSettings)


@dataclass(frozen=True)
class Served(Generic[S]):
    """An app a command serves: built from the process's settings, on the port they give it, logging
    as `process` (a worker beside a service logs and traces under its own name)."""

    process: str
    app_factory: Callable[[S], FastAPI]
    port: Callable[[S], int]


@dataclass(frozen=True)
class Task(Generic[S]):
    """A one-off command an operator runs with the process's settings (`python -m <process> <name>
    <arguments>`): `arguments` declares its arguments, `run` does the work and answers the exit status."""

    help: str
    arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[S, argparse.Namespace], int]


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
    tasks: Mapping[str, Task[S]] | None = None,
) -> None:
    """Serves the app that `app_factory` builds from the process's settings, migrates its database
    (`migrate`, for processes that have one), serves one of its `workers` (command -> app), or runs
    one of its `tasks` and exits with its status."""
    process = name.rsplit(".", 1)[-1]
    commands: dict[str, Served[S]] = {"serve": Served(process, app_factory, lambda s: s.port), **(workers or {})}
    parser = argparse.ArgumentParser(prog=f"python -m {name}")
    subcommands = parser.add_subparsers(dest="command")
    for command in [*commands, "migrate"]:
        subcommands.add_parser(command)
    for command, task in (tasks or {}).items():
        task.arguments(subcommands.add_parser(command, help=task.help, description=task.help))
    args = parser.parse_args()
    args.command = args.command or "serve"
    settings = settings_type()
    served = commands.get(args.command)
    configure_logging(served.process if served else process, level=settings.log_level, json_lines=settings.log_json)
    if tasks and args.command in tasks:
        sys.exit(tasks[args.command].run(settings, args))
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
    app = served.app_factory(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=port,
        log_config=None,
        access_log=False,
        proxy_headers=False,
        # httptools with the process's limits on the request head (431 beyond them).
        http=serving_protocol(settings),
        timeout_graceful_shutdown=settings.shutdown_timeout_seconds,
        timeout_keep_alive=settings.server_keep_alive_seconds,
        ws_max_size=WEBSOCKET_MAX_MESSAGE_BYTES,
    )
    DrainingServer(config, before_shutdown_of(app)).run()
