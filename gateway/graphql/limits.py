"""Bounds on what one GraphQL document may ask for, all checked before GraphQL's validation runs, and
a bound on that validation itself.

Before validation (`document_errors`), on the parsed document:

- cost: every field costs 1, and what is selected below a field that takes `limit` costs `limit`
  times over (a variable as the value the request gives it, else the largest page; a page field
  without `limit` as its default page), so `orders(limit: 100) { items { items { product { name }
  } } }` costs what answering it could cost. The document's cost is that of its operations
  together, fragments counted where they are spread, plus that of any fragment no operation spreads
  (which GraphQL refuses anyway).
- depth: how many fields with a selection nest inside one another (`{ orders { items { id } } }` is
  2; introspection fields are not counted), per operation.
- aliases: in all the operations of the document, fragments counted where spread.
- repeats: how often one response name is selected at one place of the answer (the same field
  asked for again in the same selection, in an inline fragment or a fragment spread there).

Each fragment's cost, depth and aliases are computed once however often it is spread, and a fragment
spread within itself or an unknown fragment is refused at once (GraphQL's own rules refuse them too):
a short document whose fragments spread each other twice, forty levels deep, is refused for its cost
in microseconds. Only a document within the cost bound is walked for repeats, so that walk visits at
most `max_cost` fields.

Why repeats are bounded: GraphQL's rule that fields of one response name must merge
(OverlappingFieldsCanBeMerged) compares every pair of them, and their selections pairwise below.
`{ me { id } me { id } ... }` with `me` 495 times is within every other bound (2,000 tokens, cost
990, depth 1, no alias) and kept that rule busy for over a second. With at most `max_field_repeats`
fields per response name and place, and at most `max_cost` fields, the rule compares at most about
`max_cost * max_field_repeats / 2` pairs.

Validation itself runs here too (`BoundedValidation`), with a budget on that rule's comparisons
(`BoundedOverlapRule`): whatever shape of document gets past the bounds above, its validation stops
after about 50 ms of CPU.

Every refusal carries its `extensions.code`: QUERY_TOO_COSTLY, QUERY_TOO_DEEP, TOO_MANY_ALIASES,
FIELD_REPEATED_TOO_OFTEN.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from graphql import (
    DocumentNode,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    GraphQLInterfaceType,
    GraphQLObjectType,
    GraphQLSchema,
    InlineFragmentNode,
    IntValueNode,
    OperationDefinitionNode,
    SelectionSetNode,
    ValidationContext,
    VariableNode,
    validate,
)
from graphql.validation import OverlappingFieldsCanBeMergedRule
from strawberry.extensions import SchemaExtension
from strawberry.schema.validation_rules.maybe_null import MaybeNullValidationRule
from strawberry.schema.validation_rules.one_of import OneOfInputValidationRule

from shared.pagination import MAX_LIMIT

# Units of graphql-core's budget for the overlapping-fields rule (two per pair of fields compared,
# one per response name matched, one or two per fragment comparison). Its default, 500,000, took
# 1.2 s of CPU; this takes about 50 ms, a hundred times what the largest documents this API's
# clients send need (GraphiQL's introspection query spends about 1,000).
OVERLAP_BUDGET = 20_000


@dataclass(frozen=True, slots=True)
class Bounds:
    """The bounds of a document: the `graphql_max_*` settings, each named here without the prefix."""

    max_cost: int
    max_depth: int
    max_aliases: int
    max_field_repeats: int
    # Fields that take `limit` -> their default page size. Without `limit`, such a field costs its
    # default page; fields not named here cost 1 without `limit`.
    pages: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Measure:
    """What a selection costs, how deep it nests, and how many aliases it holds."""

    cost: int = 0
    depth: int = 0
    aliases: int = 0

    def __add__(self, other: Measure) -> Measure:
        return Measure(self.cost + other.cost, max(self.depth, other.depth), self.aliases + other.aliases)


NOTHING = Measure()


def page_size(selection: FieldNode, pages: Mapping[str, int], variables: Mapping[str, object]) -> int:
    """How many items the field may answer: its `limit` (a variable: its value in `variables`, else
    the largest page), its default page without one, else 1."""
    for argument in selection.arguments or ():
        if argument.name.value == "limit":
            value = argument.value
            size: object = MAX_LIMIT
            if isinstance(value, IntValueNode):
                size = int(value.value)
            elif isinstance(value, VariableNode):
                size = variables.get(value.name.value, MAX_LIMIT)
            # Not a whole number (a string, a float): GraphQL refuses it; until then, the largest page.
            if not isinstance(size, int) or isinstance(size, bool):
                size = MAX_LIMIT
            return min(max(size, 1), MAX_LIMIT)
    return pages.get(selection.name.value, 1)


class _Measures:
    """The measure of each fragment of one document, computed once however often it is spread."""

    def __init__(
        self,
        fragments: Mapping[str, FragmentDefinitionNode],
        pages: Mapping[str, int],
        variables: Mapping[str, object],
    ) -> None:
        self.fragments = fragments
        self.pages = pages
        self.variables = variables
        self.measures: dict[str, Measure] = {}
        self.in_progress: set[str] = set()

    def of(self, spread: FragmentSpreadNode) -> Measure:
        name = spread.name.value
        if name in self.measures:
            return self.measures[name]
        if name in self.in_progress:
            raise GraphQLError(f"Cannot spread fragment '{name}' within itself.", spread)
        fragment = self.fragments.get(name)
        if fragment is None:
            raise GraphQLError(f"Unknown fragment '{name}'.", spread)
        self.in_progress.add(name)
        measure = self.selections(fragment.selection_set)
        self.in_progress.discard(name)
        self.measures[name] = measure
        return measure

    def selections(self, selection_set: SelectionSetNode | None) -> Measure:
        if selection_set is None:
            return NOTHING
        total = NOTHING
        for selection in selection_set.selections:
            if isinstance(selection, FieldNode):
                below = self.selections(selection.selection_set)
                # As strawberry's depth limiter counts: a field with a selection is one level, and
                # introspection (`__schema`, `__type`) is not counted at all.
                nested = selection.selection_set is not None and not selection.name.value.startswith("__")
                total += Measure(
                    cost=1 + page_size(selection, self.pages, self.variables) * below.cost,
                    depth=1 + below.depth if nested else 0,
                    aliases=below.aliases + (selection.alias is not None),
                )
            elif isinstance(selection, InlineFragmentNode):
                total += self.selections(selection.selection_set)
            elif isinstance(selection, FragmentSpreadNode):
                total += self.of(selection)
        return total


def _merged(
    selection_sets: tuple[SelectionSetNode, ...], fragments: Mapping[str, FragmentDefinitionNode]
) -> Iterator[tuple[str, list[FieldNode]]]:
    """The fields of selections that answer at one place, by response name: those of every selection
    set, of their inline fragments, and of each fragment spread there (once, as GraphQL merges it)."""
    by_name: dict[str, list[FieldNode]] = {}
    spread: set[str] = set()
    pending = list(selection_sets)
    while pending:
        for selection in pending.pop().selections:
            if isinstance(selection, FieldNode):
                name = selection.alias.value if selection.alias else selection.name.value
                by_name.setdefault(name, []).append(selection)
            elif isinstance(selection, InlineFragmentNode):
                pending.append(selection.selection_set)
            elif isinstance(selection, FragmentSpreadNode) and selection.name.value not in spread:
                spread.add(selection.name.value)
                fragment = fragments.get(selection.name.value)
                if fragment is not None:
                    pending.append(fragment.selection_set)
    yield from by_name.items()


def _repeat_error(
    roots: list[SelectionSetNode], fragments: Mapping[str, FragmentDefinitionNode], max_repeats: int
) -> GraphQLError | None:
    """The first response name selected more than `max_repeats` times at one place, if any. Visits
    each field once per place it answers at: at most the document's cost (checked before)."""
    stack: list[tuple[tuple[SelectionSetNode, ...], tuple[str, ...]]] = [((root,), ()) for root in roots]
    while stack:
        selection_sets, path = stack.pop()
        for name, fields in _merged(selection_sets, fragments):
            if len(fields) > max_repeats:
                where = ".".join((*path, name))
                return GraphQLError(
                    f"'{where}' is selected {len(fields)} times at one place; at most {max_repeats} is allowed: "
                    "ask for it once.",
                    fields[max_repeats],
                    extensions={
                        "code": "FIELD_REPEATED_TOO_OFTEN",
                        "field": where,
                        "count": len(fields),
                        "max_repeats": max_repeats,
                    },
                )
            below = tuple(f.selection_set for f in fields if f.selection_set is not None)
            if below:
                stack.append((below, (*path, name)))
    return None


def document_errors(
    document: DocumentNode, bounds: Bounds, variables: Mapping[str, object] | None = None
) -> list[GraphQLError]:
    """Why the document may not run with `variables`: a cost, depth, alias count or repeat beyond
    `bounds`, or fragments that do not expand (a cycle, an unknown name)."""
    fragments = {d.name.value: d for d in document.definitions if isinstance(d, FragmentDefinitionNode)}
    operations = [d for d in document.definitions if isinstance(d, OperationDefinitionNode)]
    measures = _Measures(fragments, bounds.pages, variables or {})
    errors: list[GraphQLError] = []
    cost = aliases = 0
    try:
        for operation in operations:
            measure = measures.selections(operation.selection_set)
            cost += measure.cost
            aliases += measure.aliases
            if measure.depth > bounds.max_depth:
                name = operation.name.value if operation.name else "anonymous"
                errors.append(
                    GraphQLError(
                        f"'{name}' exceeds maximum operation depth of {bounds.max_depth}",
                        operation,
                        extensions={"code": "QUERY_TOO_DEEP", "depth": measure.depth, "max_depth": bounds.max_depth},
                    )
                )
        # Fragments no operation spreads: GraphQL's validation walks them all the same.
        unused = [fragment for name, fragment in fragments.items() if name not in measures.measures]
        for fragment in unused:
            cost += measures.selections(fragment.selection_set).cost
    except GraphQLError as error:
        return [error]
    except RecursionError:
        # Fragments spreading one another hundreds of levels deep.
        return [GraphQLError("The document nests too deeply.", extensions={"code": "QUERY_TOO_DEEP"})]
    if cost > bounds.max_cost:
        errors.append(
            GraphQLError(
                f"The query costs {cost}; at most {bounds.max_cost} is allowed: ask for smaller pages or fewer fields.",
                operations[0] if operations else None,
                extensions={"code": "QUERY_TOO_COSTLY", "cost": cost, "max_cost": bounds.max_cost},
            )
        )
    if aliases > bounds.max_aliases:
        errors.append(
            GraphQLError(
                f"{aliases} aliases found. Allowed: {bounds.max_aliases}",
                extensions={"code": "TOO_MANY_ALIASES", "aliases": aliases, "max_aliases": bounds.max_aliases},
            )
        )
    if errors:
        return errors
    roots = [operation.selection_set for operation in operations] + [fragment.selection_set for fragment in unused]
    repeated = _repeat_error(roots, fragments, bounds.max_field_repeats)
    return [repeated] if repeated is not None else []


class BoundedOverlapRule(OverlappingFieldsCanBeMergedRule):
    """GraphQL's rule that fields of one response name merge, with `OVERLAP_BUDGET`: past it the
    document is refused with "Validation aborted."."""

    def __init__(self, context: ValidationContext) -> None:
        super().__init__(context)
        self.rule_context.remaining_complexity_budget = OVERLAP_BUDGET


class BoundedValidation(SchemaExtension):
    """Refuses a document beyond `bounds` before GraphQL's validation runs, then runs that validation
    itself: with a budget on its costliest rule, and, with `hide_suggestions`, without the names of
    the schema that graphql-core suggests for a mistyped one."""

    def __init__(self, bounds: Bounds, *, hide_suggestions: bool) -> None:
        self.bounds = bounds
        self.hide_suggestions = hide_suggestions

    def on_validate(self) -> Iterator[None]:
        context = self.execution_context
        document = context.graphql_document
        if document is not None and context.pre_execution_errors is None:
            errors = document_errors(document, self.bounds, context.variables)
            if not errors:
                rules = [
                    BoundedOverlapRule if r is OverlappingFieldsCanBeMergedRule else r for r in context.validation_rules
                ]
                # The rules strawberry's own validation adds to the schema's and its extensions'.
                rules += [MaybeNullValidationRule, OneOfInputValidationRule]
                errors = validate(context.schema._schema, document, rules, hide_suggestions=self.hide_suggestions)
            # Not None, even when empty: strawberry then runs no validation of its own.
            context.pre_execution_errors = errors
        yield


def paged_fields(schema: GraphQLSchema) -> dict[str, int]:
    """The fields of `schema` that take `limit`, with their default page size."""
    pages: dict[str, int] = {}
    for named in schema.type_map.values():
        if isinstance(named, GraphQLObjectType | GraphQLInterfaceType):
            for name, definition in named.fields.items():
                limit = definition.args.get("limit")
                if limit is not None and isinstance(limit.default_value, int):
                    pages[name] = limit.default_value
    return pages
