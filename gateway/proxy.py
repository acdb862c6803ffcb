"""Forwarding to the services. Bodies pass through as bytes: never decoded and re-encoded here."""

from __future__ import annotations

import httpx
from fastapi import Request
from starlette.responses import Response

from shared.context import request_id_of
from shared.contract import Identity
from shared.errors import DownstreamBadResponse
from shared.http import ServiceClient

# Request headers a service may need; everything else (cookies, credentials, hop-by-hop) stays here.
FORWARD_REQUEST_HEADERS = ("content-type", "accept", "idempotency-key", "if-match", "last-event-id")
_FORWARDED = frozenset(name.encode("ascii") for name in FORWARD_REQUEST_HEADERS)
# Response headers passed back to the client.
FORWARD_RESPONSE_HEADERS = frozenset(
    {
        "content-type",
        "cache-control",
        "etag",
        "location",
        "retry-after",
        "www-authenticate",
        "link",
        "deprecation",
        "sunset",
        "x-aggregate-complete",
        # The orders service replays a keyed write itself when the gateway's store no longer has it.
        "idempotent-replayed",
    }
)


class Upstreams:
    """The service clients of this gateway process, all sharing the one pooled HTTP client."""

    def __init__(self, clients: dict[str, ServiceClient]) -> None:
        self.clients = clients

    def __getitem__(self, name: str) -> ServiceClient:
        return self.clients[name]

    @staticmethod
    def request_headers(request: Request) -> list[tuple[bytes, bytes]]:
        # Raw bytes, as the client sent them: decoding to str and encoding again fails (500) on any
        # byte outside ASCII, which clients are free to send in these headers.
        headers = [(name, value) for name, value in request.scope["headers"] if name in _FORWARDED and value]
        request_id = request_id_of(request.scope)
        if request_id:
            headers.append((b"x-request-id", request_id.encode("ascii")))
        return headers

    async def forward(
        self,
        request: Request,
        service: str,
        path: str,
        identity: Identity,
        *,
        query: bool = True,
    ) -> Response:
        """Sends the client's request to `service` at `path` and relays the answer."""
        client = self.clients[service]
        body = await request.body() if request.method in ("POST", "PUT", "PATCH", "DELETE") else None
        upstream = await client.send(
            request.method,
            path,
            identity=identity,
            headers=self.request_headers(request),
            content=body or None,
            params=request.query_params.multi_items() if query and request.query_params else None,
        )
        return relay(service, upstream)


def relay(service: str, upstream: httpx.Response) -> Response:
    if upstream.status_code == 401 and upstream.headers.get("www-authenticate", "").startswith("PorticoInternal"):
        # The service refused the gateway's own identity: a deployment fault, not the caller's.
        raise DownstreamBadResponse(service, f"The {service} service refused the gateway's internal identity.")
    headers = {k: v for k, v in upstream.headers.items() if k in FORWARD_RESPONSE_HEADERS}
    return Response(content=upstream.content, status_code=upstream.status_code, headers=headers)
