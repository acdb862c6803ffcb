"""Every dependency a webhooks route can ask for: the request's repositories, the settings, what an
endpoint is registered under (the settings' rules and the resolver that checks host names), and who
may call what (reading needs webhooks:read, changing webhooks:write)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends

from services.webhooks.context import WebhooksContext
from services.webhooks.delivery_repository import DeliveryRepository
from services.webhooks.repository import EndpointRepository
from services.webhooks.service import Registration
from services.webhooks.settings import WebhooksSettings
from shared.caller import Authorize
from shared.contract import WEBHOOKS_READ, WEBHOOKS_WRITE, TenantIdentity
from shared.db import on_session
from shared.state import ServiceState, StateDependencies

state = StateDependencies[ServiceState[WebhooksSettings, WebhooksContext]]()


SettingsDep = Annotated[WebhooksSettings, Depends(state.provide(lambda s: s.settings))]
RegistrationDep = Annotated[
    Registration, Depends(state.provide(lambda s: Registration(s.settings, s.context.resolver)))
]
RepoDep = Annotated[EndpointRepository, Depends(on_session(EndpointRepository))]
DeliveryRepoDep = Annotated[DeliveryRepository, Depends(on_session(DeliveryRepository))]
WebhooksRead = Annotated[TenantIdentity, Depends(Authorize(WEBHOOKS_READ))]
WebhooksWrite = Annotated[TenantIdentity, Depends(Authorize(WEBHOOKS_WRITE))]
