"""The errors the webhooks service answers with: part of its API, as its schemas are. The gateway
imports them (never the service's code) to document and relay what it forwards."""

from __future__ import annotations

from shared.errors import Conflict, NotFound, ValidationFailed


class EndpointNotFound(
    NotFound, code="WEBHOOK_ENDPOINT_NOT_FOUND", title="Webhook endpoint not found", resource="webhook endpoint"
):
    """No such webhook endpoint in the caller's tenant."""


class EndpointLimitReached(Conflict, code="WEBHOOK_ENDPOINT_LIMIT_REACHED", title="Webhook endpoint limit reached"):
    """The tenant already has `WEBHOOKS_MAX_ENDPOINTS_PER_TENANT` endpoints."""


class UrlRefused(ValidationFailed, code="WEBHOOK_URL_REFUSED", title="Webhook URL refused"):
    """An endpoint URL that is malformed or reaches a non-public address: `errors[0].type` is
    `url.<why>`."""


class DeliveryNotFound(
    NotFound, code="WEBHOOK_DELIVERY_NOT_FOUND", title="Webhook delivery not found", resource="webhook delivery"
):
    """No such delivery in the caller's tenant."""


class EndpointDisabled(Conflict, code="WEBHOOK_ENDPOINT_DISABLED", title="Webhook endpoint disabled"):
    """Replaying a delivery while its endpoint is disabled."""
