"""The one exception tree (tracker/errors.py) and its one network boundary, checked on the
source: httpx's, httpcore's and h11's exceptions are caught only in tracker/net/ and the
fenced tracker/zerocopy/, tracker/clientwire/ and tracker/h11patches/, and no other module
defines an exception class."""

from __future__ import annotations

import ast
from pathlib import Path

import tracker
import tracker.errors

ROOT = Path(tracker.__file__).parent
LIBRARIES = ("httpx", "httpcore", "h11")
BOUNDARY = ("net", "zerocopy", "clientwire", "h11patches")


def _modules() -> list[tuple[Path, ast.Module]]:
    return [(p, ast.parse(p.read_text(), str(p))) for p in sorted(ROOT.rglob("*.py"))]


def _names(node: ast.expr | None) -> list[str]:
    """The dotted names an ``except`` clause lists."""
    if node is None:
        return []
    if isinstance(node, ast.Tuple):
        return [name for item in node.elts for name in _names(item)]
    return [ast.unparse(node)]


def test_library_errors_are_caught_at_the_boundary_only() -> None:
    found = [
        f"{path.relative_to(ROOT)}:{handler.lineno}: {name}"
        for path, module in _modules()
        if path.relative_to(ROOT).parts[0] not in BOUNDARY
        for handler in ast.walk(module)
        if isinstance(handler, ast.ExceptHandler)
        for name in _names(handler.type)
        if name.split(".")[0] in LIBRARIES
    ]
    assert found == []


def test_every_exception_class_is_in_the_tree_and_its_docstring() -> None:
    elsewhere = [
        f"{path.relative_to(ROOT)}: {node.name}"
        for path, module in _modules()
        if path.name != "errors.py" or path.parent != ROOT
        for node in ast.walk(module)
        if isinstance(node, ast.ClassDef)
        and any(ast.unparse(b).endswith(("Error", "Exception")) for b in node.bases)
    ]
    assert elsewhere == []
    tree = [
        value
        for value in vars(tracker.errors).values()
        if isinstance(value, type) and issubclass(value, BaseException)
    ]
    assert all(issubclass(cls, tracker.errors.TrackerError) for cls in tree)
    doc = tracker.errors.__doc__ or ""
    assert [cls.__name__ for cls in tree if cls.__name__ not in doc] == []
