"""docs/architecture.md, "Following one relay", against the code: the files a relay reads in
(at most eight of proxy/), the carriers that travel between them (at most four), and that
each entry point the section names is given those carriers and no other value of proxy/.

The section is parsed, the code is imported: a carrier renamed or moved, an entry point that
takes another value of proxy/ (a new carrier), or a file that the relay no longer reads fails
here until the section says what is true."""

from __future__ import annotations

import importlib
import inspect
import re
import types
import typing
from pathlib import Path

import attrs
import pytest

ROOT = Path(__file__).resolve().parents[2]
DOC = (ROOT / "docs" / "architecture.md").read_text()
MAX_FILES = 8
MAX_CARRIERS = 4
#: The decisions' own values (facts and decisions) are their language, not carriers.
WALK_MODULES = ("tracker.proxy.decisions",)


def _between(tag: str) -> str:
    start, end = DOC.index(f"<!-- {tag} -->"), DOC.index(f"<!-- /{tag} -->")
    return DOC[start:end]


def relay_files() -> list[str]:
    """The files of proxy/ the section lists, in order."""
    return re.findall(r"^\d+\. `(tracker/proxy/[a-z_]+\.py)`", _between("relay-files"), re.M)


def carriers() -> dict[str, list[str]]:
    """Each carrier the section names, with the entry points it is given to."""
    rows = {}
    for line in _between("relay-carriers").splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0].startswith("`proxy."):
            rows[cells[0].strip("`")] = re.findall(r"`(proxy\.[A-Za-z_.]+)`", cells[2])
    return rows


def resolve(dotted: str) -> object:
    """``proxy.mod.Name.attr``: the module, then attributes on it."""
    parts = ["tracker", *dotted.split(".")]
    for cut in range(len(parts), 1, -1):
        try:
            obj: object = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr)
        return obj
    raise AssertionError(f"{dotted} is not in the code")


def required(entry: object) -> list[object]:
    """The annotations of what ``entry`` (a function, or a class to build) must be given."""
    if inspect.isclass(entry) and attrs.has(entry):
        attrs.resolve_types(entry)
        return [f.type for f in attrs.fields(entry) if f.init and f.default is attrs.NOTHING]
    function = entry.__init__ if inspect.isclass(entry) else entry  # type: ignore[misc]
    assert callable(function)
    hints = typing.get_type_hints(function)
    # ``task_status``: what a pump answers through trio's ``started`` (its ``Head``), not
    # what it is given.
    return [
        hints[name]
        for name, parameter in inspect.signature(function).parameters.items()
        if name not in ("self", "task_status")
        and parameter.default is inspect.Parameter.empty
        and name in hints
    ]


def proxy_values(annotation: object) -> set[type]:
    """The attrs classes of proxy/ (outside the decisions' module) in ``annotation``."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is not None:
        return set().union(*(proxy_values(arg) for arg in typing.get_args(annotation)))
    if (
        inspect.isclass(annotation)
        and attrs.has(annotation)
        and annotation.__module__.startswith("tracker.proxy.")
        and annotation.__module__ not in WALK_MODULES
    ):
        return {annotation}
    return set()


def file_of(obj: object) -> str:
    module = inspect.getmodule(obj)
    assert module is not None and module.__file__ is not None
    return Path(module.__file__).relative_to(ROOT).as_posix()


ENTRIES = sorted({(carrier, entry) for carrier, entries in carriers().items() for entry in entries})


def test_the_section_is_read() -> None:
    assert len(relay_files()) >= 5
    assert len(carriers()) >= 2
    assert all(carriers().values())


def test_a_relay_reads_in_at_most_eight_files_of_proxy() -> None:
    files = relay_files()
    assert len(files) == len(set(files))
    assert len(files) <= MAX_FILES
    for path in files:
        assert (ROOT / path).is_file(), path


def test_at_most_four_carriers_each_an_attrs_value_of_the_relay() -> None:
    assert len(carriers()) <= MAX_CARRIERS
    for dotted in carriers():
        carrier = resolve(dotted)
        assert inspect.isclass(carrier) and attrs.has(carrier), dotted
        assert file_of(carrier) in relay_files(), dotted


@pytest.mark.parametrize(("carrier", "entry"), ENTRIES)
def test_each_entry_point_is_given_its_carrier(carrier: str, entry: str) -> None:
    found = resolve(entry)
    assert file_of(found) in relay_files(), f"{entry} is not in a file of the relay"
    given = set().union(*(proxy_values(a) for a in required(found)))
    assert resolve(carrier) in given, f"{entry} is not given a {carrier}"


@pytest.mark.parametrize("entry", sorted({entry for _carrier, entry in ENTRIES}))
def test_an_entry_point_is_given_no_other_value_of_proxy(entry: str) -> None:
    named = {resolve(carrier) for carrier in carriers()}
    given = set().union(*(proxy_values(a) for a in required(resolve(entry))))
    assert given <= named, f"{entry} is given {sorted(c.__name__ for c in given - named)}"


def test_a_value_of_proxy_is_found_in_an_annotation() -> None:
    from tracker.proxy.ask import Ask
    from tracker.proxy.decisions import Mode
    from tracker.proxy.transfers import Head, StreamJob

    assert proxy_values(Ask | None) == {Ask}
    assert proxy_values(list[StreamJob]) == {StreamJob}
    assert proxy_values(Head) == {Head}
    assert proxy_values(Mode) == set()  # a fact of the decisions: their own language
    assert proxy_values(int | str) == set()
