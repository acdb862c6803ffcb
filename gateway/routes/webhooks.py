"""Webhook endpoints: forwarded to the webhooks service. A paid feature: the plan gate runs first on
every route, so a free tenant gets 402 whatever else is wrong with its request."""

from __future__ import annotations

from gateway.edge.access import Access
from gateway.routes.forward import Forward, ForwardRouter
from services.webhooks import schemas
from services.webhooks.errors import (
    CREATE_ENDPOINT_ERRORS,
    DELETE_ENDPOINT_ERRORS,
    GET_DELIVERY_ERRORS,
    GET_ENDPOINT_ERRORS,
    LIST_DELIVERIES_ERRORS,
    LIST_ENDPOINTS_ERRORS,
    RECOVER_ENDPOINT_ERRORS,
    REPLAY_DELIVERY_ERRORS,
    ROTATE_SECRET_ERRORS,
    UPDATE_ENDPOINT_ERRORS,
)
from shared.contract import WEBHOOKS_READ, WEBHOOKS_WRITE
from shared.errors import PaymentRequired
from shared.pagination import Page

router = ForwardRouter(
    "webhooks",
    prefix="/v1/webhooks",
    tags=["webhooks"],
    errors=[PaymentRequired],
    plans=("pro", "enterprise"),
    feature="Webhooks",
)

Reader, Writer = Access(scope=WEBHOOKS_READ), Access(scope=WEBHOOKS_WRITE)
ENDPOINT = "/endpoints/{endpoint_id}"
DELIVERY = "/deliveries/{delivery_id}"

router.add(
    Forward(
        "POST",
        "/endpoints",
        Writer,
        "create_endpoint",
        "Register a webhook endpoint (its secret is shown only now)",
        status_code=201,
        body=schemas.EndpointCreate,
        answer=schemas.EndpointWithSecret,
        errors=CREATE_ENDPOINT_ERRORS,
        secret=True,
        description=(
            "Registers a URL to receive the tenant's events (`order.created`, `order.cancelled`, "
            "`endpoint.disabled`), signed per Standard Webhooks with the endpoint's `secret` (`whsec_...`), "
            "which is in this answer only. The URL must be http(s) on a public address (422 "
            "`WEBHOOK_URL_REFUSED` names why not). A pro or enterprise plan feature (402 otherwise)."
        ),
    ),
    Forward(
        "GET",
        "/endpoints",
        Reader,
        "list_endpoints",
        "The tenant's webhook endpoints, newest first",
        answer=Page[schemas.EndpointOut],
        errors=LIST_ENDPOINTS_ERRORS,
        description="The tenant's webhook endpoints, newest first, a page at a time; never their secrets.",
    ),
    Forward(
        "GET",
        ENDPOINT,
        Reader,
        "get_endpoint",
        "A webhook endpoint",
        answer=schemas.EndpointOut,
        errors=GET_ENDPOINT_ERRORS,
        description="One webhook endpoint of the tenant: its URL, events, status and rate limit; never its secret.",
    ),
    Forward(
        "PATCH",
        ENDPOINT,
        Writer,
        "update_endpoint",
        "Change a webhook endpoint's url, events, status or rate limit (`enabled` is the older shape of status)",
        body=schemas.EndpointUpdate,
        answer=schemas.EndpointOut,
        errors=UPDATE_ENDPOINT_ERRORS,
        description=(
            "Changes the fields sent; those left out stay. `status: active` re-enables an endpoint that was "
            "disabled (by hand, or for failing); `rate_limit_per_second: null` lifts its limit. `enabled` is "
            "the deprecated shape of `status` (the answer then carries `Deprecation`)."
        ),
    ),
    Forward(
        "DELETE",
        ENDPOINT,
        Writer,
        "delete_endpoint",
        "Delete a webhook endpoint",
        status_code=204,
        errors=DELETE_ENDPOINT_ERRORS,
        description="Deletes the endpoint with its deliveries and their attempt logs; nothing more is sent to it.",
    ),
    Forward(
        "POST",
        ENDPOINT + "/rotate-secret",
        Writer,
        "rotate_secret",
        "Replace the endpoint's secret (the new one is shown only now; the old one signs for a grace period)",
        answer=schemas.EndpointWithSecret,
        errors=ROTATE_SECRET_ERRORS,
        secret=True,
        description=(
            "Replaces the signing secret; the new one is in this answer only. Until "
            "`previous_secret_expires_at` deliveries carry signatures by both, so receivers can switch."
        ),
    ),
    Forward(
        "POST",
        ENDPOINT + "/recover",
        Writer,
        "recover_endpoint",
        "Send again every failed delivery of the endpoint made since a time (each with its own webhook-id)",
        status_code=202,
        body=schemas.RecoverRequest,
        answer=schemas.Recovered,
        errors=RECOVER_ENDPOINT_ERRORS,
        description=(
            "After an outage of the receiver: every delivery to this endpoint that failed since `since` is "
            "made pending again, on a fresh retry schedule. Answers how many were requeued. A disabled "
            "endpoint is 409 `WEBHOOK_ENDPOINT_DISABLED`: re-enable it first."
        ),
    ),
    Forward(
        "GET",
        ENDPOINT + "/deliveries",
        Reader,
        "list_deliveries",
        "The endpoint's deliveries, newest first",
        answer=Page[schemas.DeliveryOut],
        errors=LIST_DELIVERIES_ERRORS,
        description="The endpoint's deliveries, newest first, a page at a time, with their status and attempts.",
    ),
    Forward(
        "GET",
        DELIVERY,
        Reader,
        "get_delivery",
        "A delivery with its attempt log",
        answer=schemas.DeliveryDetail,
        errors=GET_DELIVERY_ERRORS,
        description="One delivery with every attempt: when, the receiver's status code, how long it took, the error.",
    ),
    Forward(
        "POST",
        DELIVERY + "/replay",
        Writer,
        "replay_delivery",
        "Deliver the event again, with the same webhook-id, whatever the delivery's status",
        status_code=202,
        answer=schemas.DeliveryOut,
        errors=REPLAY_DELIVERY_ERRORS,
        description=(
            "Delivers the event again with the same `webhook-id`, so a receiver that deduplicates sees it "
            "once; whatever the delivery's status. A disabled endpoint is 409 `WEBHOOK_ENDPOINT_DISABLED`."
        ),
    ),
)
