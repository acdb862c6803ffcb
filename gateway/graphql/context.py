"""What every resolver of one GraphQL request gets: the caller, the services (through the gateway's
one pooled client and its identity tokens, as REST), and the request's DataLoaders."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from graphql import GraphQLError
from strawberry.dataloader import DataLoader
from strawberry.fastapi import BaseContext

from gateway.upstreams import Upstreams
from shared.contract import Identity
from shared.errors import DownstreamError

# The inventory service's batch read takes up to this many ids.
PRODUCT_BATCH = 100


def problem_error(service: str, status: int, body: bytes) -> GraphQLError:
    """A service's problem+json answer as a GraphQL error, with its `error_code` as `extensions.code`."""
    try:
        problem = json.loads(body)
    except ValueError:
        problem = {}
    if not isinstance(problem, dict):
        problem = {}
    code = problem.get("error_code") or "DOWNSTREAM_BAD_RESPONSE"
    extensions: dict[str, Any] = {"code": code, "status": status}
    if problem.get("errors"):
        extensions["errors"] = problem["errors"]
    return GraphQLError(
        str(problem.get("detail") or f"The {service} service answered {status}."), extensions=extensions
    )


@dataclass
class GraphQLContext(BaseContext):
    identity: Identity
    upstreams: Upstreams
    request_id: str | None
    products: DataLoader[str, dict[str, Any] | None] = field(init=False)

    def __post_init__(self) -> None:
        super().__init__()
        self.products = DataLoader(load_fn=self._load_products, max_batch_size=PRODUCT_BATCH)

    async def call(self, service: str, method: str, path: str, *, params: Any = None, json_body: Any = None) -> Any:
        """Calls a service as the caller; answers the decoded body, or raises the GraphQL error of its
        problem (the REST `error_code` in `extensions.code`)."""
        headers = {"x-request-id": self.request_id} if self.request_id else None
        try:
            response = await self.upstreams[service].send(
                method, path, identity=self.identity, params=params, json=json_body, headers=headers
            )
        except DownstreamError as exc:
            raise GraphQLError(exc.detail, extensions={"code": exc.code, "status": exc.status_code}) from exc
        if response.status_code >= 400:
            raise problem_error(service, response.status_code, response.content)
        return response.json()

    async def _load_products(self, ids: list[str]) -> list[dict[str, Any] | None]:
        """Every product the request's orders name, in one call of the inventory service's batch read."""
        page = await self.call("inventory", "GET", "/products", params={"ids": ",".join(ids)})
        found = {product["id"]: product for product in page["items"]}
        return [found.get(product_id) for product_id in ids]
