"""What every resolver of one GraphQL request gets: the caller, the services (through the gateway's
one pooled client and its identity tokens, as REST), the request's `Idempotency-Key`, and the
request's DataLoaders."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from graphql import GraphQLError
from strawberry.dataloader import DataLoader
from strawberry.fastapi import BaseContext

from gateway.upstreams import Upstreams
from shared.contract import IDEMPOTENCY_HEADER, Identity
from shared.errors import UpstreamBadResponse
from shared.request_id import REQUEST_ID_HEADER_NAME

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
    code = problem.get("error_code") or UpstreamBadResponse.error_code
    extensions: dict[str, Any] = {"code": code, "status": status}
    if problem.get("errors"):
        extensions["errors"] = problem["errors"]
    return GraphQLError(
        str(problem.get("detail") or f"The {service} service answered {status}."), extensions=extensions
    )


def field_idempotency_key(request_key: str, response_key: str) -> str:
    """The `Idempotency-Key` a mutation field sends its service: derived from the request's key and
    the field's response key (its alias, else its name), so each mutation of one document has a key
    of its own, and the same key each time that document is sent again with that request key.

    `graphql:` and the SHA-256 (hex) of `<request key>` LF `<response key>`: always a valid key
    (72 visible ASCII characters, whatever the two lengths), and never one a REST call sends as is."""
    digest = hashlib.sha256(f"{request_key}\n{response_key}".encode()).hexdigest()
    return f"graphql:{digest}"


@dataclass
class GraphQLContext(BaseContext):
    identity: Identity
    upstreams: Upstreams
    request_id: str | None
    # The request's Idempotency-Key, already checked (shared.contract.checked_idempotency_key).
    idempotency_key: str | None = None
    products: DataLoader[str, dict[str, Any] | None] = field(init=False)

    def __post_init__(self) -> None:
        super().__init__()
        self.products = DataLoader(load_fn=self._load_products, max_batch_size=PRODUCT_BATCH)

    def mutation_key(self, response_key: str) -> str | None:
        """The Idempotency-Key of the mutation field answering at `response_key`, if the request has one."""
        if self.idempotency_key is None:
            return None
        return field_idempotency_key(self.idempotency_key, response_key)

    async def call(
        self,
        service: str,
        method: str,
        path: str,
        *,
        params: Any = None,
        json_body: Any = None,
        idempotency_key: str | None = None,
    ) -> Any:
        """Calls a service as the caller; answers the decoded body, or raises the GraphQL error of its
        problem (the REST `error_code` in `extensions.code`), or the `PorticoError` of a call that got
        no answer (the service unreachable or failing, the request's deadline passed), which
        `errors.py` answers with its code as REST does."""
        headers: dict[str, str] = {}
        if self.request_id:
            headers[REQUEST_ID_HEADER_NAME] = self.request_id
        if idempotency_key is not None:
            headers[IDEMPOTENCY_HEADER] = idempotency_key
        response = await self.upstreams[service].send(
            method, path, identity=self.identity, params=params, json=json_body, headers=headers or None
        )
        if response.status_code >= 400:
            raise problem_error(service, response.status_code, response.content)
        return response.json()

    async def _load_products(self, ids: list[str]) -> list[dict[str, Any] | None]:
        """Every product the request's orders name, in one call of the inventory service's batch read."""
        page = await self.call("inventory", "GET", "/products", params={"ids": ",".join(ids)})
        found = {product["id"]: product for product in page["items"]}
        return [found.get(product_id) for product_id in ids]
