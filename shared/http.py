"""The one pooled downstream HTTP client per process, and calls to other services through it.

The transport is a setting. `aiohttp` (httpx-aiohttp) is the default because httpx's own pool
serialises connection checkout under concurrency (encode/httpx#3215); `httpx` keeps the pure httpx
transport. Either is wrapped in `TracingTransport` (`shared/telemetry.py`), so every call is a client
span named after the service and route it calls and carries `traceparent`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import aiohttp
import httpx
from opentelemetry.sdk.trace import TracerProvider

from shared.contract import IDENTITY_HEADER, PROCESSES, Identity
from shared.errors import DownstreamBadResponse, DownstreamTimeout, DownstreamUnavailable
from shared.settings import ProcessSettings
from shared.telemetry import TracingTransport

if TYPE_CHECKING:
    from shared.identity import IdentitySigner


def create_http_client(settings: ProcessSettings, tracer_provider: TracerProvider) -> httpx.AsyncClient:
    limits = httpx.Limits(
        max_connections=settings.http_max_connections,
        max_keepalive_connections=settings.http_max_keepalive,
        keepalive_expiry=settings.http_keepalive_expiry_seconds,
    )
    inner: httpx.AsyncBaseTransport
    if settings.http_transport == "aiohttp":
        from httpx_aiohttp import AiohttpTransport

        inner = AiohttpTransport(limits=limits, trust_env=False)
    else:
        inner = httpx.AsyncHTTPTransport(limits=limits)
    transport = TracingTransport(inner, tracer_provider, peers=_peers(settings))
    timeout = httpx.Timeout(settings.http_timeout_seconds, connect=settings.http_connect_timeout_seconds)
    return httpx.AsyncClient(transport=transport, timeout=timeout, trust_env=False)


def _peers(settings: ProcessSettings) -> dict[str, str]:
    """The services this process calls, by base URL (its `<process>_url` settings), to name client spans."""
    urls = {name: getattr(settings, f"{name}_url", None) for name in PROCESSES}
    return {str(url): name for name, url in urls.items() if url is not None}


def _refused(exc: httpx.TimeoutException) -> bool:
    """True when a "timeout" is really a refused, failed or dropped connection.

    httpx-aiohttp maps every aiohttp connection error, a refused connect and a server that closed the
    connection without answering included, to ConnectTimeout; the aiohttp cause tells them apart (a
    connection error that is not a TimeoutError).
    """
    cause = exc.__cause__
    return isinstance(cause, OSError | aiohttp.ClientConnectionError) and not isinstance(cause, TimeoutError)


class ServiceClient:
    """Calls one named service with an internal identity, mapping failures to 502/503/504."""

    def __init__(self, name: str, base_url: str, client: httpx.AsyncClient, signer: IdentitySigner) -> None:
        self.name = name
        self.base_url = base_url.rstrip("/")
        self.client = client
        self.signer = signer

    def headers_for(self, identity: Identity, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        headers = {IDENTITY_HEADER: self.signer.sign(identity, self.name)}
        if extra:
            headers.update(extra)
        return headers

    async def send(
        self,
        method: str,
        path: str,
        *,
        identity: Identity,
        headers: Mapping[str, str] | list[tuple[str, str]] | list[tuple[bytes, bytes]] | None = None,
        content: bytes | None = None,
        json: Any = None,
        params: Any = None,
        timeout: float | None = None,  # noqa: ASYNC109 - a per-call override of the pool's timeout
    ) -> httpx.Response:
        """Sends a request; answers with the response of any status, or raises a downstream error."""
        request_headers = httpx.Headers(headers)
        request_headers[IDENTITY_HEADER] = self.signer.sign(identity, self.name)
        try:
            response = await self.client.request(
                method,
                self.base_url + path,
                headers=request_headers,
                content=content,
                json=json,
                params=params,
                timeout=timeout if timeout is not None else httpx.USE_CLIENT_DEFAULT,
            )
        except httpx.TimeoutException as exc:
            if _refused(exc):
                raise DownstreamUnavailable(self.name, f"The {self.name} service is unreachable.") from exc
            raise DownstreamTimeout(self.name, f"The {self.name} service did not answer in time.") from exc
        except httpx.TransportError as exc:
            raise DownstreamUnavailable(self.name, f"The {self.name} service is unreachable.") from exc
        if response.status_code >= 500:
            raise DownstreamBadResponse(self.name, f"The {self.name} service answered {response.status_code}.")
        return response
