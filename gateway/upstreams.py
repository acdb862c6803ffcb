"""The services behind the gateway, as it calls them: one `ServiceClient` each, all sharing the
process's one pool. Bodies pass through as bytes: never decoded and re-encoded here."""

from __future__ import annotations

import httpx
from starlette.responses import Response

from shared.contract import AGGREGATE_COMPLETE_HEADER, IDEMPOTENT_REPLAYED_HEADER
from shared.errors import UpstreamBadResponse
from shared.http import ServiceClient

# Request headers a service may need; everything else (cookies, credentials, hop-by-hop) stays here.
FORWARD_REQUEST_HEADERS = frozenset(
    name.encode("ascii") for name in ("content-type", "accept", "idempotency-key", "if-match", "last-event-id")
)
# Response headers passed back to the client.
FORWARD_RESPONSE_HEADERS = frozenset(
    name.encode("ascii")
    for name in (
        "content-type",
        "cache-control",
        "etag",
        "location",
        "retry-after",
        "www-authenticate",
        "link",
        "deprecation",
        "sunset",
        AGGREGATE_COMPLETE_HEADER.lower(),
        # The orders service replays a keyed write itself when the gateway's store no longer has it.
        IDEMPOTENT_REPLAYED_HEADER.lower(),
    )
)
# How a service says it refused the gateway's own identity (`shared/identity_token.py`).
INTERNAL_CHALLENGE = b"PorticoInternal"


class Upstreams:
    """The service clients of this gateway process, all sharing the one pooled HTTP client."""

    def __init__(self, clients: dict[str, ServiceClient]) -> None:
        self.clients = clients

    def __getitem__(self, name: str) -> ServiceClient:
        return self.clients[name]


def refused_our_identity(status: int, challenge: bytes | None) -> bool:
    """A service refused the gateway's own identity: a deployment fault, not the caller's."""
    return status == 401 and challenge is not None and challenge.startswith(INTERNAL_CHALLENGE)


def relay(service: str, upstream: httpx.Response) -> Response:
    """A service's httpx answer as the gateway's own (the headers a client may see)."""
    challenge = upstream.headers.get("www-authenticate", "").encode("latin-1")
    if refused_our_identity(upstream.status_code, challenge):
        raise UpstreamBadResponse(service, f"The {service} service refused the gateway's internal identity.")
    headers = {k: v for k, v in upstream.headers.items() if k.encode("latin-1") in FORWARD_RESPONSE_HEADERS}
    return Response(content=upstream.content, status_code=upstream.status_code, headers=headers)
