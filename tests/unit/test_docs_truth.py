"""The docs name only what exists: every ``tracker/...`` path and every dotted reference to a
module of the package (``proxy.decisions.Asked``, ``web.delivery.Delivery.location``) in README.md,
docs/ and the packages' own README files, and every Sphinx reference (``:mod:`tracker.x```) in
the code's docstrings, resolves in the code as it is."""

from __future__ import annotations

import ast
import importlib
import inspect
import io
import re
import tokenize
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = sorted(
    [ROOT / "README.md", *(ROOT / "docs").glob("*.md"), *ROOT.glob("tracker/*/README.md")]
)
PACKAGES = sorted(p.name for p in (ROOT / "tracker").iterdir() if (p / "__init__.py").exists())

#: A path in the repository (not a part of another path such as /etc/snapshot-tracker/...).
PATH = re.compile(r"(?<![\w/.-])tracker/[A-Za-z0-9_./]*[A-Za-z0-9_]")
#: A dotted reference in backticks that starts with one of the package's sub-packages.
ALTERNATIVES = "|".join(PACKAGES)
DOTTED = re.compile(rf"`(?:tracker\.)?((?:{ALTERNATIVES})\.[A-Za-z_][A-Za-z0-9_.]*)")


#: A Sphinx cross-reference in a docstring or comment of the package.
SPHINX = re.compile(r":(?:mod|class|func|meth|attr|data|exc):`~?tracker\.([A-Za-z0-9_.]+)`")
SOURCES = sorted((ROOT / "tracker").rglob("*.py"))


def _mentions(pattern: re.Pattern[str]) -> list[tuple[str, str]]:
    found = {
        (doc.relative_to(ROOT).as_posix(), match.group(match.lastindex or 0))
        for doc in DOCS
        for match in pattern.finditer(doc.read_text())
    }
    return sorted(found)


def _code_mentions() -> list[tuple[str, str]]:
    found = {
        (source.relative_to(ROOT).as_posix(), match.group(1))
        for source in SOURCES
        for match in SPHINX.finditer(source.read_text())
    }
    return sorted(found)


def _resolves(dotted: str) -> bool:
    """``a.b.C.d``: the longest importable module prefix, then attributes on it."""
    parts = ["tracker", *dotted.rstrip(".").split(".")]
    for cut in range(len(parts), 1, -1):
        try:
            obj: object = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for attr in parts[cut:]:
            if not hasattr(obj, attr):
                return inspect.isclass(obj) and _instance_attribute(obj, attr)
            obj = getattr(obj, attr)
        return True
    return False


def _instance_attribute(cls: type, attr: str) -> bool:
    """An attribute its instances get in ``__init__`` (``self.name = ...``) or a field."""
    source = inspect.getsource(cls)
    return re.search(rf"self\.{attr}\b\s*(:[^=]+)?=|^\s+{attr}\s*:", source, re.M) is not None


def test_the_docs_name_paths_and_references() -> None:
    assert len(_mentions(PATH)) > 10
    assert len(_mentions(DOTTED)) > 50
    assert len(_code_mentions()) > 100
    assert not _resolves("proxy.decisions.NoSuchDecision")
    assert not _resolves("no_such_package.module")


@pytest.mark.parametrize(("doc", "path"), _mentions(PATH))
def test_every_path_named_in_the_docs_exists(doc: str, path: str) -> None:
    assert (ROOT / path).exists(), f"{doc} names {path}, which does not exist"


@pytest.mark.parametrize(("doc", "ref"), _mentions(DOTTED))
def test_every_reference_in_the_docs_resolves(doc: str, ref: str) -> None:
    assert _resolves(ref), f"{doc} names `{ref}`, which is not in the code"


@pytest.mark.parametrize(("source", "ref"), _code_mentions())
def test_every_reference_in_the_code_resolves(source: str, ref: str) -> None:
    assert _resolves(ref), f"{source} names `tracker.{ref}`, which is not in the code"


def _prose_blocks(source: str) -> list[list[str]]:
    """Each docstring of ``source`` and each run of comment lines, as lists of lines."""
    blocks = [
        doc.splitlines()
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        and (doc := ast.get_docstring(node, clean=True))
    ]
    run: list[str] = []
    last = -2
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type != tokenize.COMMENT or not token.line.strip().startswith("#"):
            continue
        if token.start[0] != last + 1 and run:
            blocks.append(run)
            run = []
        run.append(token.string.lstrip("#:").strip())
        last = token.start[0]
    return [*blocks, run] if run else blocks


def _stray_fragments(source: str) -> list[str]:
    """Lines of one or two words that a long line broke off mid-sentence (a mechanical rewrite
    that lengthened a line and wrapped only its tail leaves them)."""
    return [
        line
        for lines in _prose_blocks(source)
        for before, line, after in zip(lines, lines[1:], lines[2:], strict=False)
        if 0 < len(line.split()) <= 2
        and len(before) >= 80
        and after.strip()
        and line[:1].islower()
        and not line.rstrip().endswith((".", ":", ";"))
    ]


@pytest.mark.parametrize("source", [p.relative_to(ROOT).as_posix() for p in SOURCES])
def test_docstrings_and_comments_are_whole(source: str) -> None:
    assert _stray_fragments((ROOT / source).read_text()) == []


def test_a_broken_line_is_found() -> None:
    broken = '"""' + "word " * 18 + "and\nthe\nrest of the sentence.\n\nMore.\n" + '"""\n'
    assert _stray_fragments(broken) == ["the"]
