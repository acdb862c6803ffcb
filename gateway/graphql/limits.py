"""Bounds on what one GraphQL document may ask for: depth and aliases (strawberry's extensions), and
cost (a validation rule here), all checked before anything is resolved.

Cost: every field costs 1, and what is selected below a field that takes `limit` costs `limit` times
over (a variable, or no value, counts as the largest page, 100), so `orders(limit: 100) { items {
items { product { name } } } }` costs what answering it could cost. Fragments count where spread.
"""

from __future__ import annotations

from typing import Any

from graphql import (
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    InlineFragmentNode,
    IntValueNode,
    OperationDefinitionNode,
    SelectionSetNode,
    ValidationContext,
    ValidationRule,
)

MAX_PAGE = 100


def selection_cost(
    selection_set: SelectionSetNode | None,
    fragments: dict[str, FragmentDefinitionNode],
    seen: frozenset[str] = frozenset(),
) -> int:
    if selection_set is None:
        return 0
    total = 0
    for selection in selection_set.selections:
        if isinstance(selection, FieldNode):
            multiplier = 1
            for argument in selection.arguments or ():
                if argument.name.value == "limit":
                    value = argument.value
                    multiplier = min(int(value.value), MAX_PAGE) if isinstance(value, IntValueNode) else MAX_PAGE
                    multiplier = max(multiplier, 1)
            total += 1 + multiplier * selection_cost(selection.selection_set, fragments, seen)
        elif isinstance(selection, InlineFragmentNode):
            total += selection_cost(selection.selection_set, fragments, seen)
        elif isinstance(selection, FragmentSpreadNode):
            name = selection.name.value
            fragment = fragments.get(name)
            # A fragment spread inside itself is refused by GraphQL's own rules; count it once here.
            if fragment is not None and name not in seen:
                total += selection_cost(fragment.selection_set, fragments, seen | {name})
    return total


def cost_rule(max_cost: int) -> type[ValidationRule]:
    class QueryCost(ValidationRule):
        def enter_operation_definition(self, node: OperationDefinitionNode, *_: Any) -> None:
            context: ValidationContext = self.context
            fragments = {d.name.value: d for d in context.document.definitions if isinstance(d, FragmentDefinitionNode)}
            cost = selection_cost(node.selection_set, fragments)
            if cost > max_cost:
                context.report_error(
                    GraphQLError(
                        f"The query costs {cost}; at most {max_cost} is allowed: ask for smaller pages or fewer "
                        "fields.",
                        node,
                        extensions={"code": "QUERY_TOO_COSTLY", "cost": cost, "max_cost": max_cost},
                    )
                )

    return QueryCost
