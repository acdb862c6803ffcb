"""Every dependency an inventory route can ask for: the request's repository and who may call what.
The reservation routes are called by the orders service for the caller who places or cancels an
order, so they need that caller's orders scopes."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends

from services.inventory.repository import InventoryRepository
from shared.caller import Authorize
from shared.contract import ORDERS_READ, ORDERS_WRITE, PRODUCTS_READ, PRODUCTS_WRITE, TenantIdentity
from shared.db import on_session

RepoDep = Annotated[InventoryRepository, Depends(on_session(InventoryRepository))]
ProductsRead = Annotated[TenantIdentity, Depends(Authorize(PRODUCTS_READ))]
ProductsWrite = Annotated[TenantIdentity, Depends(Authorize(PRODUCTS_WRITE))]
ReservationsRead = Annotated[TenantIdentity, Depends(Authorize(ORDERS_READ))]
ReservationsWrite = Annotated[TenantIdentity, Depends(Authorize(ORDERS_WRITE))]
