"""/metrics is served only to the networks allowed to read it (loopback and private ranges by
default), judged on the connection's own address; everyone else gets the 404 of a path that is no
route. The gateway and a service, in-process (the service on PostgreSQL)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import pytest
from fastapi import FastAPI

from gateway.app import create_app as create_gateway
from services.users.app import create_app as create_users
from services.users.settings import UsersSettings
from tests.conftest import app_client, settings_kwargs
from tests.edge_support import gateway_settings

ALLOWED = ["127.0.0.1", "127.8.9.10", "::1", "10.1.2.3", "172.16.0.9", "172.31.255.1", "192.168.4.5", "fd12::5"]
ALLOWED += ["::ffff:10.1.2.3", "::ffff:127.0.0.1"]
REFUSED = ["203.0.113.9", "8.8.8.8", "172.32.0.1", "192.169.0.1", "11.0.0.1", "2001:db8::1", "::ffff:8.8.8.8"]


@pytest.fixture(params=["gateway", "users"])
def make_app(request, migrated) -> Callable[..., FastAPI]:
    if request.param == "gateway":
        return lambda **overrides: create_gateway(gateway_settings(None, **overrides))
    return lambda **overrides: create_users(UsersSettings(**{**settings_kwargs(migrated, "users"), **overrides}))


async def status_from(app: FastAPI, peer: str) -> tuple[int, dict]:
    async with contextlib.aclosing(app_client(app, peer=(peer, 40000))) as clients:
        client = await anext(clients)
        # The peer is what counts, not what the client says it forwards for.
        response = await client.get("/metrics", headers={"X-Forwarded-For": "10.0.0.1"})
        return response.status_code, response.json() if response.status_code != 200 else {}


async def test_metrics_by_peer_address(make_app):
    app = make_app()
    for peer in ALLOWED:
        assert (await status_from(app, peer))[0] == 200, peer
    for peer in REFUSED:
        status, problem = await status_from(app, peer)
        assert status == 404, peer
        assert problem["error_code"] == "NOT_FOUND"
        assert problem["detail"] == "No route matches GET /metrics."


async def test_the_allowed_networks_are_a_setting(make_app):
    app = make_app(metrics_allowed_networks="203.0.113.0/24, 2001:db8::/32")
    assert (await status_from(app, "203.0.113.9"))[0] == 200
    assert (await status_from(app, "2001:db8::1"))[0] == 200
    assert (await status_from(app, "127.0.0.1"))[0] == 404


def test_a_malformed_network_stops_the_start():
    with pytest.raises(ValueError, match="does not appear to be an IPv4 or IPv6 network"):
        gateway_settings(None, metrics_allowed_networks=["10.0.0.0/33"])
