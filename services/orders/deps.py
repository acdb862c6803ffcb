"""Every dependency an orders route can ask for: the lifespan's orders context (clients, settings,
the sessionmaker its service functions open transactions with) and who may call what."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends

from services.orders.errors import ServiceOnly
from services.orders.service import OrdersContext
from services.orders.settings import OrdersSettings
from shared.caller import Authorize, IdentityDep
from shared.contract import EVENTS_READ, EVENTS_WRITE, ORDERS_READ, ORDERS_WRITE, Identity, TenantIdentity
from shared.state import ServiceState, StateDependencies

# What the orders service adds to the common state: its context, with the recovery task running.
state = StateDependencies[ServiceState[OrdersSettings, OrdersContext]]()


async def require_event_reader(identity: IdentityDep) -> Identity:
    """The event feed serves Portico's own services (the webhooks relay), never a tenant's caller."""
    if not identity.is_service:
        raise ServiceOnly("The event feed serves Portico services only.")
    identity.require_scope(EVENTS_READ)
    return identity


async def require_event_publisher(identity: IdentityDep) -> Identity:
    """Only Portico's own services add events to the feed (the gateway, its quota events)."""
    if not identity.is_service:
        raise ServiceOnly("Only Portico services add events to the feed.")
    identity.require_scope(EVENTS_WRITE)
    return identity


ContextDep = Annotated[OrdersContext, Depends(state.provide(lambda s: s.context))]
OrdersRead = Annotated[TenantIdentity, Depends(Authorize(ORDERS_READ))]
OrdersWrite = Annotated[TenantIdentity, Depends(Authorize(ORDERS_WRITE))]
EventsReader = Annotated[Identity, Depends(require_event_reader)]
EventsPublisher = Annotated[Identity, Depends(require_event_publisher)]
