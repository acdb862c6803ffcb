"""The gateway's lifespan state: everything the gateway owns while it runs, in one typed object.

`gateway/app.py` builds it in the lifespan (`open_state`) and closes it on the way out. Routes reach
its parts through the dependencies of `gateway/deps.py`; the edge gets the parts it uses as one
`EdgeRuntime` (`gateway/edge/pipeline.py`), also in the lifespan. Nothing here is imported by the
stages, so they depend on their own collaborators only.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.composer import Composer
from gateway.edge.authentication import Authenticator
from gateway.edge.metering import UsageReader
from gateway.edge.pipeline import EdgeRuntime
from gateway.edge.store import RedisClient
from gateway.realtime.hub import Hub
from gateway.settings import GatewaySettings
from gateway.upstreams import Upstreams


@dataclass(frozen=True, slots=True)
class GatewayState:
    settings: GatewaySettings
    upstreams: Upstreams
    # Runs the aggregate routes' parts through the upstreams, within their budget.
    composer: Composer
    # None: the stores are in-process (one gateway process).
    redis: RedisClient | None
    # Who is calling: for every request (the edge), every WebSocket and every event stream.
    authenticator: Authenticator
    # The order events of every tenant, for /v1/events and /v1/ws.
    events: Hub
    # What the edge runs with.
    edge: EdgeRuntime
    # The tenants' metered use and monthly quotas (`GET /v1/usage`, the dashboard).
    usage: UsageReader
