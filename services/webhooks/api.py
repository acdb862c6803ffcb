"""Routes of the webhooks service. The gateway reaches them with an internal identity; who may call
each route is its dependency (`deps.py`), and each handler is one call of `service.py`."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Response

from services.webhooks import errors, service
from services.webhooks.deps import (
    DeliveryRepoDep,
    RegistrationDep,
    RepoDep,
    SettingsDep,
    WebhooksRead,
    WebhooksWrite,
)
from services.webhooks.models import Endpoint
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
from shared.contract import CACHE_CONTROL, NO_STORE
from shared.deprecation import WEBHOOK_ENDPOINT_ENABLED
from shared.pagination import Page, PageDep
from shared.problem_docs import route_responses

router = APIRouter(prefix="/endpoints")
deliveries_router = APIRouter(prefix="/deliveries")

RowId = Annotated[str, Path(min_length=1, max_length=64)]


def with_secret(endpoint: Endpoint, response: Response) -> EndpointWithSecret:
    """The endpoint with its secret; the secret must not linger in any cache on its way."""
    response.headers[CACHE_CONTROL] = NO_STORE
    return EndpointWithSecret.model_validate(endpoint)


@router.post("", status_code=201, responses=route_responses(errors.CREATE_ENDPOINT_ERRORS))
async def create_endpoint(
    data: EndpointCreate, repo: RepoDep, registration: RegistrationDep, caller: WebhooksWrite, response: Response
) -> EndpointWithSecret:
    if data.enabled is not None:
        WEBHOOK_ENDPOINT_ENABLED.mark(response.headers)
    return with_secret(await service.create_endpoint(repo, registration, caller.tenant_id, data), response)


@router.get("", responses=route_responses(errors.LIST_ENDPOINTS_ERRORS))
async def list_endpoints(repo: RepoDep, caller: WebhooksRead, page: PageDep) -> Page[EndpointOut]:
    return await service.list_endpoints(repo, caller.tenant_id, page)


@router.get("/{endpoint_id}", responses=route_responses(errors.GET_ENDPOINT_ERRORS))
async def get_endpoint(endpoint_id: RowId, repo: RepoDep, caller: WebhooksRead) -> EndpointOut:
    return EndpointOut.model_validate(await service.get_endpoint(repo, caller.tenant_id, endpoint_id))


@router.patch("/{endpoint_id}", responses=route_responses(errors.UPDATE_ENDPOINT_ERRORS))
async def update_endpoint(
    endpoint_id: RowId,
    data: EndpointUpdate,
    repo: RepoDep,
    deliveries: DeliveryRepoDep,
    registration: RegistrationDep,
    caller: WebhooksWrite,
    response: Response,
) -> EndpointOut:
    if data.enabled is not None:
        # The request used the retired field: the answer says so (and the gateway counts it).
        WEBHOOK_ENDPOINT_ENABLED.mark(response.headers)
    endpoint = await service.update_endpoint(repo, deliveries, registration, caller.tenant_id, endpoint_id, data)
    return EndpointOut.model_validate(endpoint)


@router.delete("/{endpoint_id}", status_code=204, responses=route_responses(errors.DELETE_ENDPOINT_ERRORS))
async def delete_endpoint(endpoint_id: RowId, repo: RepoDep, caller: WebhooksWrite) -> Response:
    await service.delete_endpoint(repo, caller.tenant_id, endpoint_id)
    return Response(status_code=204)


@router.post("/{endpoint_id}/rotate-secret", responses=route_responses(errors.ROTATE_SECRET_ERRORS))
async def rotate_secret(
    endpoint_id: RowId, repo: RepoDep, settings: SettingsDep, caller: WebhooksWrite, response: Response
) -> EndpointWithSecret:
    return with_secret(await service.rotate_secret(repo, settings, caller.tenant_id, endpoint_id), response)


@router.post("/{endpoint_id}/recover", status_code=202, responses=route_responses(errors.RECOVER_ENDPOINT_ERRORS))
async def recover_endpoint(
    endpoint_id: RowId, data: RecoverRequest, repo: RepoDep, deliveries: DeliveryRepoDep, caller: WebhooksWrite
) -> Recovered:
    return await service.recover(repo, deliveries, caller.tenant_id, endpoint_id, data)


@router.get("/{endpoint_id}/deliveries", responses=route_responses(errors.LIST_DELIVERIES_ERRORS))
async def list_deliveries(endpoint_id: RowId, repo: RepoDep, caller: WebhooksRead, page: PageDep) -> Page[DeliveryOut]:
    return await service.list_deliveries(repo, caller.tenant_id, endpoint_id, page)


@deliveries_router.get("/{delivery_id}", responses=route_responses(errors.GET_DELIVERY_ERRORS))
async def get_delivery(delivery_id: RowId, deliveries: DeliveryRepoDep, caller: WebhooksRead) -> DeliveryDetail:
    return await service.delivery_detail(deliveries, caller.tenant_id, delivery_id)


@deliveries_router.post(
    "/{delivery_id}/replay", status_code=202, responses=route_responses(errors.REPLAY_DELIVERY_ERRORS)
)
async def replay_delivery(delivery_id: RowId, deliveries: DeliveryRepoDep, caller: WebhooksWrite) -> DeliveryOut:
    return await service.replay(deliveries, caller.tenant_id, delivery_id)
