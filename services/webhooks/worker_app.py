"""The delivery worker as a process: `python -m services.webhooks worker`.

Besides the worker loop it serves `/health/live`, `/health/ready` (the database answers and the loop
runs) and `/metrics` on `WEBHOOKS_WORKER_PORT`, for probes and scrapes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import uvicorn
from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from services.webhooks.sender import Sender, create_session
from services.webhooks.settings import WebhooksSettings
from services.webhooks.url_safety import Resolver
from services.webhooks.worker import DeliveryWorker, WorkerConfig, WorkerMetrics
from shared.app import add_health_routes, check_database
from shared.db import create_engine, create_sessionmaker
from shared.errors import install_error_handlers
from shared.logging import configure_logging
from shared.metrics import metrics_endpoint
from shared.telemetry import create_tracer_provider, instrument_engine, set_global_provider_once, start_export

NAME = "webhooks-worker"


def worker_config(settings: WebhooksSettings) -> WorkerConfig:
    return WorkerConfig(
        concurrency=settings.worker_concurrency,
        endpoint_concurrency=settings.endpoint_concurrency,
        lease_seconds=settings.delivery_lease_seconds,
        poll_interval=settings.worker_poll_interval_seconds,
        stop_grace=settings.worker_stop_grace_seconds,
        schedule=settings.retry_schedule_seconds,
    )


async def check_worker(state: dict[str, Any]) -> None:
    task: asyncio.Task[None] = state["worker_task"]
    if task.done():
        raise RuntimeError("the delivery loop is not running")


def create_worker_app(settings: WebhooksSettings | None = None, *, resolver: Resolver | None = None) -> FastAPI:
    """`resolver` replaces the system's for every attempt (tests use names that rebind)."""
    settings = settings or WebhooksSettings()
    provider = create_tracer_provider(NAME)
    set_global_provider_once(provider)
    metrics = WorkerMetrics(CollectorRegistry())

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[dict[str, Any]]:
        start_export(provider)
        engine = create_engine(settings)
        instrument_engine(engine, provider)
        http = create_session(settings.worker_concurrency, settings.endpoint_concurrency)
        sender = Sender(
            http,
            timeout=settings.delivery_timeout_seconds,
            allow_private=settings.allow_private_urls,
            dns_timeout=settings.dns_timeout_seconds,
            resolver=resolver,
        )
        worker = DeliveryWorker(
            create_sessionmaker(engine),
            sender,
            worker_config(settings),
            metrics,
            provider.get_tracer("portico.webhooks.worker"),
        )
        stop = asyncio.Event()
        task = asyncio.create_task(worker.run(stop), name="webhooks-worker")
        try:
            yield {"settings": settings, "engine": engine, "worker": worker, "worker_task": task}
        finally:
            stop.set()
            # The worker finishes or gives back what it holds within its grace period.
            await task
            await http.close()
            await engine.dispose()
            provider.shutdown()

    app = FastAPI(
        title="Portico webhook delivery worker", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None
    )
    install_error_handlers(app)
    app.add_route("/metrics", metrics_endpoint(metrics.registry), include_in_schema=False)
    add_health_routes(app, {"database": check_database, "worker": check_worker})
    return app


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m services.webhooks worker",
        description="Delivers pending webhooks. Settings come from WEBHOOKS_* variables.",
    )
    parser.parse_args(argv)
    settings = WebhooksSettings()
    configure_logging(NAME, level=settings.log_level, json_lines=settings.log_json)
    uvicorn.run(
        create_worker_app(settings),
        host=settings.host,
        port=settings.worker_port,
        log_config=None,
        access_log=False,
        proxy_headers=False,
        timeout_keep_alive=settings.server_keep_alive_seconds,
    )
