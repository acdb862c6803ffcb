"""The GraphQL bounds, checked before anything is resolved: no service is called for these."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import strawberry
from graphql import FragmentDefinitionNode, OperationDefinitionNode, parse

from gateway.graphql.limits import selection_cost
from gateway.graphql.router import create_schema
from tests.edge_support import gateway_settings

LINES = "{ orders(limit: 10) { items { items { product { id sku } } } } }"


def cost(query: str) -> int:
    document = parse(query)
    fragments = {d.name.value: d for d in document.definitions if isinstance(d, FragmentDefinitionNode)}
    operation = next(d for d in document.definitions if isinstance(d, OperationDefinitionNode))
    return selection_cost(operation.selection_set, fragments)


def test_cost_multiplies_what_is_under_a_page():
    assert cost("{ me { id email } }") == 3
    # orders 1 + 10 x (items 1 + (items 1 + (product 1 + 2)))
    assert cost(LINES) == 1 + 10 * (1 + (1 + (1 + 2)))
    # A variable limit counts as the largest page.
    assert cost("query($n: Int!) { orders(limit: $n) { nextCursor } }") == 1 + 100 * 1
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
