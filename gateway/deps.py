"""Every dependency a gateway route can ask for, typed: the lifespan's collaborators, the caller and
its scopes. A route names what it needs (`composer: ComposerDep, identity: Principal`) and never
reaches into the request for it. A new collaborator of the lifespan (a field of `GatewayState`) gets
its dependency here, in one line like those below.

Dependencies are `async def`: FastAPI runs plain `def` dependencies in a thread pool, a thread hop
per request for an attribute lookup.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends
from starlette.requests import HTTPConnection

from gateway.composer import Composer
from gateway.edge.access import Access
from gateway.edge.authentication import Authenticator, Caller
from gateway.edge.metering import UsageReader
from gateway.realtime.hub import Hub
from gateway.settings import GatewaySettings
from gateway.state import GatewayState
from gateway.upstreams import Upstreams
from shared.context import request_context
from shared.contract import Identity
from shared.state import StateDependencies

state = StateDependencies[GatewayState]()

SettingsDep = Annotated[GatewaySettings, Depends(state.provide(lambda s: s.settings))]
UpstreamsDep = Annotated[Upstreams, Depends(state.provide(lambda s: s.upstreams))]
ComposerDep = Annotated[Composer, Depends(state.provide(lambda s: s.composer))]
AuthenticatorDep = Annotated[Authenticator, Depends(state.provide(lambda s: s.authenticator))]
HubDep = Annotated[Hub, Depends(state.provide(lambda s: s.events))]
UsageDep = Annotated[UsageReader, Depends(state.provide(lambda s: s.usage))]


async def current_caller(conn: HTTPConnection) -> Caller:
    """The caller as the edge authenticated it (with what it proved itself: a token's expiry, a key)."""
    caller = request_context(conn.scope).caller
    if not isinstance(caller, Caller):
        raise RuntimeError("the edge has not authenticated this request")
    return caller


CallerDep = Annotated[Caller, Depends(current_caller)]


class RequireAccess:
    """Route dependency: the caller must pass `access` (401, 402 or 403 otherwise), as a forwarded
    route's row says it (`gateway/routes/forward.py`)."""

    def __init__(self, access: Access) -> None:
        self.access = access

    async def __call__(self, caller: CallerDep) -> Identity:
        self.access.check(caller.identity)
        return caller.identity


# Any caller with credentials.
Principal = Annotated[Identity, Depends(RequireAccess(Access()))]
