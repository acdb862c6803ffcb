"""The gateway's route table: every request is matched once, at the edge, before any stage runs.

Two kinds of routes are in it:

- the forwarded routes (`CompiledForward`, `gateway/routes/forward.py`), which the edge runs itself;
- every other route of the app (aggregates, real time, GraphQL, docs, probes), which FastAPI runs.
  They are here so that the edge knows every request's route template (the label of its metrics, its
  span and its access line, even when the edge answers it itself, a 401 or a 429) and every method a
  path has (the `Allow` of a 405).

Templates are matched segment by segment (`{name}` is one non-empty segment, as Starlette's default
converter), grouped by their number of segments, so a match costs a few string comparisons whatever
the table's size. A route whose path the segments cannot express (a mount, a converter) is matched
by its own `matches`, after the others. Forwarded routes are tried first; the table refuses, when it
is built, a forwarded route that another route could shadow, so that order never matters.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from starlette.routing import BaseRoute, Match, Mount, WebSocketRoute
from starlette.types import Scope

from gateway.edge.forwarding import CompiledForward

_NO_PARAMS: dict[str, str] = {}


@dataclass(frozen=True, slots=True, eq=False)
class OtherRoute:
    """A route FastAPI runs, as the edge knows it: its template and methods."""

    path: str
    methods: frozenset[str]
    websocket: bool


Route = CompiledForward | OtherRoute


@dataclass(frozen=True, slots=True)
class Template:
    route: Route
    methods: frozenset[str]
    # (position, literal) for every literal segment, (position, name) for every parameter.
    literals: tuple[tuple[int, str], ...]
    names: tuple[tuple[int, str], ...]

    @classmethod
    def of(cls, route: Route, methods: frozenset[str]) -> Template:
        literals, names = [], []
        for position, segment in enumerate(route.path.split("/")):
            if segment.startswith("{") and segment.endswith("}"):
                names.append((position, segment[1:-1]))
            else:
                literals.append((position, segment))
        return cls(route, methods, tuple(literals), tuple(names))

    def params(self, segments: Sequence[str]) -> dict[str, str] | None:
        """The path parameters when `segments` fit the template, else None."""
        for position, literal in self.literals:
            if segments[position] != literal:
                return None
        if not self.names:
            return _NO_PARAMS
        params = {}
        for position, name in self.names:
            value = segments[position]
            if not value:
                return None
            params[name] = value
        return params

    def overlaps(self, other: Template) -> bool:
        """Whether some path could match both (the same length, no two literals that differ)."""
        mine = dict(self.literals)
        return all(mine.get(position, literal) == literal for position, literal in other.literals)


@dataclass(frozen=True, slots=True)
class Found:
    route: Route
    params: dict[str, str]


@dataclass(frozen=True, slots=True)
class WrongMethod:
    """The path is a route's, the method none of its routes': a 405 with `allowed` in `Allow`."""

    allowed: tuple[str, ...]


def _plain(path: str) -> bool:
    """Whether segments express the template: every parameter is `{name}`, alone in its segment."""
    for segment in path.split("/"):
        if "{" in segment or "}" in segment:
            whole = segment.startswith("{") and segment.endswith("}") and segment.count("{") == 1
            if not whole or ":" in segment:
                return False
    return True


class RouteTable:
    def __init__(self, forwards: Iterable[CompiledForward], others: Iterable[BaseRoute]) -> None:
        self._http: dict[int, list[Template]] = defaultdict(list)
        self._websocket: dict[int, list[Template]] = defaultdict(list)
        # Routes matched by their own `matches` (mounts, converters), after the others.
        self._irregular: list[tuple[BaseRoute, OtherRoute]] = []
        forwarded = [Template.of(route, frozenset({route.method})) for route in forwards]
        for template in forwarded:
            self._http[template.route.path.count("/")].append(template)
        for route in others:
            self._add_other(route, forwarded)

    def _add_other(self, route: BaseRoute, forwarded: Sequence[Template]) -> None:
        path: str | None = getattr(route, "path", None)
        if path is None:
            return
        websocket = isinstance(route, WebSocketRoute)
        methods = frozenset(getattr(route, "methods", None) or ())
        other = OtherRoute(path, methods, websocket)
        if isinstance(route, Mount) or not _plain(path):
            self._irregular.append((route, other))
            return
        template = Template.of(other, methods)
        if websocket:
            self._websocket[path.count("/")].append(template)
            return
        for forward in forwarded:
            if (
                forward.route.path.count("/") == path.count("/")
                and forward.methods & methods
                and forward.overlaps(template)
            ):
                raise ValueError(f"{sorted(methods)} {path} overlaps the forwarded route {forward.route.path}")
        self._http[path.count("/")].append(template)

    def routes(self) -> list[tuple[str, str]]:
        """Every (method, template) a request can match; a WebSocket's is its upgrade, a GET."""
        templates = [t for bucket in self._http.values() for t in bucket]
        found = [(method, t.route.path) for t in templates for method in sorted(t.methods)]
        found += [("GET", t.route.path) for bucket in self._websocket.values() for t in bucket]
        found += [(method, other.path) for _, other in self._irregular for method in sorted(other.methods)]
        return found

    def match(self, scope: Scope) -> Found | WrongMethod | None:
        """The route of a request (forwarded routes first), a 405 when only the method is wrong, or
        None when no route has the path."""
        path: str = scope["path"]
        segments = path.split("/")
        websocket = scope["type"] == "websocket"
        method = "" if websocket else scope["method"]
        allowed: set[str] = set()
        for template in (self._websocket if websocket else self._http).get(len(segments) - 1, ()):
            params = template.params(segments)
            if params is None:
                continue
            if websocket or method in template.methods:
                return Found(template.route, params)
            allowed |= template.methods
        for route, other in self._irregular:
            if other.websocket != websocket:
                continue
            matched, _ = route.matches(scope)
            if matched is Match.FULL:
                return Found(other, _NO_PARAMS)
            if matched is Match.PARTIAL:
                allowed |= other.methods
        return WrongMethod(tuple(sorted(allowed))) if allowed else None
