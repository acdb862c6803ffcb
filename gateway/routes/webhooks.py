"""Webhook endpoints: forwarded to the webhooks service. A paid feature: the plan gate runs first on
every route, so a free tenant gets 402 whatever else is wrong with its request."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from gateway.deps import RequirePlan, readers_and_writers
from gateway.routes.forward import Forward, add_forwards
from shared.errors import PaymentRequired

router = APIRouter(
    prefix="/v1/webhooks",
    tags=["webhooks"],
    dependencies=[Depends(RequirePlan("pro", "enterprise", feature="Webhooks"))],
    responses=PaymentRequired.openapi_response(),
)

Reader, Writer = readers_and_writers("webhooks")
ENDPOINT = "/endpoints/{endpoint_id}"
DELIVERY = "/deliveries/{delivery_id}"

add_forwards(
    router,
    "webhooks",
    [
        Forward(
            "POST",
            "/endpoints",
            Writer,
            "create_endpoint",
            "Register a webhook endpoint (its secret is shown only now)",
            status_code=201,
        ),
        Forward(
            "GET",
            "/endpoints",
            Reader,
            "list_endpoints",
            "The tenant's webhook endpoints, newest first (`limit`, `cursor`)",
        ),
        Forward("GET", ENDPOINT, Reader, "get_endpoint", "A webhook endpoint"),
        Forward(
            "PATCH",
            ENDPOINT,
            Writer,
            "update_endpoint",
            "Change a webhook endpoint's url, events or status (`enabled` is the older shape of status)",
        ),
        Forward("DELETE", ENDPOINT, Writer, "delete_endpoint", "Delete a webhook endpoint", status_code=204),
        Forward(
            "POST",
            ENDPOINT + "/rotate-secret",
            Writer,
            "rotate_secret",
            "Replace the endpoint's secret (the new one is shown only now; the old one signs for a grace period)",
        ),
        Forward(
            "GET",
            ENDPOINT + "/deliveries",
            Reader,
            "list_deliveries",
            "The endpoint's deliveries, newest first (`limit`, `cursor`)",
        ),
        Forward("GET", DELIVERY, Reader, "get_delivery", "A delivery with its attempt log"),
        Forward(
            "POST",
            DELIVERY + "/replay",
            Writer,
            "replay_delivery",
            "Deliver the event again, with the same webhook-id, whatever the delivery's status",
            status_code=202,
        ),
    ],
)
