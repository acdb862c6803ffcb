"""Bounds on what one GraphQL document may ask for: tokens, depth and aliases (strawberry's
extensions), and cost (`QueryCostLimiter` here), all checked before anything is resolved.

Cost: every field costs 1, and what is selected below a field that takes `limit` costs `limit` times
over (a variable, or no value, counts as the largest page, 100), so `orders(limit: 100) { items {
items { product { name } } } }` costs what answering it could cost. Fragments count where spread.

The cost is checked before GraphQL's validation: strawberry's depth and alias limits walk every
spread of every fragment again, so a short document whose fragments spread each other twice, forty
levels deep, would keep them busy for hours. Here each fragment's cost is computed once, a fragment
spread within itself or an unknown fragment is refused at once (GraphQL's own rules refuse them
too), and a document that expands beyond the cost bound never reaches those walks.
"""

from __future__ import annotations

from collections.abc import Iterator

from graphql import (
    DocumentNode,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    InlineFragmentNode,
    IntValueNode,
    OperationDefinitionNode,
    SelectionSetNode,
)
from strawberry.extensions import SchemaExtension

MAX_PAGE = 100


class _FragmentCosts:
    """The cost of each fragment of one document, computed once however often it is spread."""

    def __init__(self, fragments: dict[str, FragmentDefinitionNode]) -> None:
        self.fragments = fragments
        self.costs: dict[str, int] = {}
        self.in_progress: set[str] = set()

    def of(self, spread: FragmentSpreadNode) -> int:
        name = spread.name.value
        if name in self.costs:
            return self.costs[name]
        if name in self.in_progress:
            raise GraphQLError(f"Cannot spread fragment '{name}' within itself.", spread)
        fragment = self.fragments.get(name)
        if fragment is None:
            raise GraphQLError(f"Unknown fragment '{name}'.", spread)
        self.in_progress.add(name)
        cost = self.selections(fragment.selection_set)
        self.in_progress.discard(name)
        self.costs[name] = cost
        return cost

    def selections(self, selection_set: SelectionSetNode | None) -> int:
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
                total += 1 + multiplier * self.selections(selection.selection_set)
            elif isinstance(selection, InlineFragmentNode):
                total += self.selections(selection.selection_set)
            elif isinstance(selection, FragmentSpreadNode):
                total += self.of(selection)
        return total


def selection_cost(selection_set: SelectionSetNode | None, fragments: dict[str, FragmentDefinitionNode]) -> int:
    """The cost of a selection; raises `GraphQLError` on a fragment cycle or an unknown fragment."""
    return _FragmentCosts(fragments).selections(selection_set)


def cost_errors(document: DocumentNode, max_cost: int) -> list[GraphQLError]:
    """Why the document's operations may not run: a cost beyond `max_cost`, or fragments that do not
    expand (a cycle, an unknown name)."""
    fragments = {d.name.value: d for d in document.definitions if isinstance(d, FragmentDefinitionNode)}
    costs = _FragmentCosts(fragments)
    errors: list[GraphQLError] = []
    for operation in document.definitions:
        if not isinstance(operation, OperationDefinitionNode):
            continue
        try:
            cost = costs.selections(operation.selection_set)
        except GraphQLError as error:
            return [error]
        if cost > max_cost:
            errors.append(
                GraphQLError(
                    f"The query costs {cost}; at most {max_cost} is allowed: ask for smaller pages or fewer fields.",
                    operation,
                    extensions={"code": "QUERY_TOO_COSTLY", "cost": cost, "max_cost": max_cost},
                )
            )
    return errors


class QueryCostLimiter(SchemaExtension):
    """Refuses a document costing more than `max_cost` before GraphQL's validation runs."""

    def __init__(self, max_cost: int) -> None:
        self.max_cost = max_cost

    def on_validate(self) -> Iterator[None]:
        context = self.execution_context
        if context.graphql_document is not None and context.pre_execution_errors is None:
            # Errors set here skip strawberry's validation, and so its walks over every spread.
            context.pre_execution_errors = cost_errors(context.graphql_document, self.max_cost) or None
        yield
