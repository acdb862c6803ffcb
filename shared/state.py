"""Lifespan state: what a process's lifespan builds, and how requests reach it.

Each process's lifespan builds ONE frozen dataclass holding everything it owns (engine, clients,
stores, background workers) and yields it as `{"app": state}` (`lifespan_state_of`): Starlette hands
that mapping to every request as `scope["state"]`. Routes never read it by name: each process has a
dependency module (`gateway/deps.py`, `services/<name>/deps.py`, and `SessionDep`/`IdentityDep` in
shared) whose typed `Annotated` dependencies are built by `StateDependencies` here, and `app_state`
is the one place that knows the key.

Pure ASGI stages are built before the lifespan runs (Starlette builds the middleware stack on the
first ASGI call, which is the lifespan's own startup), so they cannot be handed the state in their
constructor: the lifespan hands them what they use for its own duration (the gateway's edge gets its
`EdgeRuntime` through `Edge.running`, `gateway/edge/pipeline.py`).

To add a lifespan-owned collaborator: a field on the process's state dataclass, built (and closed) in
its lifespan, and an `Annotated` dependency next to the others in the process's dependency module.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Generic, NotRequired, TypedDict, TypeVar

from starlette.requests import HTTPConnection

from shared.calls import CallPolicy
from shared.http import ServiceClient

if TYPE_CHECKING:
    import httpx
    from opentelemetry.sdk.trace import TracerProvider
    from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

    from shared.admission import Shedder
    from shared.identity_token import IdentitySigner, IdentityVerifier

T = TypeVar("T")
R = TypeVar("R")
S = TypeVar("S")  # a process's settings
C = TypeVar("C")  # what one service adds to the common state
C2 = TypeVar("C2")


class LifespanState(TypedDict, Generic[T]):
    """What a lifespan yields: its one state object, and for the server's protocol the shedder that
    refuses requests from their heads under overload (`SHEDDER_KEY`), when admission is on."""

    app: T
    shedder: NotRequired[Shedder]


def lifespan_state_of(state: T, shedder: Shedder | None = None) -> LifespanState[T]:
    if shedder is None:
        return {"app": state}
    return {"app": state, "shedder": shedder}


def app_state(conn: HTTPConnection) -> Any:
    """The lifespan's state object of the request's app; its process's dependency module types it."""
    return conn.scope["state"]["app"]


class StateDependencies(Generic[T]):
    """Builds the typed dependencies of one process's state type `T`:

    state = StateDependencies[GatewayState]()
    UpstreamsDep = Annotated[Upstreams, Depends(state.provide(lambda s: s.upstreams))]
    """

    def provide(self, part: Callable[[T], R]) -> Callable[[HTTPConnection], Awaitable[R]]:
        # `async def`: FastAPI runs a plain `def` dependency in a thread pool.
        async def dependency(conn: HTTPConnection) -> R:
            return part(self.of(conn))

        return dependency

    def of(self, conn: HTTPConnection) -> T:
        state: T = app_state(conn)
        return state


@dataclass(frozen=True, slots=True)
class ServiceState(Generic[S, C]):
    """What every service's lifespan owns (`shared/service_app.py` builds it), plus `context`: what the
    service itself adds (its collaborators and background workers), built by its `ServiceSpec`."""

    settings: S
    engine: AsyncEngine
    sessionmaker: async_sessionmaker[AsyncSession]
    identity_verifier: IdentityVerifier
    identity_signer: IdentitySigner
    tracer_provider: TracerProvider
    # The one pooled client of a service that calls others; None for those that do not.
    http: httpx.AsyncClient | None
    # Circuit breakers and upstream metrics shared by every service client of the process.
    call_policy: CallPolicy
    context: C

    def with_context(self, context: C2) -> ServiceState[S, C2]:
        untyped: ServiceState[S, Any] = self
        return replace(untyped, context=context)

    def service_client(self, name: str, url: object) -> ServiceClient:
        """A client of another service through this one's pooled HTTP client, signing as this one."""
        if self.http is None:
            raise RuntimeError("this service's spec does not ask for an HTTP client (needs_http_client)")
        return ServiceClient(name, str(url), self.http, self.identity_signer, self.call_policy)
