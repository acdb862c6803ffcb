"""The import boundaries between the processes, checked on the real import graph (grimp, the graph
import-linter reads; `make lint` also runs the contracts in pyproject.toml):

- no module imports itself back, through any path, imports made only for type checking included;
- the gateway reaches a service only through its API modules (`schemas`, `errors`), and importing
  the gateway loads no service's database models, nor SQLAlchemy at all.
"""

from __future__ import annotations

import json
import subprocess
import sys

import grimp
import pytest

from tests.conftest import ROOT

PACKAGES = ("gateway", "services", "shared", "scripts")
API_MODULES = ("schemas", "errors")


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    return grimp.build_graph(*PACKAGES)


def cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for imported in sorted(graph.find_modules_directly_imported_by(module)):
            if imported not in index:
                visit(imported)
                low[module] = min(low[module], low[imported])
            elif imported in on_stack:
                low[module] = min(low[module], index[imported])
        if low[module] == index[module]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == module:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for module in sorted(graph.modules):
        if module not in index:
            visit(module)
    return found


def test_no_module_imports_itself_back(graph):
    assert cycles(graph) == []


def test_the_cycle_finder_finds_one():
    """The check above can fail: two modules of a package of this test's own that import each other."""
    graph = grimp.ImportGraph()
    for module in ("pkg", "pkg.a", "pkg.b", "pkg.c"):
        graph.add_module(module)
    graph.add_import(importer="pkg.a", imported="pkg.b")
    graph.add_import(importer="pkg.b", imported="pkg.a")
    graph.add_import(importer="pkg.c", imported="pkg.a")
    assert cycles(graph) == [["pkg.a", "pkg.b"]]


def test_the_gateway_reaches_a_service_only_through_its_api_modules(graph):
    reached = {
        (importer, imported)
        for importer in graph.find_children("gateway") | graph.find_descendants("gateway")
        for imported in graph.find_modules_directly_imported_by(importer)
        if imported.startswith("services.") and imported.rsplit(".", 1)[-1] not in API_MODULES
    }
    assert reached == set()


def test_importing_the_gateway_loads_no_database_model_nor_sqlalchemy():
    """The gateway has no database: its process loads neither a service's models nor SQLAlchemy
    (about a second of every gateway start)."""
    code = "import json, sys, gateway.app; print(json.dumps(sorted(sys.modules)))"
    loaded = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    modules = json.loads(loaded.stdout)
    services = [name for name in modules if name.startswith("services.")]
    assert services, "the gateway documents the services' schemas, so it imports some"
    assert [name for name in services if name.rsplit(".", 1)[-1] == "models"] == []
    assert [name for name in modules if name.split(".")[0] == "sqlalchemy"] == []
