"""Rules of the webhook registry and of deliveries as the API shows them (one with its attempt log,
a replay). Every function runs in the request's transaction (its repositories share the request's
session)."""

from __future__ import annotations

import base64
import secrets
from dataclasses import dataclass
from datetime import timedelta

from services.webhooks.delivery_repository import DeliveryRepository
from services.webhooks.errors import (
    DeliveryNotFound,
    EndpointDisabled,
    EndpointLimitReached,
    EndpointNotFound,
    UrlRefused,
)
from services.webhooks.models import ACTIVE, DISABLED, Delivery, Endpoint
from services.webhooks.repository import EndpointRepository
from services.webhooks.schemas import (
    AttemptOut,
    DeliveryDetail,
    DeliveryOut,
    EndpointCreate,
    EndpointOut,
    EndpointUpdate,
    Recovered,
    RecoverRequest,
)
from services.webhooks.settings import WebhooksSettings
from services.webhooks.signing import SECRET_PREFIX
from services.webhooks.url_safety import DnsUnavailable, Resolver, UnsafeUrl, check_url
from shared.db import new_id, utcnow
from shared.pagination import Page, PageQuery
from shared.repository import ChildRows

# Standard Webhooks takes secrets of 24 to 64 bytes.
SECRET_BYTES = 32

# An endpoint's deliveries, listed under it.
DELIVERIES = ChildRows(Delivery, Delivery.endpoint_id, Endpoint, EndpointNotFound)


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


@dataclass(frozen=True, slots=True)
class Registration:
    """What registering or changing an endpoint checks against: the settings' rules (which addresses
    are refused, how many endpoints a tenant may have) and the resolver that looks up its host."""

    settings: WebhooksSettings
    resolver: Resolver

    async def checked_url(self, url: str) -> str:
        """The URL if webhooks may be sent to it; a 422 naming `url` otherwise.

        A host name that does not resolve (yet, or not from here) is accepted: only what can be shown
        to be non-public is refused now, and every delivery checks the name again before connecting.
        """
        try:
            await check_url(
                url,
                allow_private=self.settings.allow_private_urls,
                dns_timeout=self.settings.dns_timeout_seconds,
                resolver=self.resolver,
            )
        except UnsafeUrl as exc:
            if exc.kind == "unresolvable":
                return url
            raise UrlRefused(
                exc.message,
                errors=[{"loc": ["body", "url"], "field": "url", "msg": exc.message, "type": f"url.{exc.kind}"}],
            ) from None
        except DnsUnavailable:
            return url
        return url


async def create_endpoint(
    repo: EndpointRepository, registration: Registration, tenant_id: str, data: EndpointCreate
) -> Endpoint:
    url = await registration.checked_url(data.url)
    # A soft limit (two concurrent creates may both pass): it bounds the fan-out of one event.
    limit = registration.settings.max_endpoints_per_tenant
    if await repo.count_endpoints(tenant_id) >= limit:
        raise EndpointLimitReached(f"A tenant can register at most {limit} webhook endpoints; delete one first.")
    now = utcnow()
    endpoint = Endpoint(
        id=new_id(),
        tenant_id=tenant_id,
        url=url,
        events=list(data.events),
        status=data.initial_status,
        rate_limit_per_second=data.rate_limit_per_second,
        secret=new_secret(),
        created_at=now,
        updated_at=now,
    )
    await repo.add(endpoint)
    return endpoint


async def get_endpoint(repo: EndpointRepository, tenant_id: str, endpoint_id: str) -> Endpoint:
    """Another tenant's endpoint answers exactly as a missing one does."""
    return await repo.one(Endpoint, tenant_id, endpoint_id, EndpointNotFound)


async def list_endpoints(repo: EndpointRepository, tenant_id: str, page: PageQuery) -> Page[EndpointOut]:
    return await repo.list_page(Endpoint, tenant_id, page.position(), page.limit, EndpointOut.model_validate)


async def update_endpoint(
    repo: EndpointRepository,
    deliveries: DeliveryRepository,
    registration: Registration,
    tenant_id: str,
    endpoint_id: str,
    data: EndpointUpdate,
) -> Endpoint:
    endpoint = await get_endpoint(repo, tenant_id, endpoint_id)
    if data.url is not None:
        endpoint.url = await registration.checked_url(data.url)
    if data.events is not None:
        endpoint.events = list(data.events)
    if data.changes_rate_limit:
        endpoint.rate_limit_per_second = data.rate_limit_per_second
    disabling = data.new_status == DISABLED and endpoint.status != DISABLED
    if data.new_status == ACTIVE and endpoint.status != ACTIVE:
        # Enabled again: its failures so far no longer count towards the failure rule.
        endpoint.consecutive_failures = 0
        endpoint.failing_since = None
    if data.new_status is not None:
        endpoint.status = data.new_status
    endpoint.updated_at = utcnow()
    await repo.save()
    if disabling:
        # Like a 410 from the receiver: nothing more goes to a disabled endpoint.
        await deliveries.cancel_pending(endpoint.id)
    return endpoint


async def recover(
    repo: EndpointRepository, deliveries: DeliveryRepository, tenant_id: str, endpoint_id: str, data: RecoverRequest
) -> Recovered:
    """Sends again every failed delivery of the endpoint made since `data.since`, each as a replay
    (same `webhook-id`, fresh schedule). A disabled endpoint gets nothing: enable it first."""
    endpoint = await get_endpoint(repo, tenant_id, endpoint_id)
    if endpoint.status != ACTIVE:
        raise EndpointDisabled(
            f"The endpoint {endpoint.id} is disabled; enable it (PATCH status active) before recovering."
        )
    return Recovered(requeued=await deliveries.requeue_failed(endpoint.id, data.since, utcnow()))


async def delete_endpoint(repo: EndpointRepository, tenant_id: str, endpoint_id: str) -> None:
    endpoint = await get_endpoint(repo, tenant_id, endpoint_id)
    await repo.delete_endpoint(endpoint)


async def rotate_secret(
    repo: EndpointRepository, settings: WebhooksSettings, tenant_id: str, endpoint_id: str
) -> Endpoint:
    """A new secret; the old one keeps signing alongside it for the grace period, then stops."""
    endpoint = await get_endpoint(repo, tenant_id, endpoint_id)
    now = utcnow()
    grace = settings.secret_rotation_grace_seconds
    endpoint.previous_secret = endpoint.secret if grace else None
    endpoint.previous_secret_expires_at = now + timedelta(seconds=grace) if grace else None
    endpoint.secret = new_secret()
    endpoint.updated_at = now
    await repo.save()
    return endpoint


async def list_deliveries(
    repo: EndpointRepository, tenant_id: str, endpoint_id: str, page: PageQuery
) -> Page[DeliveryOut]:
    """An endpoint's deliveries, newest first; 404 for an endpoint the tenant does not have."""
    return await repo.list_under(DELIVERIES, tenant_id, endpoint_id, page, DeliveryOut.model_validate)


async def delivery_detail(repo: DeliveryRepository, tenant_id: str, delivery_id: str) -> DeliveryDetail:
    """Another tenant's delivery answers exactly as a missing one does."""
    delivery = await repo.one(Delivery, tenant_id, delivery_id, DeliveryNotFound)
    log = [AttemptOut.model_validate(attempt) for attempt in await repo.attempt_log(delivery.id)]
    return DeliveryDetail(**DeliveryOut.model_validate(delivery).model_dump(), attempt_log=log)


async def replay(repo: DeliveryRepository, tenant_id: str, delivery_id: str) -> DeliveryOut:
    """Sends the event again with the same `webhook-id`, whatever the delivery's status, on a fresh
    retry schedule. A disabled endpoint gets nothing: enable it first."""
    delivery = await repo.one(Delivery, tenant_id, delivery_id, DeliveryNotFound)
    if await repo.endpoint_status(delivery.endpoint_id) != ACTIVE:
        raise EndpointDisabled(
            f"The endpoint {delivery.endpoint_id} is disabled; enable it (PATCH status active) before replaying."
        )
    await repo.replay(delivery, utcnow())
    return DeliveryOut.model_validate(delivery)
