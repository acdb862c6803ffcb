"""Who is calling a service, as FastAPI dependencies: the identity the gateway's (or another
service's) internal token names (`shared/identity_token.py` verifies it), and the scopes a route needs.
Every service's `deps.py` builds its own on these."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Request

from shared.context import request_context_of
from shared.contract import IDENTITY_CHALLENGE, IDENTITY_HEADER, Identity, TenantIdentity
from shared.identity_token import MissingInternalIdentity
from shared.state import ServiceState, app_state


async def require_identity(request: Request) -> Identity:
    """Dependency of every non-health route of a service: the identity the internal token names.
    FastAPI resolves it once per request, however many dependencies ask for it."""
    token = request.headers.get(IDENTITY_HEADER)
    if not token:
        raise MissingInternalIdentity("Requests must come through the gateway.", challenge=IDENTITY_CHALLENGE)
    state: ServiceState[Any, Any] = app_state(request)
    identity = state.identity_verifier.verify(token)
    context = request_context_of(request.scope)
    if context is not None:
        # The caller, on the request's server span and access line (`portico.tenant_id`), as the
        # gateway's edge records its own.
        context.principal = identity
    return identity


IdentityDep = Annotated[Identity, Depends(require_identity)]


async def require_tenant_identity(identity: IdentityDep) -> TenantIdentity:
    return identity.for_tenant()


TenantIdentityDep = Annotated[TenantIdentity, Depends(require_tenant_identity)]


class Authorize:
    """Route dependency of a service: the caller must belong to a tenant (401) and hold `scope` (403).

    Each service names its own in its `deps.py`, so handlers hold only the domain call:
    `OrdersWrite = Annotated[TenantIdentity, Depends(Authorize("orders:write"))]`.
    """

    def __init__(self, scope: str) -> None:
        self.scope = scope

    async def __call__(self, identity: TenantIdentityDep) -> TenantIdentity:
        identity.require_scope(self.scope)
        return identity
