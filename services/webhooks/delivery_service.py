"""Rules of deliveries as the API shows them: reading one with its attempt log, and replaying it."""

from __future__ import annotations

from services.webhooks.delivery_repository import DeliveryRepository
from services.webhooks.models import ACTIVE, Delivery
from services.webhooks.schemas import AttemptOut, DeliveryDetail, DeliveryOut
from shared.db import utcnow
from shared.errors import Conflict, NotFound


class DeliveryNotFound(NotFound):
    error_code = "WEBHOOK_DELIVERY_NOT_FOUND"
    title = "Webhook delivery not found"
    slug = "webhook-delivery-not-found"


class EndpointDisabled(Conflict):
    error_code = "WEBHOOK_ENDPOINT_DISABLED"
    title = "Webhook endpoint disabled"
    slug = "webhook-endpoint-disabled"


async def get_delivery(repo: DeliveryRepository, tenant_id: str, delivery_id: str) -> Delivery:
    """Another tenant's delivery answers exactly as a missing one does."""
    delivery = await repo.get(tenant_id, delivery_id)
    if delivery is None:
        raise DeliveryNotFound(f"No webhook delivery {delivery_id}.")
    return delivery


async def delivery_detail(repo: DeliveryRepository, tenant_id: str, delivery_id: str) -> DeliveryDetail:
    delivery = await get_delivery(repo, tenant_id, delivery_id)
    log = [AttemptOut.model_validate(attempt) for attempt in await repo.attempt_log(delivery.id)]
    return DeliveryDetail(**DeliveryOut.model_validate(delivery).model_dump(), attempt_log=log)


async def replay(repo: DeliveryRepository, tenant_id: str, delivery_id: str) -> DeliveryOut:
    """Sends the event again with the same `webhook-id`, whatever the delivery's status, on a fresh
    retry schedule. A disabled endpoint gets nothing: enable it first."""
    delivery = await get_delivery(repo, tenant_id, delivery_id)
    if await repo.endpoint_status(delivery.endpoint_id) != ACTIVE:
        raise EndpointDisabled(
            f"The endpoint {delivery.endpoint_id} is disabled; enable it (PATCH status active) before replaying."
        )
    await repo.replay(delivery, utcnow())
    return DeliveryOut.model_validate(delivery)
