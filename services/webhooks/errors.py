"""The errors the webhooks service answers with: part of its API, as its schemas are. The gateway
imports them (never the service's code) to document and relay what it forwards."""

from __future__ import annotations

from shared.errors import Conflict, NotFound, ValidationFailed
from shared.pagination import InvalidCursor


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


# The errors each route answers besides the common ones (422 for a parameter or body, 403 for a scope
# the caller lacks), declared once: the route's `responses=` here and the gateway's `Forward` row for
# it both list these, so the two documents agree.
CREATE_ENDPOINT_ERRORS = (UrlRefused, EndpointLimitReached)
LIST_ENDPOINTS_ERRORS = (InvalidCursor,)
GET_ENDPOINT_ERRORS = (EndpointNotFound,)
UPDATE_ENDPOINT_ERRORS = (EndpointNotFound, UrlRefused)
DELETE_ENDPOINT_ERRORS = (EndpointNotFound,)
ROTATE_SECRET_ERRORS = (EndpointNotFound,)
RECOVER_ENDPOINT_ERRORS = (EndpointNotFound, EndpointDisabled)
LIST_DELIVERIES_ERRORS = (EndpointNotFound, InvalidCursor)
GET_DELIVERY_ERRORS = (DeliveryNotFound,)
REPLAY_DELIVERY_ERRORS = (DeliveryNotFound, EndpointDisabled)
