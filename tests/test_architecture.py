"""The package's shape: folders say which process runs a file, and imports respect that.

Every ``import`` counts, at module level, inside a function or under ``if
TYPE_CHECKING:`` (a type-only import still ties two modules together).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import elastic_nb
from elastic_nb.compat import torch_compat

PACKAGE = Path(elastic_nb.__file__).parent
ROOMS = ("model", "wire", "kernel", "node", "worker", "ui", "rendezvous", "compat")
MAY_IMPORT = {  # room -> the rooms its modules may import
    "model": {"model", "wire"},
    "wire": {"model", "wire"},
    "compat": set(),
    "rendezvous": {"rendezvous", "wire", "model"},
    "worker": {"worker", "wire", "rendezvous", "compat"},
    "node": {"node", "wire", "model", "compat", "rendezvous", "worker"},
    "kernel": {"kernel", "model", "wire", "compat", "rendezvous", "ui"},
    "ui": {"ui", "kernel", "model", "wire"},
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(tree: ast.AST, modules: set[str], top_level_only: bool = False) -> set[str]:
    found: set[str] = set()
    nodes = ast.iter_child_nodes(tree) if top_level_only else ast.walk(tree)
    for node in nodes:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                found.add(submodule if submodule in modules else node.module)
    return {name for name in found if name in modules}


def import_graph(top_level_only: bool = False) -> dict[str, set[str]]:
    paths = sorted(PACKAGE.rglob("*.py"))
    modules = {module_name(p) for p in paths}
    graph = {}
    for path in paths:
        name = module_name(path)
        edges = imports(ast.parse(path.read_text()), modules, top_level_only)
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


def room(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 and parts[1] in ROOMS else None


def test_the_import_graph_has_no_cycle_type_only_imports_included():
    graph = import_graph()
    # the graph is read from the real code: the Job's known imports are in it
    assert {"elastic_nb.model.rules", "elastic_nb.kernel.starting"} <= graph["elastic_nb.kernel.job"]
    assert "elastic_nb.ui.dashboard.handle" in graph["elastic_nb.ui.dashboard.model"]  # type-only
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])


def test_each_room_imports_only_the_rooms_its_process_may():
    wrong = [f"{module} imports {target}"
             for module, targets in import_graph().items() if room(module)
             for target in targets if room(target) and room(target) not in MAY_IMPORT[room(module)]]
    assert not wrong, wrong


def test_the_kernel_loads_the_dashboard_only_when_a_job_is_displayed():
    for module, targets in import_graph(top_level_only=True).items():
        if room(module) == "kernel":
            assert not {t for t in targets if room(t) == "ui"}, module
    assert "elastic_nb.ui.dashboard.display" in import_graph()["elastic_nb.kernel.job"]


# the two ends of a process boundary in wire/: the channel's socket, and the rank files'
# signal and read (both the kernel and a node host ask their own ranks with it)
WIRE_IO = {"elastic_nb.wire.channel", "elastic_nb.wire.rank_probe"}


def test_the_rules_and_the_read_model_do_no_io():
    graph = import_graph()
    pure = [m for m in graph if room(m) in ("model", "wire") and m not in WIRE_IO]
    for module in pure:
        source = (PACKAGE.parent / (module.replace(".", "/") + ".py")).read_text()
        for library in ("socket", "subprocess", "psutil", "torch", "selectors"):
            assert not re.search(rf"^\s*(import|from) {library}\b", source, re.M), (module, library)


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: module_name(p))
def test_no_module_is_over_500_lines(path):
    assert len(path.read_text().splitlines()) <= 500


def test_the_job_handle_is_at_most_350_lines():
    source = (PACKAGE / "kernel" / "job.py").read_text()
    tree = ast.parse(source)
    job = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Job")
    assert job.end_lineno - job.lineno + 1 <= 350
    assert len(source.splitlines()) <= 350


def test_private_torch_names_are_reached_only_through_the_compat_module():
    names = {name.rsplit(".", 1)[1] for name, why in torch_compat.PRIVATE_NAMES.items()
             if not why.startswith("hook:")}
    for path in PACKAGE.rglob("*.py"):
        if path.parent.name == "compat":
            continue
        source = path.read_text()
        for name in names:
            assert not re.search(rf"[.\s]{name}\b", source), f"{module_name(path)} uses {name}"
