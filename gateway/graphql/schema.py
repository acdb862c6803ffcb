"""The GraphQL schema: the same data as the REST API, through the same services.

Every resolver calls a service as the caller (`GraphQLContext.call`), so tenants, scopes and the
services' rules are exactly those of REST. Each field that reads a domain needs that domain's scope
(`HasScope`): a caller without `products:read` gets its orders, and an error on each order line's
`product`. An order line's `product` goes through the request's DataLoader, so the products of every
order in one answer cost one batched call of the inventory service.

Mutations answer a nullable order: the mutations of one document run one after the other, and one
that fails is `null` with its error while the orders the others placed or cancelled are in `data`.
Each sends the service an Idempotency-Key of its own, derived from the request's
(`GraphQLContext.mutation_key`), so a document sent again with the same key places nothing twice.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import strawberry
from graphql import GraphQLError
from strawberry.extensions.field_extension import FieldExtension
from strawberry.permission import BasePermission, PermissionExtension
from strawberry.types import Info

from gateway.graphql.context import GraphQLContext
from shared.contract import RESOURCE_ID_PATTERN
from shared.pagination import DEFAULT_LIMIT, MAX_LIMIT

GraphQLInfo = Info[GraphQLContext, None]
T = TypeVar("T")


class HasScope(BasePermission):
    """The field needs `scope`, as the REST routes of its domain do."""

    def __init__(self, scope: str) -> None:
        self.scope = scope
        self.message = f"This field needs the {scope} scope."
        self.error_extensions = {"code": "INSUFFICIENT_SCOPE", "required_scope": scope}

    def has_permission(self, source: Any, info: GraphQLInfo, **kwargs: Any) -> bool:
        return self.scope in info.context.identity.scopes


def needs(scope: str) -> list[FieldExtension]:
    return [PermissionExtension(permissions=[HasScope(scope)])]


def _page_params(limit: int, cursor: str | None) -> dict[str, Any]:
    if not 1 <= limit <= MAX_LIMIT:
        raise GraphQLError(f"limit must be 1 to {MAX_LIMIT}.", extensions={"code": "VALIDATION_FAILED"})
    params: dict[str, Any] = {"limit": limit}
    if cursor is not None:
        params["cursor"] = cursor
    return params


def _id(value: str) -> str:
    if not re.fullmatch(RESOURCE_ID_PATTERN, value):
        raise GraphQLError("Not an id.", extensions={"code": "VALIDATION_FAILED"})
    return value


@strawberry.type
class User:
    id: strawberry.ID
    email: str
    role: str
    tenant_id: str

    @classmethod
    def of(cls, data: dict[str, Any]) -> User:
        return cls(id=strawberry.ID(data["id"]), email=data["email"], role=data["role"], tenant_id=data["tenant_id"])


@strawberry.type
class Product:
    id: strawberry.ID
    sku: str
    name: str
    price_cents: int
    stock: int

    @classmethod
    def of(cls, data: dict[str, Any]) -> Product:
        return cls(
            id=strawberry.ID(data["id"]),
            sku=data["sku"],
            name=data["name"],
            price_cents=data["price_cents"],
            stock=data["stock"],
        )


@strawberry.type
class OrderItem:
    product_id: strawberry.ID
    quantity: int
    unit_price_cents: int
    line_total_cents: int

    @strawberry.field(extensions=needs("products:read"), description="The product as it is now.")
    async def product(self, info: GraphQLInfo) -> Product | None:
        found = await info.context.products.load(str(self.product_id))
        return Product.of(found) if found is not None else None


@strawberry.type
class Order:
    id: strawberry.ID
    status: str
    total_cents: int
    user_id: str
    items: list[OrderItem]

    @classmethod
    def of(cls, data: dict[str, Any]) -> Order:
        return cls(
            id=strawberry.ID(data["id"]),
            status=data["status"],
            total_cents=data["total_cents"],
            user_id=data["user_id"],
            items=[
                OrderItem(
                    product_id=strawberry.ID(item["product_id"]),
                    quantity=item["quantity"],
                    unit_price_cents=item["unit_price_cents"],
                    line_total_cents=item["line_total_cents"],
                )
                for item in data["items"]
            ],
        )


@strawberry.type
class Page(Generic[T]):
    """A page of a list, newest first; `Page[Product]` is `ProductPage` in the schema."""

    items: list[T]
    next_cursor: str | None


async def _page(
    info: GraphQLInfo, service: str, path: str, limit: int, cursor: str | None, of: Callable[[dict[str, Any]], T]
) -> Page[T]:
    """One page of a service's list, its items made into `of`'s type."""
    page = await info.context.call(service, "GET", path, params=_page_params(limit, cursor))
    return Page(items=[of(item) for item in page["items"]], next_cursor=page["next_cursor"])


@strawberry.input
class OrderItemInput:
    product_id: strawberry.ID
    quantity: int


@strawberry.type
class Query:
    @strawberry.field(description="The calling user.")
    async def me(self, info: GraphQLInfo) -> User:
        return User.of(await info.context.call("users", "GET", "/users/me"))

    @strawberry.field(extensions=needs("users:read"), description="A user of the caller's tenant.")
    async def user(self, info: GraphQLInfo, id: strawberry.ID) -> User:
        return User.of(await info.context.call("users", "GET", f"/users/{_id(id)}"))

    @strawberry.field(extensions=needs("products:read"), description="The tenant's products, newest first.")
    async def products(self, info: GraphQLInfo, limit: int = DEFAULT_LIMIT, cursor: str | None = None) -> Page[Product]:
        return await _page(info, "inventory", "/products", limit, cursor, Product.of)

    @strawberry.field(extensions=needs("products:read"), description="A product of the tenant.")
    async def product(self, info: GraphQLInfo, id: strawberry.ID) -> Product:
        return Product.of(await info.context.call("inventory", "GET", f"/products/{_id(id)}"))

    @strawberry.field(extensions=needs("orders:read"), description="The tenant's orders, newest first.")
    async def orders(self, info: GraphQLInfo, limit: int = DEFAULT_LIMIT, cursor: str | None = None) -> Page[Order]:
        return await _page(info, "orders", "/orders", limit, cursor, Order.of)

    @strawberry.field(extensions=needs("orders:read"), description="An order of the tenant.")
    async def order(self, info: GraphQLInfo, id: strawberry.ID) -> Order:
        return Order.of(await info.context.call("orders", "GET", f"/orders/{_id(id)}"))


@strawberry.type
class Mutation:
    @strawberry.mutation(
        extensions=needs("orders:write"),
        description="Place an order: reserves every item's stock or none, and emits order.created.",
    )
    async def create_order(self, info: GraphQLInfo, items: list[OrderItemInput]) -> Order | None:
        body = {"items": [{"product_id": str(i.product_id), "quantity": i.quantity} for i in items]}
        key = info.context.mutation_key(str(info.path.key))
        return Order.of(await info.context.call("orders", "POST", "/orders", json_body=body, idempotency_key=key))

    @strawberry.mutation(
        extensions=needs("orders:write"),
        description="Cancel an order: releases its stock and emits order.cancelled.",
    )
    async def cancel_order(self, info: GraphQLInfo, id: strawberry.ID) -> Order | None:
        key = info.context.mutation_key(str(info.path.key))
        return Order.of(await info.context.call("orders", "POST", f"/orders/{_id(id)}/cancel", idempotency_key=key))
