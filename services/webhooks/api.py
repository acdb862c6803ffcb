"""Routes of the webhooks service. The gateway reaches them with an internal identity."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Request, Response

from services.webhooks import service
from services.webhooks.repository import EndpointRepository
from services.webhooks.schemas import DeliveryOut, EndpointCreate, EndpointOut, EndpointUpdate, EndpointWithSecret
from services.webhooks.settings import WebhooksSettings
from services.webhooks.url_safety import Resolver
from shared.db import SessionDep
from shared.errors import Conflict, NotFound, ValidationFailed
from shared.identity import TenantIdentityDep
from shared.pagination import DEFAULT_LIMIT, CursorQuery, LimitQuery, Page

router = APIRouter(prefix="/endpoints")


async def get_repo(session: SessionDep) -> EndpointRepository:
    return EndpointRepository(session)


async def get_settings(request: Request) -> WebhooksSettings:
    settings: WebhooksSettings = request.state.settings
    return settings


async def get_resolver(request: Request) -> Resolver | None:
    """The resolver registration checks host names with: the system's, unless the app was given one."""
    resolver: Resolver | None = getattr(request.state, "resolver", None)
    return resolver


RepoDep = Annotated[EndpointRepository, Depends(get_repo)]
SettingsDep = Annotated[WebhooksSettings, Depends(get_settings)]
ResolverDep = Annotated[Resolver | None, Depends(get_resolver)]
EndpointId = Annotated[str, Path(min_length=1, max_length=64)]
# A secret must not linger in any cache between here and the client.
NO_STORE = {"Cache-Control": "no-store"}
WRITE_ERRORS = {
    **ValidationFailed.openapi_response(),
    **Conflict.openapi_response(),
}


def with_secret(endpoint: object) -> EndpointWithSecret:
    return EndpointWithSecret.model_validate(endpoint)


@router.post("", status_code=201, response_model=EndpointWithSecret, responses=WRITE_ERRORS)
async def create_endpoint(
    data: EndpointCreate,
    repo: RepoDep,
    settings: SettingsDep,
    resolver: ResolverDep,
    identity: TenantIdentityDep,
    response: Response,
) -> EndpointWithSecret:
    identity.require_scope("webhooks:write")
    endpoint = await service.create_endpoint(repo, settings, identity.require_tenant(), data, resolver)
    response.headers.update(NO_STORE)
    return with_secret(endpoint)


@router.get("", response_model=Page[EndpointOut])
async def list_endpoints(
    repo: RepoDep, identity: TenantIdentityDep, limit: LimitQuery = DEFAULT_LIMIT, cursor: CursorQuery = None
) -> Page[EndpointOut]:
    identity.require_scope("webhooks:read")
    return await service.list_endpoints(repo, identity.require_tenant(), limit, cursor)


@router.get("/{endpoint_id}", response_model=EndpointOut, responses=NotFound.openapi_response())
async def get_endpoint(endpoint_id: EndpointId, repo: RepoDep, identity: TenantIdentityDep) -> EndpointOut:
    identity.require_scope("webhooks:read")
    return EndpointOut.model_validate(await service.get_endpoint(repo, identity.require_tenant(), endpoint_id))


@router.patch("/{endpoint_id}", response_model=EndpointOut, responses={**WRITE_ERRORS, **NotFound.openapi_response()})
async def update_endpoint(
    endpoint_id: EndpointId,
    data: EndpointUpdate,
    repo: RepoDep,
    settings: SettingsDep,
    resolver: ResolverDep,
    identity: TenantIdentityDep,
) -> EndpointOut:
    identity.require_scope("webhooks:write")
    endpoint = await service.update_endpoint(repo, settings, identity.require_tenant(), endpoint_id, data, resolver)
    return EndpointOut.model_validate(endpoint)


@router.delete("/{endpoint_id}", status_code=204, responses=NotFound.openapi_response())
async def delete_endpoint(endpoint_id: EndpointId, repo: RepoDep, identity: TenantIdentityDep) -> Response:
    identity.require_scope("webhooks:write")
    await service.delete_endpoint(repo, identity.require_tenant(), endpoint_id)
    return Response(status_code=204)


@router.post("/{endpoint_id}/rotate-secret", response_model=EndpointWithSecret, responses=NotFound.openapi_response())
async def rotate_secret(
    endpoint_id: EndpointId, repo: RepoDep, settings: SettingsDep, identity: TenantIdentityDep, response: Response
) -> EndpointWithSecret:
    identity.require_scope("webhooks:write")
    endpoint = await service.rotate_secret(repo, settings, identity.require_tenant(), endpoint_id)
    response.headers.update(NO_STORE)
    return with_secret(endpoint)


@router.get(
    "/{endpoint_id}/deliveries",
    response_model=Page[DeliveryOut],
    responses={**NotFound.openapi_response(), **ValidationFailed.openapi_response()},
)
async def list_deliveries(
    endpoint_id: EndpointId,
    repo: RepoDep,
    identity: TenantIdentityDep,
    limit: LimitQuery = DEFAULT_LIMIT,
    cursor: CursorQuery = None,
) -> Page[DeliveryOut]:
    identity.require_scope("webhooks:read")
    return await service.list_deliveries(repo, identity.require_tenant(), endpoint_id, limit, cursor)
