"""Every dependency a gateway route can ask for, typed: the lifespan's collaborators, the caller,
scopes and plan gates. A route names what it needs (`upstreams: UpstreamsDep, identity: Principal`)
and never reaches into the request for it. A new collaborator of the lifespan (a field of
`GatewayState`) gets its dependency here, in one line like those below.

Dependencies are `async def`: FastAPI runs plain `def` dependencies in a thread pool, a thread hop
per request for an attribute lookup.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends
from starlette.requests import HTTPConnection

from gateway.aggregate import Composer
from gateway.edge.apikeys import ApiKeyResolver
from gateway.edge.ratelimit import RateLimiter
from gateway.proxy import Upstreams
from gateway.settings import GatewaySettings
from gateway.state import GatewayState
from shared.context import principal_of
from shared.contract import PLANS, AuthenticationRequired, Identity
from shared.errors import PaymentRequired
from shared.state import StateDependencies

state = StateDependencies[GatewayState]()
gateway_state = state.of

SettingsDep = Annotated[GatewaySettings, Depends(state.provide(lambda s: s.settings))]
UpstreamsDep = Annotated[Upstreams, Depends(state.provide(lambda s: s.upstreams))]
ComposerDep = Annotated[Composer, Depends(state.provide(lambda s: s.composer))]
ApiKeysDep = Annotated[ApiKeyResolver, Depends(state.provide(lambda s: s.api_keys))]
RateLimiterDep = Annotated[RateLimiter, Depends(state.provide(lambda s: s.rate_limiter))]


async def current_identity(conn: HTTPConnection) -> Identity:
    """The caller as the authentication stage resolved it; anonymous when no credentials were sent."""
    return principal_of(conn.scope)


async def require_principal(conn: HTTPConnection) -> Identity:
    identity = principal_of(conn.scope)
    if identity.is_anonymous:
        raise AuthenticationRequired("This route needs credentials.")
    return identity


AnyCaller = Annotated[Identity, Depends(current_identity)]
Principal = Annotated[Identity, Depends(require_principal)]


class RequireScope:
    """Route dependency: the caller must hold `scope` (403 naming it otherwise)."""

    def __init__(self, scope: str) -> None:
        self.scope = scope

    async def __call__(self, identity: Principal) -> Identity:
        identity.require_scope(self.scope)
        return identity


def readers_and_writers(domain: str) -> tuple[Any, Any]:
    """The caller dependencies of a domain's routes: those that read need `<domain>:read`, those that
    change need `<domain>:write`."""
    return (
        Annotated[Identity, Depends(RequireScope(f"{domain}:read"))],
        Annotated[Identity, Depends(RequireScope(f"{domain}:write"))],
    )


class RequirePlan:
    """Route dependency: the caller's tenant must be on one of `plans` (402 naming them otherwise)."""

    def __init__(self, *plans: str, feature: str) -> None:
        unknown = set(plans) - set(PLANS)
        if unknown:
            raise ValueError(f"unknown plans {sorted(unknown)}")
        self.plans = tuple(p for p in PLANS if p in plans)
        self.feature = feature

    async def __call__(self, identity: Principal) -> Identity:
        if identity.plan not in self.plans:
            raise PaymentRequired(
                f"{self.feature} needs the {' or '.join(self.plans)} plan; this tenant is on {identity.plan}.",
                extra={"required_plans": list(self.plans), "current_plan": identity.plan},
            )
        return identity
