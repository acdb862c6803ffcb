"""The webhooks processes: the service's app (registry routes, with the relay in its context) and the
delivery worker's (`python -m services.webhooks worker`: no routes but probes and metrics, with the
worker loop in its context). Both are the shared service app; `context.py` holds what each adds."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from services.webhooks.api import deliveries_router, router
from services.webhooks.context import check_worker, delivery_context, webhooks_context
from services.webhooks.settings import WebhooksSettings
from services.webhooks.url_safety import Resolver, system_resolver
from services.webhooks.worker import WorkerMetrics
from shared.contract import WEBHOOKS_WORKER, WORKERS
from shared.service_app import ServiceSpec, create_service_app

MIGRATIONS_DIR = Path(__file__).parent
WORKER = WORKERS[WEBHOOKS_WORKER]


def create_app(settings: WebhooksSettings | None = None, *, resolver: Resolver = system_resolver) -> FastAPI:
    """`resolver` replaces the system's for registration checks (tests: names without DNS)."""
    spec = ServiceSpec(
        name="webhooks",
        title="Portico webhooks service",
        routers=[router, deliveries_router],
        needs_http_client=True,
        context=webhooks_context(resolver),
    )
    return create_service_app(settings or WebhooksSettings(), spec)


def create_worker_app(settings: WebhooksSettings | None = None, *, resolver: Resolver = system_resolver) -> FastAPI:
    """`resolver` replaces the system's for every attempt (tests: names that rebind)."""
    metrics = WorkerMetrics(CollectorRegistry())
    spec = ServiceSpec(
        name=WORKER.name,
        title="Portico webhook delivery worker",
        routers=[],
        context=delivery_context(metrics, resolver),
        readiness_checks={"worker": check_worker},
    )
    return create_service_app(settings or WebhooksSettings(), spec, registry=metrics.registry)
