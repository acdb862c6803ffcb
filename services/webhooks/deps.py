"""Every dependency a webhooks route can ask for: the request's repository, the settings, and who
may call what (reading needs webhooks:read, changing webhooks:write)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends

from services.webhooks.context import WebhooksContext
from services.webhooks.repository import EndpointRepository
from services.webhooks.settings import WebhooksSettings
from shared.contract import TenantIdentity
from shared.db import SessionDep
from shared.identity import Authorize
from shared.state import ServiceState, StateDependencies

state = StateDependencies[ServiceState[WebhooksSettings, WebhooksContext]]()


async def get_repo(session: SessionDep) -> EndpointRepository:
    return EndpointRepository(session)


SettingsDep = Annotated[WebhooksSettings, Depends(state.provide(lambda s: s.settings))]
RepoDep = Annotated[EndpointRepository, Depends(get_repo)]
WebhooksRead = Annotated[TenantIdentity, Depends(Authorize("webhooks:read"))]
WebhooksWrite = Annotated[TenantIdentity, Depends(Authorize("webhooks:write"))]
