"""Every skip in the suite says why: ``pytest -rs`` on an operator's desk reads as a list of
what is missing there, never as a bare "skipped"."""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def _name(node: ast.expr) -> str:
    """``pytest.mark.skipif`` for the call's function, as written."""
    if isinstance(node, ast.Attribute):
        return f"{_name(node.value)}.{node.attr}"
    return node.id if isinstance(node, ast.Name) else ""


def _says_why(call: ast.Call) -> bool:
    name = _name(call.func)
    keywords = {k.arg: k.value for k in call.keywords}
    if name.endswith(("mark.skipif", "mark.skip", "mark.xfail")):
        reason = keywords.get("reason")
    elif name.endswith(("pytest.skip", "pytest.xfail", "importorskip")):
        reason = keywords.get("reason", call.args[0] if call.args else None)
        if name.endswith("importorskip"):
            return True  # pytest names the module that could not be imported
    else:
        return True
    if isinstance(reason, ast.Constant):
        return bool(str(reason.value).strip())
    return reason is not None


def unexplained_skips(source: str) -> list[int]:
    """The lines of ``source`` where a skip (or xfail) gives no reason."""
    return [
        node.lineno
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Call) and not _says_why(node)
    ]


def test_the_check_finds_a_skip_without_a_reason() -> None:
    source = (
        "import pytest\n"
        "@pytest.mark.skipif(True)\ndef test_a(): pytest.skip()\n"
        "@pytest.mark.skipif(True, reason='x')\ndef test_b(): pytest.skip('no zstd')\n"
        "def test_c(): pytest.skip(reason='')\n"
    )
    assert unexplained_skips(source) == [2, 3, 6]


def test_every_skip_in_the_suite_says_why() -> None:
    # only files that name a skip or an xfail are parsed (every call is one of those names)
    texts = {path: path.read_text() for path in sorted(TESTS.rglob("*.py"))}
    found = {
        f"{path.relative_to(TESTS)}:{line}"
        for path, text in texts.items()
        if "skip" in text or "xfail" in text
        for line in unexplained_skips(text)
    }
    assert not found, f"skips without a reason: {sorted(found)}"
