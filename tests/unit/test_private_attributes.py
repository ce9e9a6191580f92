"""No reach-ins, checked on the source: outside the fenced tracker/zerocopy/, clientwire/ and
h11patches/ (which rely on library internals on purpose, tracker/zerocopy/README.md), no
module reads or writes another object's ``_private`` attributes; an object's own (``self``,
``cls``, ``super()``) are fine."""

from __future__ import annotations

import ast
from pathlib import Path

import tracker

ROOT = Path(tracker.__file__).parent
#: The packages that rely on library internals on purpose (tracker/zerocopy/README.md).
FENCED = frozenset({"zerocopy", "clientwire", "h11patches"})
#: Public API that starts with an underscore: namedtuple's methods, and ``os._exit`` (the
#: documented end of a process whose threads a hung mount holds: a stop held past its grace).
PUBLIC = frozenset({"_replace", "_asdict", "_fields", "_make", "_exit"})


def _owner_is_itself(node: ast.expr) -> bool:
    if isinstance(node, ast.Name):
        return node.id in ("self", "cls")
    return isinstance(node, ast.Call) and ast.unparse(node.func) == "super"


def test_no_module_touches_another_objects_private_attributes() -> None:
    found = [
        f"{path.relative_to(ROOT)}:{node.lineno}: {ast.unparse(node)}"
        for path in sorted(ROOT.rglob("*.py"))
        if path.relative_to(ROOT).parts[0] not in FENCED
        for node in ast.walk(ast.parse(path.read_text(), str(path)))
        if isinstance(node, ast.Attribute)
        and node.attr.startswith("_")
        and not node.attr.startswith("__")
        and node.attr not in PUBLIC
        and not _owner_is_itself(node.value)
    ]
    assert found == []
