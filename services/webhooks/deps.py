"""Every dependency a webhooks route can ask for: the request's repository, the settings, and who
may call what (reading needs webhooks:read, changing webhooks:write)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends
from starlette.requests import HTTPConnection

from services.webhooks.relay import OrdersRelay
from services.webhooks.repository import EndpointRepository
from services.webhooks.settings import WebhooksSettings
from shared.contract import TenantIdentity
from shared.db import SessionDep
from shared.identity import Authorize
from shared.state import ServiceState, app_state


@dataclass(frozen=True, slots=True)
class WebhooksContext:
    """What the webhooks service adds to the common state: its background workers."""

    relay: OrdersRelay


WebhooksState = ServiceState[WebhooksSettings, WebhooksContext]


async def get_settings(conn: HTTPConnection) -> WebhooksSettings:
    state: WebhooksState = app_state(conn)
    return state.settings


async def get_repo(session: SessionDep) -> EndpointRepository:
    return EndpointRepository(session)


SettingsDep = Annotated[WebhooksSettings, Depends(get_settings)]
RepoDep = Annotated[EndpointRepository, Depends(get_repo)]
WebhooksRead = Annotated[TenantIdentity, Depends(Authorize("webhooks:read"))]
WebhooksWrite = Annotated[TenantIdentity, Depends(Authorize("webhooks:write"))]
