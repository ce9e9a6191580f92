"""No two modules of tracker/ share a file name (``__init__.py`` apart): a module is named for
what it holds, and a name that stands in two packages says two things (``health``: a target's,
the store's, the API's?) and makes a traceback or a grep ambiguous (docs/architecture.md,
"Packages and their layers")."""

from __future__ import annotations

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
