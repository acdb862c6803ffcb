"""The client's address, for limits on anonymous callers.

The peer address is the client unless the peer is a trusted proxy; then X-Forwarded-For is read
from the right, skipping trusted proxies, and the first address that is not one is the client. Only
the entries our own proxies appended are believed: anything further left was written by the client.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from starlette.types import Scope

from shared.asgi import header_list
from shared.networks import Networks


class ClientAddress:
    def __init__(self, trusted_proxies: Iterable[str]) -> None:
        self.trusted = Networks(trusted_proxies)

    def _is_trusted(self, address: str) -> bool:
        return address in self.trusted

    def __call__(self, scope: Scope) -> str:
        client = scope.get("client")
        peer = client[0] if client else "unknown"
        if not self.trusted or not self._is_trusted(peer):
            return peer
        forwarded = [
            part.strip()
            for value in header_list(scope, b"x-forwarded-for")
            for part in value.decode("latin-1").split(",")
        ]
        for address in reversed(forwarded):
            if not self._is_trusted(address):
                try:
                    return str(ipaddress.ip_address(address))
                except ValueError:
                    # A malformed entry cannot be told apart from a forged one; the proxy is the client.
                    return peer
        return peer
