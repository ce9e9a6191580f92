"""Small modules: no module of tracker/ over 450 lines, no class over 300 (docs/architecture.md,
"Packages and their layers"). A module that grows past them is split by what it holds; so
is a test module over 800 lines. Short
signatures: no function of tracker/ takes more than 7 parameters (``self``/``cls`` not counted;
keyword-only ones are); arguments that travel together become one small value."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

MAX_MODULE_LINES = 450
MAX_CLASS_LINES = 300
PACKAGE = Path(__file__).resolve().parents[2] / "tracker"

#: What may stay over the limits for a while, with its size then (it may not grow past it): a
#: module being split on its own branch. Empty: every module is within the limits. An entry
#: that is within the limits again fails test_the_allow_list_names_only_what_is_still_over.
ALLOWED: dict[str, int] = {}


def measure(name: str, source: str) -> dict[str, int]:
    """Lines of the module ``name`` and of each class in it (nested ones too), keyed
    ``name`` and ``name:Class``."""
    sizes = {name: len(source.splitlines())}
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ClassDef):
            assert node.end_lineno is not None
            sizes[f"{name}:{node.name}"] = node.end_lineno - node.lineno + 1
    return sizes


def over_limits(sizes: dict[str, int]) -> dict[str, int]:
    """The modules and classes of ``sizes`` over their limit."""
    return {
        key: lines
        for key, lines in sizes.items()
        if lines > (MAX_CLASS_LINES if ":" in key else MAX_MODULE_LINES)
    }


def package_sizes() -> dict[str, int]:
    sizes: dict[str, int] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        sizes |= measure(path.relative_to(PACKAGE).as_posix(), path.read_text(encoding="utf-8"))
    return sizes


CLASS_OF_3 = "class A:\n    x = 1\n    y = 2\n"


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("", {"m.py": 0}),
        ("x = 1\n\ny = 2\n", {"m.py": 3}),
        ("x = 1\n\ny = 2", {"m.py": 3}),  # no newline at the end
        (CLASS_OF_3, {"m.py": 3, "m.py:A": 3}),
        ("@dec\n" + CLASS_OF_3 + "\n\n", {"m.py": 6, "m.py:A": 3}),  # decorators not counted
        (
            "class A:\n    class B:\n        pass\n",
            {"m.py": 3, "m.py:A": 3, "m.py:B": 2},
        ),
    ],
)
def test_module_and_class_lines(source: str, expected: dict[str, int]) -> None:
    assert measure("m.py", source) == expected


def test_the_limits() -> None:
    sizes = {"a.py": 450, "b.py": 451, "a.py:A": 300, "a.py:B": 301, "b.py:C": 451}
    assert over_limits(sizes) == {"b.py": 451, "a.py:B": 301, "b.py:C": 451}


def test_no_module_over_450_lines_and_no_class_over_300() -> None:
    too_big = {
        key: lines
        for key, lines in over_limits(package_sizes()).items()
        if lines > ALLOWED.get(key, 0)
    }
    assert not too_big, f"split these by what they hold (lines): {too_big}"


def test_the_allow_list_names_only_what_is_still_over() -> None:
    over = over_limits(package_sizes())
    stale = sorted(key for key in ALLOWED if key not in over)
    assert not stale, f"within the limits now: remove from ALLOWED: {stale}"


#: Test modules are longer (tables, set-ups), but past this one holds two subjects.
MAX_TEST_MODULE_LINES = 800
TESTS = PACKAGE.parent / "tests"


def test_no_test_module_over_800_lines() -> None:
    too_big = {
        path.relative_to(TESTS).as_posix(): lines
        for path in sorted(TESTS.rglob("*.py"))
        if (lines := len(path.read_text(encoding="utf-8").splitlines())) > MAX_TEST_MODULE_LINES
    }
    assert not too_big, f"split these by what their tests hold (lines): {too_big}"


MAX_PARAMETERS = 7


def parameter_counts(name: str, source: str) -> dict[str, int]:
    """The parameters of every function of module ``name`` (methods keyed by their class),
    ``self`` and ``cls`` not counted, keyword-only and ``*args``/``**kwargs`` counted."""
    counts: dict[str, int] = {}

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}{child.name}.")
            elif isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                args = child.args
                named = [a.arg for a in (*args.posonlyargs, *args.args, *args.kwonlyargs)]
                if prefix and named[:1] in (["self"], ["cls"]):
                    named = named[1:]
                counts[f"{name}:{prefix}{child.name}"] = (
                    len(named) + (args.vararg is not None) + (args.kwarg is not None)
                )
                visit(child, f"{prefix}{child.name}.")
            else:
                visit(child, prefix)

    visit(ast.parse(source), "")
    return counts


def package_parameters() -> dict[str, int]:
    counts: dict[str, int] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name = path.relative_to(PACKAGE).as_posix()
        counts |= parameter_counts(name, path.read_text(encoding="utf-8"))
    return counts


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("def f(): pass\n", {"m.py:f": 0}),
        ("def f(a, /, b, *c, d, **e): pass\n", {"m.py:f": 5}),
        ("async def f(a, b=1, *, c=2): pass\n", {"m.py:f": 3}),
        ("class A:\n    def m(self, a): pass\n", {"m.py:A.m": 1}),
        ("class A:\n    @classmethod\n    def m(cls, a, b): pass\n", {"m.py:A.m": 2}),
        ("def self(self, a): pass\n", {"m.py:self": 2}),  # a function's own ``self`` counts
        (
            "def f(a):\n    def g(b, c): pass\n",
            {"m.py:f": 1, "m.py:f.g": 2},
        ),
    ],
)
def test_parameter_counts(source: str, expected: dict[str, int]) -> None:
    assert parameter_counts("m.py", source) == expected


def test_no_function_over_7_parameters() -> None:
    too_many = {key: count for key, count in package_parameters().items() if count > MAX_PARAMETERS}
    assert not too_many, f"group their arguments into small values (parameters): {too_many}"
