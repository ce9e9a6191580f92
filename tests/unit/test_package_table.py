"""Every module of the package is named in its package's row of the package table in
docs/architecture.md ("Packages and their layers"): a newcomer finds each room there."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TABLE = [
    line
    for line in (ROOT / "docs" / "architecture.md").read_text().splitlines()
    if line.startswith("| ") and "`tracker/" in line
]
MODULES = sorted(
    (package.parent.relative_to(ROOT / "tracker").as_posix(), module.stem)
    for package in (ROOT / "tracker").glob("*/**/__init__.py")
    for module in package.parent.glob("*.py")
    if module.stem != "__init__"
)


def _row(package: str, module: str) -> str:
    """The row of the package, or of the module itself where a package's modules sit at
    different layers (``tracker/proof/levels.py``)."""
    rows = [
        line
        for line in TABLE
        if f"`tracker/{package}`" in line.split("|")[2]
        or f"`tracker/{package}/{module}.py`" in line.split("|")[2]
    ]
    assert len(rows) == 1, f"tracker/{package} has {len(rows)} rows in the package table"
    return rows[0]


def _named(row: str, package: str, module: str) -> bool:
    return re.search(rf"`{module}`|`{module}[.:(]|\b{package}\.{module}\b", row) is not None


@pytest.mark.parametrize(("package", "module"), MODULES, ids=lambda v: v)
def test_every_module_is_in_its_package_row(package: str, module: str) -> None:
    row = _row(package, module)
    assert _named(row, package.rsplit("/", 1)[-1], module), f"tracker/{package}/{module}.py"


def test_the_finder_tells_a_named_module_from_another() -> None:
    row = "| 0 | `tracker/core` | names (`snapshots`), `hosts.is_authority`, core.text |"
    assert _named(row, "core", "snapshots") and _named(row, "core", "hosts")
    assert _named(row, "core", "text") and not _named(row, "core", "digests")
