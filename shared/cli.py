"""`python -m <process> [serve|migrate|...]`: the entry point of every process."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

import uvicorn
from fastapi import FastAPI

from shared.logging import configure_logging
from shared.settings import BaseServiceSettings


def run_cli(
    name: str,
    settings_factory: Callable[[], BaseServiceSettings],
    app_factory: Callable[[BaseServiceSettings], FastAPI],
    migrations_dir: Path | None,
    commands: Mapping[str, Callable[[list[str]], None]] | None = None,
) -> None:
    """`commands` are further commands of the process; each reads the arguments after its name."""
    commands = commands or {}
    argv = sys.argv[1:]
    if argv and argv[0] in commands:
        commands[argv[0]](argv[1:])
        return
    parser = argparse.ArgumentParser(prog=f"python -m {name}")
    parser.add_argument("command", choices=["serve", "migrate", *commands], nargs="?", default="serve")
    args = parser.parse_args(argv)
    settings = settings_factory()
    configure_logging(name.rsplit(".", 1)[-1], level=settings.log_level, json_lines=settings.log_json)
    if args.command == "migrate":
        if migrations_dir is None:
            logging.getLogger("portico").info("%s has no database to migrate", name)
            return
        from shared.migrations import upgrade

        upgrade(migrations_dir, settings.database_url)
        logging.getLogger("portico").info("%s migrated to head", name)
        return
    uvicorn.run(
        app_factory(settings),
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        proxy_headers=False,
        timeout_graceful_shutdown=10,
        timeout_keep_alive=settings.server_keep_alive_seconds,
    )
