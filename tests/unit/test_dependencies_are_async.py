"""FastAPI runs a plain `def` dependency or route in a thread pool: a thread hop per request. Every
route and dependency of every process is `async def`, so nothing on the hot path pays for one."""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute

from gateway.app import create_app as gateway_app
from services.inventory.app import create_app as inventory_app
from services.orders.app import create_app as orders_app
from services.users.app import create_app as users_app
from services.webhooks.app import create_app as webhooks_app


def _is_async(call: Any) -> bool:
    if inspect.iscoroutinefunction(call) or inspect.isasyncgenfunction(call):
        return True
    method = getattr(call, "__call__", None)  # noqa: B004 - dependency instances
    return inspect.iscoroutinefunction(method) or inspect.isasyncgenfunction(method)


def _dependants(dependant: Dependant) -> Iterator[Dependant]:
    for dependency in dependant.dependencies:
        yield dependency
        yield from _dependants(dependency)


def _routes(routes: Any) -> Iterator[APIRoute]:
    for route in routes:
        if isinstance(route, APIRoute):
            yield route
        # An included router (FastAPI keeps the original router behind it).
        router = getattr(route, "original_router", None)
        yield from _routes(getattr(router, "routes", None) or getattr(route, "routes", None) or ())


@pytest.mark.parametrize("factory", [gateway_app, users_app, orders_app, inventory_app, webhooks_app])
def test_every_route_and_dependency_is_async(factory):
    app = factory()
    routes = list(_routes(app.routes))
    assert len(routes) > 2  # more than the health routes: included routers are walked
    sync = []
    for route in routes:
        if not _is_async(route.endpoint):
            sync.append(f"{route.path}: {route.endpoint.__qualname__}")
        for dependant in _dependants(route.dependant):
            if dependant.call is not None and not _is_async(dependant.call):
                sync.append(f"{route.path}: {getattr(dependant.call, '__qualname__', dependant.call)}")
    assert not sync, sync
