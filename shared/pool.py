"""The one pool of connections per process to the services it calls.

The transport is a setting. `aiohttp` (httpx-aiohttp) is the default because httpx's own pool
serialises connection checkout under concurrency (encode/httpx#3215); `httpx` keeps the pure httpx
transport. Either is wrapped in `TracingTransport` (`shared/telemetry.py`), so every call is a client
span named after the service and route it calls and carries `traceparent`. The calls themselves go
through `ServiceClient` (`shared/http.py`).
"""

from __future__ import annotations

from dataclasses import dataclass
from http.cookiejar import Cookie, CookieJar, DefaultCookiePolicy
from typing import TYPE_CHECKING

import aiohttp
import httpx
from opentelemetry.sdk.trace import TracerProvider

from shared.contract import PROCESSES
from shared.settings import ProcessSettings, ServiceAddress
from shared.telemetry import TracingTransport

if TYPE_CHECKING:
    from urllib.request import Request


@dataclass(frozen=True, slots=True)
class HttpPool:
    """The process's one pool of connections to other services. `client` is for calls written against
    httpx; on the aiohttp transport, `session` is the same pool without httpx's layers around it, for
    the calls that must cost least (the gateway's forwarded requests, `ServiceClient.forward`)."""

    client: httpx.AsyncClient
    session: aiohttp.ClientSession | None

    async def aclose(self) -> None:
        # The client's transport closes the session.
        await self.client.aclose()


def create_http_pool(settings: ProcessSettings, tracer_provider: TracerProvider) -> HttpPool:
    """Built in a lifespan (aiohttp's session belongs to the running event loop)."""
    limits = httpx.Limits(
        max_connections=settings.http_max_connections,
        max_keepalive_connections=settings.http_max_keepalive,
        keepalive_expiry=settings.http_keepalive_expiry_seconds,
    )
    inner: httpx.AsyncBaseTransport
    session: aiohttp.ClientSession | None = None
    if settings.http_transport == "aiohttp":
        from httpx_aiohttp import AiohttpTransport

        aiohttp_transport = AiohttpTransport(limits=limits, trust_env=False)
        # What httpx-aiohttp builds by default, without aiohttp's cookie jar (see _NoCookies).
        connector = aiohttp.TCPConnector(
            limit=settings.http_max_connections,
            keepalive_timeout=settings.http_keepalive_expiry_seconds,
            ssl=aiohttp_transport.ssl_context,
        )
        session = aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar())
        # Left to itself, aiohttp sends a GET, HEAD, OPTIONS, TRACE, PUT or DELETE again when the
        # service drops the connection after reading it: outside the retry rules and budgets of
        # `shared/calls.py` (an unkeyed DELETE would reach the service twice, a GET up to four times)
        # and unseen by its metrics. Off, so every retry is one `shared/calls.py` decided and counted.
        # aiohttp has no public switch; this attribute is the one its own tests set, and aiohttp is
        # pinned to one minor release (tests/unit/test_http_pool.py fails if the attribute goes).
        session._retry_connection = False
        aiohttp_transport.client = session
        inner = aiohttp_transport
    else:
        inner = httpx.AsyncHTTPTransport(limits=limits)
    transport = TracingTransport(inner, tracer_provider, peers=_peers(settings))
    timeout = httpx.Timeout(settings.http_timeout_seconds, connect=settings.http_connect_timeout_seconds)
    client = httpx.AsyncClient(
        transport=transport, timeout=timeout, trust_env=False, cookies=CookieJar(policy=_NoCookies())
    )
    return HttpPool(client, session)


def create_http_client(settings: ProcessSettings, tracer_provider: TracerProvider) -> httpx.AsyncClient:
    """The pool's httpx client, for a process that needs nothing else of it."""
    return create_http_pool(settings, tracer_provider).client


class _NoCookies(DefaultCookiePolicy):
    """The process's one client calls services for every caller: a cookie one answer sets must never
    ride along on another caller's request, so none is kept."""

    def set_ok(self, cookie: Cookie, request: Request) -> bool:
        return False

    def return_ok(self, cookie: Cookie, request: Request) -> bool:
        return False


def _peers(settings: ProcessSettings) -> dict[str, str]:
    """The services this process calls, by the base URLs of their fixed instances (its `<process>_url`
    settings), to name client spans. `ServiceClient` names its own calls' service (`PEER_EXTENSION`)."""
    peers: dict[str, str] = {}
    for name in PROCESSES:
        address = getattr(settings, f"{name}_url", None)
        if isinstance(address, ServiceAddress):
            peers.update((endpoint.base_url, name) for endpoint in address.endpoints)
        elif address is not None:
            peers[str(address)] = name
    return peers
