"""Every dependency a webhooks route can ask for: the request's repositories, the settings, the
resolver registration checks host names with, and who may call what (reading needs webhooks:read,
changing webhooks:write)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends

from services.webhooks.context import WebhooksContext
from services.webhooks.delivery_repository import DeliveryRepository
from services.webhooks.repository import EndpointRepository
from services.webhooks.settings import WebhooksSettings
from services.webhooks.url_safety import Resolver
from shared.caller import Authorize
from shared.contract import TenantIdentity
from shared.db import SessionDep
from shared.state import ServiceState, StateDependencies

state = StateDependencies[ServiceState[WebhooksSettings, WebhooksContext]]()


async def get_repo(session: SessionDep) -> EndpointRepository:
    return EndpointRepository(session)


async def get_delivery_repo(session: SessionDep) -> DeliveryRepository:
    return DeliveryRepository(session)


SettingsDep = Annotated[WebhooksSettings, Depends(state.provide(lambda s: s.settings))]
ResolverDep = Annotated[Resolver, Depends(state.provide(lambda s: s.context.resolver))]
RepoDep = Annotated[EndpointRepository, Depends(get_repo)]
DeliveryRepoDep = Annotated[DeliveryRepository, Depends(get_delivery_repo)]
WebhooksRead = Annotated[TenantIdentity, Depends(Authorize("webhooks:read"))]
WebhooksWrite = Annotated[TenantIdentity, Depends(Authorize("webhooks:write"))]
