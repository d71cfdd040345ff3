"""The package's shape: its modules import each other without a cycle.

Every ``import`` counts, at module level or inside a function; only those
under ``if TYPE_CHECKING:`` (annotations, never run) do not.
"""

from __future__ import annotations

import ast
from pathlib import Path

import elastic_nb

PACKAGE = Path(elastic_nb.__file__).parent


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def runtime_imports(tree: ast.AST, modules: set[str]) -> set[str]:
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name in modules)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                found.add(submodule if submodule in modules else node.module)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return {name for name in found if name in modules}


def import_graph() -> dict[str, set[str]]:
    paths = sorted(PACKAGE.rglob("*.py"))
    modules = {module_name(p) for p in paths}
    graph = {}
    for path in paths:
        name = module_name(path)
        edges = runtime_imports(ast.parse(path.read_text()), modules)
        # importing a submodule runs its package's __init__ first: not an edge of its own
        graph[name] = {m for m in edges if m != "elastic_nb" and m != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    visiting: list[str] = []
    done: set[str] = set()

    def walk(name: str) -> list[str] | None:
        if name in visiting:
            return visiting[visiting.index(name):] + [name]
        if name in done:
            return None
        visiting.append(name)
        for target in sorted(graph.get(name, ())):
            cycle = walk(target)
            if cycle:
                return cycle
        visiting.pop()
        done.add(name)
        return None

    for name in sorted(graph):
        cycle = walk(name)
        if cycle:
            return cycle
    return None


def test_the_import_graph_has_no_cycle():
    graph = import_graph()
    assert "elastic_nb.job" in graph and "elastic_nb.state" in graph["elastic_nb.job"]
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_rules_and_the_read_model_do_no_io():
    graph = import_graph()
    for pure in ("elastic_nb.state", "elastic_nb.snapshot", "elastic_nb.render",
                 "elastic_nb.protocol"):
        reached = set()
        frontier = [pure]
        while frontier:
            for target in graph[frontier.pop()] - reached:
                reached.add(target)
                frontier.append(target)
        assert not reached & {"elastic_nb.job", "elastic_nb.supervisor", "elastic_nb.widgets",
                              "elastic_nb.join_server", "elastic_nb.agent"}, (pure, reached)
