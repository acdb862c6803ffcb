"""The GraphQL bounds, checked before anything is resolved: no service is called for these."""

from __future__ import annotations

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
