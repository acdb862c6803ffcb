"""Webhook endpoints: forwarded to the webhooks service. A paid feature: the plan gate runs first on
every route, so a free tenant gets 402 whatever else is wrong with its request."""

from __future__ import annotations

from gateway.edge.access import readers_and_writers
from gateway.routes.forward import PAGE_QUERY, Forward, ForwardRouter
from services.webhooks.errors import (
    DeliveryNotFound,
    EndpointDisabled,
    EndpointLimitReached,
    EndpointNotFound,
    UrlRefused,
)
from services.webhooks.schemas import (
    DeliveryDetail,
    DeliveryOut,
    EndpointCreate,
    EndpointOut,
    EndpointUpdate,
    EndpointWithSecret,
    Recovered,
    RecoverRequest,
)
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

Reader, Writer = readers_and_writers("webhooks")
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
        body=EndpointCreate,
        answer=EndpointWithSecret,
        errors=[UrlRefused, EndpointLimitReached],
        secret=True,
    ),
    Forward(
        "GET",
        "/endpoints",
        Reader,
        "list_endpoints",
        "The tenant's webhook endpoints, newest first",
        query=PAGE_QUERY,
        answer=Page[EndpointOut],
    ),
    Forward(
        "GET", ENDPOINT, Reader, "get_endpoint", "A webhook endpoint", answer=EndpointOut, errors=[EndpointNotFound]
    ),
    Forward(
        "PATCH",
        ENDPOINT,
        Writer,
        "update_endpoint",
        "Change a webhook endpoint's url, events, status or rate limit (`enabled` is the older shape of status)",
        body=EndpointUpdate,
        answer=EndpointOut,
        errors=[EndpointNotFound, UrlRefused],
    ),
    Forward(
        "DELETE",
        ENDPOINT,
        Writer,
        "delete_endpoint",
        "Delete a webhook endpoint",
        status_code=204,
        errors=[EndpointNotFound],
    ),
    Forward(
        "POST",
        ENDPOINT + "/rotate-secret",
        Writer,
        "rotate_secret",
        "Replace the endpoint's secret (the new one is shown only now; the old one signs for a grace period)",
        answer=EndpointWithSecret,
        errors=[EndpointNotFound],
        secret=True,
    ),
    Forward(
        "POST",
        ENDPOINT + "/recover",
        Writer,
        "recover_endpoint",
        "Send again every failed delivery of the endpoint made since a time (each with its own webhook-id)",
        status_code=202,
        body=RecoverRequest,
        answer=Recovered,
        errors=[EndpointNotFound, EndpointDisabled],
    ),
    Forward(
        "GET",
        ENDPOINT + "/deliveries",
        Reader,
        "list_deliveries",
        "The endpoint's deliveries, newest first",
        query=PAGE_QUERY,
        answer=Page[DeliveryOut],
        errors=[EndpointNotFound],
    ),
    Forward(
        "GET",
        DELIVERY,
        Reader,
        "get_delivery",
        "A delivery with its attempt log",
        answer=DeliveryDetail,
        errors=[DeliveryNotFound],
    ),
    Forward(
        "POST",
        DELIVERY + "/replay",
        Writer,
        "replay_delivery",
        "Deliver the event again, with the same webhook-id, whatever the delivery's status",
        status_code=202,
        answer=DeliveryOut,
        errors=[DeliveryNotFound, EndpointDisabled],
    ),
)
