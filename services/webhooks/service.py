"""Rules of the webhook registry. Every function runs in the request's transaction (its repository
shares the request's session)."""

from __future__ import annotations

import base64
import secrets
from datetime import timedelta

from services.webhooks.models import Delivery, Endpoint
from services.webhooks.repository import EndpointRepository
from services.webhooks.schemas import DeliveryOut, EndpointCreate, EndpointOut, EndpointUpdate
from services.webhooks.settings import WebhooksSettings
from services.webhooks.url_safety import DnsUnavailable, UnsafeUrl, check_url
from shared.db import new_id, utcnow
from shared.errors import Conflict, NotFound, ServiceUnavailable, ValidationFailed
from shared.pagination import Page, PageQuery

SECRET_PREFIX = "whsec_"
# Standard Webhooks takes secrets of 24 to 64 bytes.
SECRET_BYTES = 32


class EndpointNotFound(
    NotFound, code="WEBHOOK_ENDPOINT_NOT_FOUND", title="Webhook endpoint not found", resource="webhook endpoint"
): ...


class EndpointLimitReached(Conflict, code="WEBHOOK_ENDPOINT_LIMIT_REACHED", title="Webhook endpoint limit reached"): ...


class UrlRefused(ValidationFailed, code="WEBHOOK_URL_REFUSED", title="Webhook URL refused"): ...


class DnsUnavailableError(ServiceUnavailable, code="DNS_UNAVAILABLE", title="Host name resolution unavailable"): ...


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


async def checked_url(url: str, settings: WebhooksSettings) -> str:
    """The URL if webhooks may be sent to it; a 422 naming `url` (or a 503 when DNS fails) otherwise."""
    try:
        await check_url(url, allow_private=settings.allow_private_urls, dns_timeout=settings.dns_timeout_seconds)
    except UnsafeUrl as exc:
        raise UrlRefused(
            exc.message,
            errors=[{"loc": ["body", "url"], "field": "url", "msg": exc.message, "type": f"url.{exc.kind}"}],
        ) from None
    except DnsUnavailable as exc:
        raise DnsUnavailableError(str(exc), headers={"Retry-After": "5"}) from None
    return url


async def create_endpoint(
    repo: EndpointRepository, settings: WebhooksSettings, tenant_id: str, data: EndpointCreate
) -> Endpoint:
    url = await checked_url(data.url, settings)
    # A soft limit (two concurrent creates may both pass): it bounds the fan-out of one event.
    if await repo.count_endpoints(tenant_id) >= settings.max_endpoints_per_tenant:
        raise EndpointLimitReached(
            f"A tenant can register at most {settings.max_endpoints_per_tenant} webhook endpoints; delete one first."
        )
    now = utcnow()
    endpoint = Endpoint(
        id=new_id(),
        tenant_id=tenant_id,
        url=url,
        events=list(data.events),
        enabled=data.enabled,
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
    repo: EndpointRepository, settings: WebhooksSettings, tenant_id: str, endpoint_id: str, data: EndpointUpdate
) -> Endpoint:
    endpoint = await get_endpoint(repo, tenant_id, endpoint_id)
    if data.url is not None:
        endpoint.url = await checked_url(data.url, settings)
    if data.events is not None:
        endpoint.events = list(data.events)
    if data.enabled is not None:
        endpoint.enabled = data.enabled
    endpoint.updated_at = utcnow()
    await repo.save()
    return endpoint


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
    return await repo.list_under(
        Delivery,
        Delivery.endpoint_id,
        Endpoint,
        endpoint_id,
        tenant_id=tenant_id,
        missing=EndpointNotFound,
        query=page,
        convert=DeliveryOut.model_validate,
    )
