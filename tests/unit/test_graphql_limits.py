"""The GraphQL bounds, checked before anything is resolved: no service is called for these."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Mapping
from typing import Any

import pytest
import strawberry
from graphql import get_introspection_query, parse

from gateway.graphql.limits import Bounds, Shape, Shapes, at_most, document_errors
from gateway.graphql.router import create_schema
from shared.contract import MAX_ITEMS
from shared.pagination import DEFAULT_LIMIT, MAX_LIMIT
from tests.edge_support import gateway_settings

LINES = "{ orders(limit: 10) { items { items { product { id sku } } } } }"
# A hundred orders, each line's product: 10,000 lines and 10,000 products at most.
EVERY_LINE = "{ orders(limit: 100) { items { items { product { name } } } } }"


def cost(query: str, shapes: Shapes | None = None, variables: Mapping[str, object] | None = None) -> int:
    """What the document costs, as the cost bound's refusal says it (within every other bound)."""
    bounds = Bounds(max_cost=0, max_depth=1_000, max_aliases=1_000, max_field_repeats=1_000, shapes=shapes or Shapes())
    [error] = document_errors(parse(query), bounds, variables)
    assert error.extensions is not None
    assert error.extensions["code"] == "QUERY_TOO_COSTLY"
    total: int = error.extensions["cost"]
    return total


def test_cost_multiplies_what_is_under_a_page():
    assert cost("{ me { id email } }") == 3
    # orders 1 + 10 x (items 1 + (items 1 + (product 1 + 2)))
    assert cost(LINES) == 1 + 10 * (1 + (1 + (1 + 2)))
    # A variable limit counts as the largest page (REST's, shared/pagination.py).
    assert cost("query($n: Int!) { orders(limit: $n) { nextCursor } }") == 1 + MAX_LIMIT * 1
    assert cost("fragment F on Query { me { id } } query { ...F ...F }") == 4


async def test_the_schema_refuses_deep_aliased_and_costly_documents():
    schema = create_schema(gateway_settings(None, graphql_max_depth=3, graphql_max_aliases=2, graphql_max_cost=50))
    deep = await schema.execute(LINES.replace("(limit: 10)", ""))
    assert deep.errors
    assert "exceeds maximum operation depth" in deep.errors[0].message
    aliased = await schema.execute("{ a: me { id } b: me { id } c: me { id } }")
    assert aliased.errors
    assert "aliases" in aliased.errors[0].message
    costly = await schema.execute("{ orders(limit: 60) { nextCursor } }")
    assert costly.errors
    assert costly.errors[0].extensions == {"code": "QUERY_TOO_COSTLY", "cost": 61, "max_cost": 50}


def execute_within(schema: strawberry.Schema, query: str, seconds: float = 30) -> Any:
    """Runs the query in a daemon thread: a document that keeps the schema busy fails the test
    instead of hanging it."""
    results: list[Any] = []
    thread = threading.Thread(target=lambda: results.append(asyncio.run(schema.execute(query))), daemon=True)
    thread.start()
    thread.join(seconds)
    assert results, f"the schema was still busy with the document after {seconds} s"
    return results[0]


def doubling_fragments(levels: int) -> str:
    """A short document whose fragments each spread the next one twice: it expands to 2**levels
    fields, which a walk over every spread never finishes."""
    chain = " ".join(f"fragment F{i} on Query {{ ...F{i + 1} ...F{i + 1} }}" for i in range(levels))
    return f"query {{ ...F0 }} {chain} fragment F{levels} on Query {{ me {{ id }} }}"


def test_fragments_spread_over_and_over_are_refused_at_once():
    schema = create_schema(gateway_settings(None))
    # 2**41 fields once expanded, in about 500 tokens.
    result = execute_within(schema, doubling_fragments(40))
    assert result.errors
    assert result.errors[0].extensions == {"code": "QUERY_TOO_COSTLY", "cost": 2**41, "max_cost": 2000}
    assert result.data is None


def test_fragment_cycles_and_unknown_fragments_are_refused_at_once():
    schema = create_schema(gateway_settings(None))
    names = [f"F{i}" for i in range(14)]
    # Every fragment spreads every other one: walking each path would take 14! steps.
    cycles = "query { ...F0 } " + " ".join(
        f"fragment {name} on Query {{ me {{ id }} {' '.join('...' + other for other in names)} }}" for name in names
    )
    result = execute_within(schema, cycles)
    assert result.errors
    assert "within itself" in result.errors[0].message
    unknown = execute_within(schema, "query { ...Missing }")
    assert unknown.errors
    assert unknown.errors[0].message == "Unknown fragment 'Missing'."


async def test_documents_beyond_the_token_bound_are_refused():
    schema = create_schema(gateway_settings(None, graphql_max_tokens=20))
    result = await schema.execute("{ " + " ".join(f"f{i}: me {{ id }}" for i in range(10)) + " }")
    assert result.errors
    assert "token" in result.errors[0].message.lower()


def refused(result: Any) -> dict[str, Any]:
    assert result.errors, result
    assert result.data is None
    extensions: dict[str, Any] = result.errors[0].extensions
    return extensions


async def test_one_field_selected_over_and_over_at_one_place_is_refused():
    schema = create_schema(gateway_settings(None, graphql_max_field_repeats=3))
    # 495 times: within the tokens, cost, depth and alias bounds, and over a second of validation.
    big = create_schema(gateway_settings(None))
    assert refused(await big.execute("{ " + " ".join(["me { id }"] * 495) + " }")) == {
        "code": "FIELD_REPEATED_TOO_OFTEN",
        "field": "me",
        "count": 495,
        "max_repeats": 10,
    }
    # However the repeats come to one place: inline fragments, fragment spreads, merged parents.
    inline = "{ me { id } ... on Query { me { id } } ... on Query { me { id } ... on Query { me { id } } } }"
    assert refused(await schema.execute(inline))["field"] == "me"
    spreads = "{ me { id } ...A ...B ...C } fragment A on Query { me { id } } fragment B on Query { me { id } } "
    spreads += "fragment C on Query { me { id } }"
    assert refused(await schema.execute(spreads))["count"] == 4
    merged = "{ me { id id } me { id id } }"
    assert refused(await schema.execute(merged))["field"] == "me.id"
    # A fragment no operation spreads is validated all the same, so it is bounded too.
    unused = "{ me { id } } fragment U on Query { me { id } me { id } me { id } me { id } }"
    assert refused(await schema.execute(unused))["field"] == "me"


async def test_repeats_within_the_bound_are_served_as_graphql_merges_them():
    schema = create_schema(gateway_settings(None, graphql_max_field_repeats=3))
    # One fragment spread twice at one place is merged once; aliases are other response names.
    document = "{ ...A ...A __typename __typename a: __typename b: __typename } fragment A on Query { __typename }"
    result = await schema.execute(document)
    assert result.errors is None
    assert result.data == {"__typename": "Query", "a": "Query", "b": "Query"}


def test_cost_counts_variables_as_sent_and_default_pages():
    query = "query($n: Int!) { orders(limit: $n) { nextCursor } }"
    assert cost(query, variables={"n": 10}) == 1 + 10
    assert cost(query, variables={"n": "10"}) == 1 + MAX_LIMIT
    assert cost(query, variables={"n": 10_000}) == 1 + MAX_LIMIT
    shapes = schema_shapes()
    assert shapes.types["Query"]["orders"] == Shape("OrderPage", DEFAULT_LIMIT)
    assert shapes.types["Query"]["products"] == Shape("ProductPage", DEFAULT_LIMIT)
    assert cost("{ orders { nextCursor } }", shapes) == 1 + DEFAULT_LIMIT


def schema_shapes() -> Shapes:
    return Shapes().read(create_schema(gateway_settings(None))._schema)


def test_every_list_costs_the_most_it_can_hold():
    shapes = schema_shapes()
    # An order's lines: as many as an order may hold (shared.contract).
    assert shapes.types["Order"]["items"] == Shape("OrderItem", MAX_ITEMS)
    # orders 1 + 100 x (items 1 + (items 1 + MAX_ITEMS x (product 1 + name 1)))
    assert cost(EVERY_LINE, shapes) == 1 + 100 * (1 + (1 + MAX_ITEMS * (1 + 1)))
    # A page's items are counted once, by the page's limit.
    assert cost("{ products(limit: 10) { items { id } } }", shapes) == 1 + 10 * (1 + 1)
    # The order a mutation answers, and one read by id, hold as many lines.
    place = 'mutation { createOrder(items: [{productId: "p-1", quantity: 1}]) { items { quantity } } }'
    assert cost(place, shapes) == 1 + (1 + MAX_ITEMS * 1)
    assert cost('{ order(id: "o-1") { id items { quantity } } }', shapes) == 1 + (1 + (1 + MAX_ITEMS * 1))
    # Fragments and inline fragments say the type they select from.
    spread = "{ orders(limit: 1) { items { ...Lines } } } fragment Lines on Order { items { quantity } }"
    inline = "{ orders(limit: 1) { items { ... on Order { items { quantity } } } } }"
    assert cost(spread, shapes) == cost(inline, shapes) == 1 + 1 * (1 + (1 + MAX_ITEMS * 1))
    unused = "{ me { id } } fragment Lines on Order { items { quantity } }"
    assert cost(unused, shapes) == 2 + (1 + MAX_ITEMS * 1)


async def test_the_schema_refuses_what_every_line_of_every_order_would_cost():
    schema = create_schema(gateway_settings(None))
    # Four aliases of it: within the alias bound, and 40,000 lines and products to answer.
    four = "{ " + " ".join(f"o{i}: {EVERY_LINE[2:-2]}" for i in range(4)) + " }"
    assert refused(await schema.execute(four)) == {
        "code": "QUERY_TOO_COSTLY",
        "cost": 4 * (1 + 100 * (1 + (1 + MAX_ITEMS * 2))),
        "max_cost": 2000,
    }
    # Ten orders with their lines' products are over the bound too; with one field a line, within it.
    tens = "{ orders(limit: 10) { items { items { product { name } } } } }"
    assert refused(await schema.execute(tens))["cost"] == 1 + 10 * (1 + (1 + MAX_ITEMS * 2))
    shapes = schema_shapes()
    assert cost("{ orders(limit: 9) { items { items { quantity } } } }", shapes) == 1 + 9 * (1 + (1 + MAX_ITEMS))


@strawberry.type
class Basket:
    sizes: list[int] = strawberry.field(metadata=at_most(3))
    # A list that does not say how many items it holds: the cost would count it as one.
    names: list[str]


@strawberry.type
class BasketQuery:
    basket: Basket


@strawberry.type
class GridQuery:
    # At most three rows, of as many cells as may be.
    rows: list[list[int]] = strawberry.field(metadata=at_most(3))


def test_a_list_that_does_not_say_how_many_it_holds_is_refused():
    with pytest.raises(TypeError, match=r"Basket\.names is a list"):
        Shapes().read(strawberry.Schema(query=BasketQuery)._schema)
    with pytest.raises(TypeError, match=r"GridQuery\.rows is a list of lists"):
        Shapes().read(strawberry.Schema(query=GridQuery)._schema)


async def test_validation_that_would_take_long_is_cut_short():
    schema = create_schema(gateway_settings(None))
    # Two hundred fragments spread at one place, each selecting a field of its own: no bound of the
    # document is crossed, and GraphQL's merge rule compares every pair of fragments.
    fragments = " ".join(f"fragment F{i} on Query {{ f{i} }}" for i in range(200))
    document = "{ " + " ".join(f"...F{i}" for i in range(200)) + " } " + fragments
    result = execute_within(schema, document)
    assert result.errors[0].message == "Validation aborted."
    assert result.errors[0].extensions == {"code": "QUERY_TOO_COMPLEX"}


async def test_depth_and_aliases_count_through_fragments():
    schema = create_schema(gateway_settings(None, graphql_max_depth=2, graphql_max_aliases=2))
    deep = "{ orders(limit: 1) { ...Page } } fragment Page on OrderPage { items { id } }"
    assert "QUERY_TOO_DEEP" not in str([e.extensions for e in (await schema.execute(deep)).errors or []])
    deeper = "{ orders(limit: 1) { ...Page } } fragment Page on OrderPage { items { items { quantity } } }"
    assert refused(await schema.execute(deeper)) == {"code": "QUERY_TOO_DEEP", "depth": 3, "max_depth": 2}
    aliased = "{ ...A ...B } fragment A on Query { a: me { id } b: me { id } } fragment B on Query { c: me { id } }"
    assert refused(await schema.execute(aliased)) == {"code": "TOO_MANY_ALIASES", "aliases": 3, "max_aliases": 2}
    # Introspection is not counted in depth (GraphiQL's own query nests a dozen levels).
    introspection = await create_schema(gateway_settings(None)).execute(get_introspection_query())
    assert introspection.errors is None
    assert introspection.data is not None
