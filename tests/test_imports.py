"""The package's module graph: no module imports another that imports it back, at any depth.

Imports inside functions count too: a cycle hidden in a function body still ties two modules together (one cannot
be read, tested or changed without the other) and breaks as soon as someone moves the import to the top.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("pipeline", "tasks")


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported_modules(path: Path, known: set[str]) -> set[str]:
    """Project modules ``path`` imports anywhere in its body (``from pipeline import x`` counts ``pipeline.x``)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        found.update(name for name in names if name in known)
    return found


def import_graph() -> dict[str, set[str]]:
    files = [path for package in PACKAGES for path in sorted((ROOT / package).glob("*.py"))]
    known = {_module_name(path) for path in files}
    graph = {_module_name(path): _imported_modules(path, known) for path in files}
    # A package's __init__ is not an edge worth reporting: importing pipeline.x always runs pipeline/__init__.py.
    for name in graph:
        graph[name] -= set(PACKAGES)
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every elementary cycle reachable by a depth-first walk, each as the path that closes it."""
    cycles: list[list[str]] = []
    state: dict[str, str] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for target in sorted(graph.get(node, ())):
            if state.get(target) == "open":
                cycles.append(path[path.index(target) :] + [target])
            elif target not in state:
                visit(target, [*path, target])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    return cycles


def test_graph_is_read_from_the_sources():
    graph = import_graph()
    assert "tasks.client" in graph and "pipeline.config" in graph
    assert "tasks.enqueue" in graph["tasks.client"]  # a module-level import
    assert "pipeline.report" in graph["tasks.client"]  # one inside a method counts as well


def test_cycle_finder_finds_a_cycle_through_three_modules():
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    cycles = find_cycles(import_graph())
    assert not cycles, "import cycles (move the shared part into a module both can import): " + "; ".join(
        " -> ".join(cycle) for cycle in cycles
    )


def test_pipeline_never_imports_celery():
    for path in sorted((ROOT / "pipeline").glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            modules = (
                [alias.name for alias in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            assert not any(m.split(".")[0] in ("celery", "kombu", "tasks") for m in modules), f"{path.name}: {modules}"
