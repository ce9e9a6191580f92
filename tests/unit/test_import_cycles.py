"""No import circle among the package's modules (docs/architecture.md, "Packages and their
layers"): the layers contract of import-linter sees packages; this sees modules, imports under
``TYPE_CHECKING`` included, so two modules of one package that need each other show up too."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def imports_of(source: str) -> set[str]:
    """The modules of ``tracker`` that ``source`` imports, wherever the import stands."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("tracker"):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("tracker")}
    return found


def circles(graph: dict[str, set[str]]) -> set[tuple[str, ...]]:
    """Every circle of ``graph`` (module -> the modules it imports), each as its sorted
    members."""
    found: set[tuple[str, ...]] = set()
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> None:
        for other in sorted(graph.get(module, ())):
            if other in path:
                found.add(tuple(sorted(path[path.index(other) :])))
            elif other not in done:
                visit(other, [*path, other])
        done.add(module)

    for module in sorted(graph):
        if module not in done:
            visit(module, [module])
    return found


def package_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in (ROOT / "tracker").rglob("*.py"):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        graph[name] = imports_of(path.read_text())
    return graph


def test_no_module_imports_one_that_imports_it_back() -> None:
    assert circles(package_graph()) == set()


def test_a_circle_is_found() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert circles(graph) == {("a", "b", "c")}
    assert imports_of("if TYPE_CHECKING:\n    from tracker.x import Y\n") == {"tracker.x"}
