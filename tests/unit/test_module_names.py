"""No two modules of tracker/ share a file name (``__init__.py`` apart), and no two define a
class of the same name: a module or a type is named for what it holds, and a name that stands
in two places says two things (``health``: a target's, the store's, the API's?; ``Held``: an
archive held, a proof's share of the memory?) and makes a traceback or a grep ambiguous
(docs/architecture.md, "Packages and their layers")."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "tracker"

#: Names still shared while another branch renames proxy/'s modules (its restructure): each
#: entry lists the modules that share it now. An entry no longer shared fails
#: test_the_allow_list_names_only_what_is_still_shared.
ALLOWED: dict[str, set[str]] = {}


def shared_names(paths: list[str]) -> dict[str, set[str]]:
    """The file names of ``paths`` (relative to tracker/) that stand more than once, each
    with its paths; ``__init__.py`` is every package's and counts for none."""
    by_name: dict[str, set[str]] = defaultdict(set)
    for path in paths:
        name = path.rsplit("/", 1)[-1]
        if name != "__init__.py":
            by_name[name].add(path)
    return {name: found for name, found in by_name.items() if len(found) > 1}


def package_paths() -> list[str]:
    return sorted(p.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("*.py"))


@pytest.mark.parametrize(
    ("paths", "expected"),
    [
        ([], {}),
        (["a/__init__.py", "b/__init__.py", "cli.py"], {}),
        (["cli.py", "fetch/cli.py"], {"cli.py": {"cli.py", "fetch/cli.py"}}),
        (
            ["a/health.py", "b/health.py", "c/health.py", "c/roster.py"],
            {"health.py": {"a/health.py", "b/health.py", "c/health.py"}},
        ),
    ],
)
def test_shared_names(paths: list[str], expected: dict[str, set[str]]) -> None:
    assert shared_names(paths) == expected


def test_no_two_modules_share_a_file_name() -> None:
    shared = {
        name: found
        for name, found in shared_names(package_paths()).items()
        if found != ALLOWED.get(name)
    }
    assert not shared, f"name each for what it holds: {shared}"


def test_the_allow_list_names_only_what_is_still_shared() -> None:
    shared = shared_names(package_paths())
    stale = sorted(name for name, found in ALLOWED.items() if shared.get(name) != found)
    assert not stale, f"no longer shared as listed: update ALLOWED: {stale}"


def _type_alias(node: ast.stmt) -> str | None:
    """The name ``node`` gives a type at the top of a module (``Outcome = Literal[...]``,
    ``Lanes = NDArray[...]``, ``Answer = tuple[...] | None``, ``X: TypeAlias = ...``), else
    None; a constant (``MiB = 1 << 20``, ``KINDS = (...)``) is no type."""
    if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
        return node.target.id if ast.unparse(node.annotation).endswith("TypeAlias") else None
    if not (isinstance(node, ast.Assign) and len(node.targets) == 1):
        return None
    target, value = node.targets[0], node.value
    is_type = isinstance(value, ast.Subscript) or (
        isinstance(value, ast.BinOp) and isinstance(value.op, ast.BitOr)
    )
    if isinstance(target, ast.Name) and target.id[:1].isupper() and not target.id.isupper():
        return target.id if is_type else None
    return None


def shared_class_names(sources: dict[str, str]) -> dict[str, set[str]]:
    """The names of the classes defined at the top of more than one of ``sources`` (path →
    source text), or at the top of one and given to a type alias at the top of another, each
    with the paths that define it (aliases of one name in modules without such a class are
    not classes: not counted)."""
    classes: dict[str, set[str]] = defaultdict(set)
    aliases: dict[str, set[str]] = defaultdict(set)
    for path, text in sources.items():
        for node in ast.parse(text, filename=path).body:
            if isinstance(node, ast.ClassDef):
                classes[node.name].add(path)
            elif (alias := _type_alias(node)) is not None:
                aliases[alias].add(path)
    named = {name: found | aliases.get(name, set()) for name, found in classes.items()}
    return {name: found for name, found in named.items() if len(found) > 1}


@pytest.mark.parametrize(
    ("sources", "expected"),
    [
        ({}, {}),
        ({"a.py": "class Held: ...\n", "b.py": "class Holdings: ...\n"}, {}),
        ({"a.py": "class Held: ...\nclass Held2: ...\n", "b.py": "x = 1\n"}, {}),
        (
            {"a.py": "class Held: ...\n", "b/c.py": "import x\n\n\nclass Held(Protocol): ...\n"},
            {"Held": {"a.py", "b/c.py"}},
        ),
        (
            {"a.py": "class _Frame: ...\n", "b.py": "class _Frame: ...\n", "c.py": "Held = int\n"},
            {"_Frame": {"a.py", "b.py"}},
        ),
        # a class inside a function or a class is that scope's, not the package's
        ({"a.py": "class Held: ...\n", "b.py": "def f():\n    class Held: ...\n"}, {}),
        # a class in one module, a type of the same name in another
        (
            {"a.py": "class Outcome: ...\n", "b.py": "Outcome = Literal['hit', 'miss']\n"},
            {"Outcome": {"a.py", "b.py"}},
        ),
        (
            {"a.py": "class Lanes: ...\n", "b.py": "Lanes: TypeAlias = list[int]\n"},
            {"Lanes": {"a.py", "b.py"}},
        ),
        (
            {"a.py": "class Answer: ...\n", "b.py": "Answer = int | None\n"},
            {"Answer": {"a.py", "b.py"}},
        ),
        # constants, and types of one name in modules without such a class, are no classes
        ({"a.py": "class MiB: ...\n", "b.py": "MiB = 1 << 20\nKINDS = X[0]\n"}, {}),
        ({"a.py": "Kind = Literal['a']\n", "b.py": "Kind = Literal['b']\n"}, {}),
    ],
)
def test_shared_class_names(sources: dict[str, str], expected: dict[str, set[str]]) -> None:
    assert shared_class_names(sources) == expected


def test_no_two_modules_define_a_class_of_the_same_name() -> None:
    sources = {path: (PACKAGE / path).read_text() for path in package_paths()}
    shared = shared_class_names(sources)
    assert not shared, f"name each class for what it is: {shared}"
