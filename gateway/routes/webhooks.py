"""Webhook endpoints: proxied to the webhooks service. A paid feature: the plan gate runs first on
every route, so a free tenant gets 402 whatever else is wrong with its request."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from starlette.responses import Response

from gateway.auth import RequireScope
from gateway.plans import RequirePlan
from gateway.proxy import ResourceId, UpstreamsDep
from shared.contract import Identity
from shared.errors import PaymentRequired

router = APIRouter(
    prefix="/v1/webhooks",
    tags=["webhooks"],
    dependencies=[Depends(RequirePlan("pro", "enterprise", feature="Webhooks"))],
    responses=PaymentRequired.openapi_response(),
)

Reader = Annotated[Identity, Depends(RequireScope("webhooks:read"))]
Writer = Annotated[Identity, Depends(RequireScope("webhooks:write"))]


@router.post("/endpoints", status_code=201, summary="Register a webhook endpoint (its secret is shown only now)")
async def create_endpoint(request: Request, upstreams: UpstreamsDep, identity: Writer) -> Response:
    return await upstreams.forward(request, "webhooks", "/endpoints", identity)


@router.get("/endpoints", summary="The tenant's webhook endpoints, newest first (`limit`, `cursor`)")
async def list_endpoints(request: Request, upstreams: UpstreamsDep, identity: Reader) -> Response:
    return await upstreams.forward(request, "webhooks", "/endpoints", identity)


@router.get("/endpoints/{endpoint_id}", summary="A webhook endpoint")
async def get_endpoint(
    endpoint_id: ResourceId, request: Request, upstreams: UpstreamsDep, identity: Reader
) -> Response:
    return await upstreams.forward(request, "webhooks", f"/endpoints/{endpoint_id}", identity)


@router.patch("/endpoints/{endpoint_id}", summary="Change a webhook endpoint's url, events or enabled flag")
async def update_endpoint(
    endpoint_id: ResourceId, request: Request, upstreams: UpstreamsDep, identity: Writer
) -> Response:
    return await upstreams.forward(request, "webhooks", f"/endpoints/{endpoint_id}", identity)


@router.delete("/endpoints/{endpoint_id}", status_code=204, summary="Delete a webhook endpoint")
async def delete_endpoint(
    endpoint_id: ResourceId, request: Request, upstreams: UpstreamsDep, identity: Writer
) -> Response:
    return await upstreams.forward(request, "webhooks", f"/endpoints/{endpoint_id}", identity)


@router.post(
    "/endpoints/{endpoint_id}/rotate-secret",
    summary="Replace the endpoint's secret (the new one is shown only now; the old one signs for a grace period)",
)
async def rotate_secret(
    endpoint_id: ResourceId, request: Request, upstreams: UpstreamsDep, identity: Writer
) -> Response:
    return await upstreams.forward(request, "webhooks", f"/endpoints/{endpoint_id}/rotate-secret", identity)


@router.get(
    "/endpoints/{endpoint_id}/deliveries", summary="The endpoint's deliveries, newest first (`limit`, `cursor`)"
)
async def list_deliveries(
    endpoint_id: ResourceId, request: Request, upstreams: UpstreamsDep, identity: Reader
) -> Response:
    return await upstreams.forward(request, "webhooks", f"/endpoints/{endpoint_id}/deliveries", identity)
