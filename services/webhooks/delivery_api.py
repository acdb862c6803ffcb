"""Routes of single deliveries: one with its attempt log, and its replay."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path

from services.webhooks import delivery_service
from services.webhooks.delivery_repository import DeliveryRepository
from services.webhooks.schemas import DeliveryDetail, DeliveryOut
from shared.db import SessionDep
from shared.errors import Conflict, NotFound
from shared.identity import TenantIdentityDep

router = APIRouter(prefix="/deliveries")


async def get_delivery_repo(session: SessionDep) -> DeliveryRepository:
    return DeliveryRepository(session)


DeliveryRepoDep = Annotated[DeliveryRepository, Depends(get_delivery_repo)]
DeliveryId = Annotated[str, Path(min_length=1, max_length=64)]


@router.get("/{delivery_id}", response_model=DeliveryDetail, responses=NotFound.openapi_response())
async def get_delivery(delivery_id: DeliveryId, repo: DeliveryRepoDep, identity: TenantIdentityDep) -> DeliveryDetail:
    identity.require_scope("webhooks:read")
    return await delivery_service.delivery_detail(repo, identity.require_tenant(), delivery_id)


@router.post(
    "/{delivery_id}/replay",
    status_code=202,
    response_model=DeliveryOut,
    responses={**NotFound.openapi_response(), **Conflict.openapi_response()},
)
async def replay_delivery(delivery_id: DeliveryId, repo: DeliveryRepoDep, identity: TenantIdentityDep) -> DeliveryOut:
    identity.require_scope("webhooks:write")
    return await delivery_service.replay(repo, identity.require_tenant(), delivery_id)
