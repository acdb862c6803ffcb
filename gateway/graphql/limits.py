"""Bounds on what one GraphQL document may ask for, all checked before GraphQL's validation runs, and
a bound on that validation itself.

Before validation (`document_errors`), on the parsed document:

- cost: every field costs 1, and what is selected below a field that answers a list costs as many
  times over as the list may hold: a page's `limit` (a variable as the value the request gives it,
  else the largest page; a page field without `limit` as its default page), and the most items any
  other list of the schema declares (an order's lines: `MAX_ITEMS` of `shared.contract`, as many as
  an order may hold). So `orders(limit: 100) { items { items { product { name } } } }` costs what
  answering it could cost: 1 + 100 x (1 + (1 + 100 x (1 + 1))) = 20,201, for its 10,000 lines and
  10,000 products. The document's cost is that of its operations together, fragments counted where
  they are spread, plus that of any fragment no operation spreads (which GraphQL refuses anyway).
  How many each field of the schema answers is read from the schema once it is built (`Shapes`):
  each list field declares it (`at_most`, `PAGE_ITEMS`), and a schema with a list that does not (or
  a list of lists) is not built, so no list costs 1 by omission. Introspection (`__schema`,
  `__type`) is answered from the schema in memory, and costs 1 a field.
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
    GraphQLField,
    GraphQLInterfaceType,
    GraphQLList,
    GraphQLObjectType,
    GraphQLSchema,
    InlineFragmentNode,
    IntValueNode,
    OperationDefinitionNode,
    OperationType,
    SelectionSetNode,
    ValidationContext,
    VariableNode,
    get_named_type,
    get_nullable_type,
    validate,
)
from graphql.validation import OverlappingFieldsCanBeMergedRule
from strawberry.extensions import SchemaExtension
from strawberry.schema.schema_converter import GraphQLCoreConverter
from strawberry.schema.validation_rules.maybe_null import MaybeNullValidationRule
from strawberry.schema.validation_rules.one_of import OneOfInputValidationRule

from shared.pagination import MAX_LIMIT

# Units of graphql-core's budget for the overlapping-fields rule (two per pair of fields compared,
# one per response name matched, one or two per fragment comparison). Its default, 500,000, took
# 1.2 s of CPU; this takes about 50 ms, a hundred times what the largest documents this API's
# clients send need (GraphiQL's introspection query spends about 1,000).
OVERLAP_BUDGET = 20_000

# How many items a list field of the schema answers at most, in its metadata
# (`strawberry.field(metadata=...)`): `at_most(n)`, or `PAGE_ITEMS` for the items of a page, as many
# as the `limit` of the field that answers the page, which counts them.
ITEMS = "portico.most_items"
_PAGE = "page"
PAGE_ITEMS: Mapping[str, object] = {ITEMS: _PAGE}


def at_most(items: int) -> dict[str, object]:
    """The metadata of a list field that answers at most `items` items."""
    return {ITEMS: items}


@dataclass(frozen=True, slots=True)
class Shape:
    """One field of the schema, as the cost counts it: the type it answers (where the fields selected
    below it are looked up; None, a type the schema does not have), and how many of it at most without
    a `limit` (a page field: its default page; a list: what it declares; else 1)."""

    type: str | None
    most: int = 1


# A field the schema does not have (an unknown name, introspection): it costs 1, and so does each field
# below it, times any `limit` given (GraphQL's validation refuses what the schema does not have).
UNKNOWN = Shape(None)


@dataclass(slots=True)
class Shapes:
    """The schema's fields as the cost counts them (`read`): the root type of each kind of operation
    (`query`, `mutation`), and each type's fields by name. A field not found (before `read` too) is
    `UNKNOWN`."""

    roots: dict[str, str] = field(default_factory=dict)
    types: dict[str, dict[str, Shape]] = field(default_factory=dict)

    def read(self, schema: GraphQLSchema) -> Shapes:
        """Reads `schema`'s fields; raises TypeError for a list field that does not say how many items
        it answers at most."""
        for operation in OperationType:
            root = schema.get_root_type(operation)
            if root is not None:
                self.roots[operation.value] = root.name
        for named in schema.type_map.values():
            if named.name.startswith("__") or not isinstance(named, GraphQLObjectType | GraphQLInterfaceType):
                continue
            fields = self.types.setdefault(named.name, {})
            for name, definition in named.fields.items():
                fields[name] = Shape(get_named_type(definition.type).name, _most(named.name, name, definition))
        return self


@dataclass(frozen=True, slots=True)
class Bounds:
    """The bounds of a document: the `graphql_max_*` settings, each named here without the prefix."""

    max_cost: int
    max_depth: int
    max_aliases: int
    max_field_repeats: int
    # What each field of the schema answers, and how many at most (filled once the schema is built).
    shapes: Shapes = field(default_factory=Shapes)


@dataclass(frozen=True, slots=True)
class Measure:
    """What a selection costs, how deep it nests, and how many aliases it holds."""

    cost: int = 0
    depth: int = 0
    aliases: int = 0

    def __add__(self, other: Measure) -> Measure:
        return Measure(self.cost + other.cost, max(self.depth, other.depth), self.aliases + other.aliases)


NOTHING = Measure()


def page_size(selection: FieldNode, most: int, variables: Mapping[str, object]) -> int:
    """How many items the field may answer: its `limit` (a variable: its value in `variables`, else
    the largest page), else `most`."""
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
    return most


class _Measures:
    """The measure of each fragment of one document, computed once however often it is spread."""

    def __init__(
        self,
        fragments: Mapping[str, FragmentDefinitionNode],
        shapes: Shapes,
        variables: Mapping[str, object],
    ) -> None:
        self.fragments = fragments
        self.shapes = shapes
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
        measure = self.selections(fragment.selection_set, fragment.type_condition.name.value)
        self.in_progress.discard(name)
        self.measures[name] = measure
        return measure

    def selections(self, selection_set: SelectionSetNode | None, on: str | None) -> Measure:
        """The measure of a selection of the type named `on` (None: a type the schema does not have)."""
        if selection_set is None:
            return NOTHING
        fields = self.shapes.types.get(on, {}) if on is not None else {}
        total = NOTHING
        for selection in selection_set.selections:
            if isinstance(selection, FieldNode):
                shape = fields.get(selection.name.value, UNKNOWN)
                below = self.selections(selection.selection_set, shape.type)
                # As strawberry's depth limiter counts: a field with a selection is one level, and
                # introspection (`__schema`, `__type`) is not counted at all.
                nested = selection.selection_set is not None and not selection.name.value.startswith("__")
                total += Measure(
                    cost=1 + page_size(selection, shape.most, self.variables) * below.cost,
                    depth=1 + below.depth if nested else 0,
                    aliases=below.aliases + (selection.alias is not None),
                )
            elif isinstance(selection, InlineFragmentNode):
                condition = selection.type_condition
                total += self.selections(selection.selection_set, condition.name.value if condition else on)
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
    shapes = bounds.shapes
    measures = _Measures(fragments, shapes, variables or {})
    errors: list[GraphQLError] = []
    cost = aliases = 0
    try:
        for operation in operations:
            measure = measures.selections(operation.selection_set, shapes.roots.get(operation.operation.value))
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
            cost += measures.selections(fragment.selection_set, fragment.type_condition.name.value).cost
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


def _most(type_name: str, name: str, definition: GraphQLField) -> int:
    """How many items the field answers at most without a `limit`: a page field's default page, a
    list's declared bound, else 1."""
    limit = definition.args.get("limit")
    if limit is not None and isinstance(limit.default_value, int):
        return limit.default_value
    answered = get_nullable_type(definition.type)
    if not isinstance(answered, GraphQLList):
        return 1
    if isinstance(get_nullable_type(answered.of_type), GraphQLList):
        raise TypeError(f"{type_name}.{name} is a list of lists: the cost of a document cannot count its items.")
    strawberry_field = (definition.extensions or {}).get(GraphQLCoreConverter.DEFINITION_BACKREF)
    declared = getattr(strawberry_field, "metadata", None) or {}
    most = declared.get(ITEMS)
    if most == _PAGE:
        # Counted by the `limit` of the field that answers the page.
        return 1
    if not isinstance(most, int) or isinstance(most, bool) or most < 1:
        raise TypeError(
            f"{type_name}.{name} is a list: its field must say how many items it answers at most "
            "(metadata=at_most(n), or PAGE_ITEMS for a page's), for the cost of a document to count them."
        )
    return most
