"""The docs name only what exists: every ``tracker/...`` path and every dotted reference to a
module of the package (``proxy.plan.Asked``, ``web.delivery.Delivery.location``) in README.md,
docs/ and the packages' own README files, and every Sphinx reference (``:mod:`tracker.x```) in
the code's docstrings, resolves in the code as it is."""

from __future__ import annotations

import importlib
import inspect
import re
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
    assert not _resolves("proxy.plan.NoSuchDecision")
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
