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

import dataclasses
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Self, TypeVar

import strawberry
from graphql import GraphQLError
from strawberry.extensions.field_extension import FieldExtension
from strawberry.permission import BasePermission, PermissionExtension
from strawberry.types import Info

from gateway.graphql.context import GraphQLContext
from gateway.graphql.limits import PAGE_ITEMS, at_most
from shared.contract import (
    MAX_ITEMS,
    ORDERS_READ,
    ORDERS_WRITE,
    PRODUCTS_READ,
    RESOURCE_ID_PATTERN,
    USERS_READ,
    InsufficientScope,
)
from shared.errors import ValidationFailed
from shared.pagination import DEFAULT_LIMIT, MAX_LIMIT

GraphQLInfo = Info[GraphQLContext, None]
T = TypeVar("T")


class HasScope(BasePermission):
    """The field needs `scope`, as the REST routes of its domain do."""

    def __init__(self, scope: str) -> None:
        self.scope = scope
        self.message = f"This field needs the {scope} scope."
        self.error_extensions = {"code": InsufficientScope.error_code, "required_scope": scope}

    def has_permission(self, source: Any, info: GraphQLInfo, **kwargs: Any) -> bool:
        return self.scope in info.context.identity.scopes


def needs(scope: str) -> list[FieldExtension]:
    return [PermissionExtension(permissions=[HasScope(scope)])]


def _page_params(limit: int, cursor: str | None) -> dict[str, Any]:
    if not 1 <= limit <= MAX_LIMIT:
        raise GraphQLError(f"limit must be 1 to {MAX_LIMIT}.", extensions={"code": ValidationFailed.error_code})
    params: dict[str, Any] = {"limit": limit}
    if cursor is not None:
        params["cursor"] = cursor
    return params


def _id(value: str) -> str:
    if not re.fullmatch(RESOURCE_ID_PATTERN, value):
        raise GraphQLError("Not an id.", extensions={"code": ValidationFailed.error_code})
    return value


class FromJson:
    """A GraphQL type made from a service's JSON (`of`): each of its fields is the JSON member of the
    same name (an id is a string either way)."""

    if TYPE_CHECKING:
        # What makes a class a dataclass to the type checker: every subclass is a strawberry type.
        __dataclass_fields__: ClassVar[dict[str, dataclasses.Field[Any]]]

    @classmethod
    def of(cls, data: Mapping[str, Any], **given: Any) -> Self:
        """The type made from `data`, but for the fields `given`."""
        read = {
            field.name: data[field.name] for field in dataclasses.fields(cls) if field.init and field.name not in given
        }
        return cls(**read, **given)


@strawberry.type
class User(FromJson):
    id: strawberry.ID
    email: str
    role: str
    tenant_id: str


@strawberry.type
class Product(FromJson):
    id: strawberry.ID
    sku: str
    name: str
    price_cents: int
    stock: int


@strawberry.type
class OrderItem(FromJson):
    product_id: strawberry.ID
    quantity: int
    unit_price_cents: int
    line_total_cents: int

    @strawberry.field(extensions=needs(PRODUCTS_READ), description="The product as it is now.")
    async def product(self, info: GraphQLInfo) -> Product | None:
        found = await info.context.products.load(str(self.product_id))
        return Product.of(found) if found is not None else None


@strawberry.type
class Order(FromJson):
    id: strawberry.ID
    status: str
    total_cents: int
    user_id: str
    # An order holds at most MAX_ITEMS lines: what the cost of a document counts them as (limits.py).
    items: list[OrderItem] = strawberry.field(metadata=at_most(MAX_ITEMS))

    @classmethod
    def of(cls, data: Mapping[str, Any], **given: Any) -> Self:
        return super().of(data, items=[OrderItem.of(item) for item in data["items"]], **given)


@strawberry.type
class Page(Generic[T]):
    """A page of a list, newest first; `Page[Product]` is `ProductPage` in the schema."""

    items: list[T] = strawberry.field(metadata=PAGE_ITEMS)
    next_cursor: str | None


@dataclass(frozen=True)
class Resource(Generic[T]):
    """A resource of a service's REST API, read as REST reads it: one by id (`GET <path>/{id}`) or a
    page of the list (`GET <path>`), each item made into `of`'s type. Its fields need `scope`."""

    service: str
    path: str
    of: Callable[[dict[str, Any]], T]
    scope: str

    def one(self, description: str) -> T:
        """The field that answers one of the resource, by `id`."""

        async def resolve(info: GraphQLInfo, id: strawberry.ID) -> T:
            return self.of(await info.context.call(self.service, "GET", f"{self.path}/{_id(id)}"))

        return strawberry.field(resolver=resolve, extensions=needs(self.scope), description=description)

    def page(self, description: str) -> Page[T]:
        """The field that answers a page of the resource's list, newest first."""

        async def resolve(info: GraphQLInfo, limit: int = DEFAULT_LIMIT, cursor: str | None = None) -> Page[T]:
            page = await info.context.call(self.service, "GET", self.path, params=_page_params(limit, cursor))
            return Page(items=[self.of(item) for item in page["items"]], next_cursor=page["next_cursor"])

        return strawberry.field(resolver=resolve, extensions=needs(self.scope), description=description)


USERS = Resource("users", "/users", User.of, scope=USERS_READ)
PRODUCTS = Resource("inventory", "/products", Product.of, scope=PRODUCTS_READ)
ORDERS = Resource("orders", "/orders", Order.of, scope=ORDERS_READ)


@strawberry.input
class OrderItemInput:
    product_id: strawberry.ID
    quantity: int


async def _me(info: GraphQLInfo) -> User:
    return User.of(await info.context.call("users", "GET", "/users/me"))


@strawberry.type
class Query:
    me: User = strawberry.field(resolver=_me, description="The calling user.")
    user: User = USERS.one("A user of the caller's tenant.")
    products: Page[Product] = PRODUCTS.page("The tenant's products, newest first.")
    product: Product = PRODUCTS.one("A product of the tenant.")
    orders: Page[Order] = ORDERS.page("The tenant's orders, newest first.")
    order: Order = ORDERS.one("An order of the tenant.")


@strawberry.type
class Mutation:
    @strawberry.mutation(
        extensions=needs(ORDERS_WRITE),
        description="Place an order: reserves every item's stock or none, and emits order.created.",
    )
    async def create_order(self, info: GraphQLInfo, items: list[OrderItemInput]) -> Order | None:
        body = {"items": [{"product_id": str(i.product_id), "quantity": i.quantity} for i in items]}
        key = info.context.mutation_key(str(info.path.key))
        return Order.of(await info.context.call("orders", "POST", "/orders", json_body=body, idempotency_key=key))

    @strawberry.mutation(
        extensions=needs(ORDERS_WRITE),
        description="Cancel an order: releases its stock and emits order.cancelled.",
    )
    async def cancel_order(self, info: GraphQLInfo, id: strawberry.ID) -> Order | None:
        key = info.context.mutation_key(str(info.path.key))
        return Order.of(await info.context.call("orders", "POST", f"/orders/{_id(id)}/cancel", idempotency_key=key))
