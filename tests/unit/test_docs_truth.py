"""The docs name only what exists: every ``tracker/...`` path and every dotted reference to a
module of the package (``proxy.decisions.Asked``, ``web.delivery.Delivery.location``) in README.md,
docs/ and the packages' own README files, and every Sphinx reference (``:mod:`tracker.x```) in
the code's docstrings, resolves in the code as it is; and the output the docs show a command
printing is what it prints."""

from __future__ import annotations

import ast
import functools
import importlib
import inspect
import io
import re
import sys
import tokenize
from pathlib import Path

import pytest

from tracker.cli import main

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


#: A Sphinx reference of any form in a docstring or comment: ``:func:`name```,
#: ``:class:`~tracker.x.Y```, ``:meth:`Class.method```.
ANY_SPHINX = re.compile(r":(?:mod|class|func|meth|attr|data|exc|obj):`~?\.?([A-Za-z0-9_.]+)`")
#: A row of docs/architecture.md's package table: its packages, then what it owns.
TABLE_ROW = re.compile(r"^\| [^|]+ \| (?P<packages>[^|]*`tracker/[^|]*) \| (?P<owns>.*) \|$", re.M)
BARE = re.compile(r"`([a-z_][a-z0-9_]*)`")


def _module_of(source: Path) -> str:
    parts = source.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _defined_anywhere() -> set[str]:
    """Every name the package defines: functions, classes, module and class attributes and
    fields, attributes set on ``self``, module names."""
    names = {p.stem for p in SOURCES} | {p.parent.name for p in SOURCES}
    definition = re.compile(
        r"^\s*(?:async\s+)?(?:def|class)\s+(\w+)|^\s*(\w+)\s*[:=]|self\.(\w+)\s*(?::[^=]+)?=",
        re.M,
    )
    for source in SOURCES:
        for match in definition.finditer(source.read_text()):
            names.add(next(g for g in match.groups() if g))
    return names


def _resolves_from(module_name: str, ref: str, defined: set[str]) -> bool:
    """A Sphinx reference resolves: a ``tracker.`` one from the package root; a relative one
    from the module it is written in or, being written for a reader of that module, to a
    name the package defines (its last part) or to the standard library."""
    if ref.startswith("tracker."):
        return _resolves(ref.removeprefix("tracker."))
    module = importlib.import_module(module_name)
    if _has_path(module, ref):
        return True
    if ref.rsplit(".", 1)[-1] in defined:
        return True
    try:
        importlib.import_module(ref.split(".", 1)[0])
    except ImportError:
        return False
    return True


def _has_path(obj: object, dotted: str) -> bool:
    for attr in dotted.split("."):
        if not hasattr(obj, attr):
            return inspect.isclass(obj) and _instance_attribute(obj, attr)
        obj = getattr(obj, attr)
    return True


def _table_names() -> list[tuple[str, str]]:
    """(packages, name) of each bare module name in a row of the package table."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    found = []
    for row in TABLE_ROW.finditer(text):
        packages = re.findall(r"`tracker/([a-z0-9_]+)`", row["packages"])
        found += [(",".join(packages), name) for name in BARE.findall(row["owns"])]
    return found


def _table_name_exists(packages: str, name: str, words: set[str]) -> bool:
    """A module of the row's packages, or at least a word the code has (a config key, a
    command, a function elsewhere): what is nowhere in the code is a dangling name."""
    for package in packages.split(","):
        if (ROOT / "tracker" / package / f"{name}.py").exists():
            return True
    return name in words


#: Words in ``double backticks`` of a package's docstring that are no module of it: config
#: keys and system calls it is about.
NOT_MODULES = {"file_targets", "source_limits", "sendfile", "splice"}


def _package_docstring_names() -> list[tuple[str, str]]:
    """(package, word) of each ``word`` a package's own docstring names that is no module
    (nor sub-package) of it: its list of modules is read by whoever opens the package."""
    found = []
    for init in sorted((ROOT / "tracker").glob("**/__init__.py")):
        doc = ast.get_docstring(ast.parse(init.read_text())) or ""
        modules = {p.stem for p in init.parent.glob("*.py")}
        modules |= {p.name for p in init.parent.iterdir() if (p / "__init__.py").exists()}
        for word in re.findall(r"``([a-z_][a-z0-9_]*)``", doc):
            if word not in modules and word not in NOT_MODULES:
                found.append((init.parent.relative_to(ROOT / "tracker").as_posix(), word))
    return found


def dangling() -> list[str]:
    """Every name the docs and the code's docstrings give that is not in the code."""
    found = [
        f"{doc} names {path}, which does not exist"
        for doc, path in _mentions(PATH)
        if not (ROOT / path).exists()
    ]
    found += [
        f"{doc} names `{ref}`, which is not in the code"
        for doc, ref in _mentions(DOTTED)
        if not _resolves(ref)
    ]
    defined = _defined_anywhere()
    words = {w for p in SOURCES for w in re.findall(r"[A-Za-z_][A-Za-z0-9_]*", p.read_text())}
    for source in SOURCES:
        module = _module_of(source)
        for match in ANY_SPHINX.finditer(source.read_text()):
            if not _resolves_from(module, match.group(1), defined):
                found.append(
                    f"{source.relative_to(ROOT)} names `{match.group(1)}`, not in the code"
                )
    found += [
        f"docs/architecture.md's package table names `{name}` under {packages}, not in the code"
        for packages, name in _table_names()
        if not _table_name_exists(packages, name, words)
    ]
    found += [
        f"tracker/{package}/__init__.py names ``{word}``, which is no module of it"
        for package, word in _package_docstring_names()
    ]
    return found


def test_every_name_in_the_docs_and_docstrings_resolves() -> None:
    missing = dangling()
    assert not missing, "\n".join(missing)


def test_a_dangling_name_is_found(monkeypatch: pytest.MonkeyPatch) -> None:
    assert not _resolves_from("tracker.clientwire.transport", "splice_socket", set())
    assert _resolves_from("tracker.clientwire.transport", "BigReadStream.body_unread", set())
    assert not _table_name_exists("proof/formats", "storagewrite", {"writing"})
    assert _table_name_exists("proof/formats", "writing", set())
    real = _package_docstring_names
    monkeypatch.setattr(
        sys.modules[__name__], "_package_docstring_names", lambda: [*real(), ("fetch", "pieces")]
    )
    assert "tracker/fetch/__init__.py names ``pieces``, which is no module of it" in dangling()


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


def test_docstrings_and_comments_are_whole() -> None:
    broken = {
        source.relative_to(ROOT).as_posix(): fragments
        for source in SOURCES
        if (fragments := _stray_fragments(source.read_text()))
    }
    assert broken == {}


def test_a_broken_line_is_found() -> None:
    broken = '"""' + "word " * 18 + "and\nthe\nrest of the sentence.\n\nMore.\n" + '"""\n'
    assert _stray_fragments(broken) == ["the"]


#: A section of a doc cited in a docstring or comment: ``docs/http-api.md, "Archive answers"``.
CITED = re.compile(r"docs/([a-z-]+)\.md, \"([^\"]+)\"")


@functools.cache
def _sections(doc: str) -> tuple[list[str], str]:
    """The headings of ``docs/{doc}.md`` and its text on one line (bold run-in labels such
    as ``**Failures.**`` name sections too); read once per doc, not once per citation."""
    text = (ROOT / "docs" / f"{doc}.md").read_text()
    headings = [line.lstrip("#").strip() for line in text.splitlines() if line.startswith("#")]
    return headings, " ".join(text.split())


def unknown_sections(sources: list[Path]) -> list[str]:
    """Each citation in ``sources``' prose whose doc has no heading starting with the cited
    name and no bold label of it."""
    missing = []
    for source in sources:
        where = source.relative_to(ROOT) if source.is_relative_to(ROOT) else source.name
        for block in _prose_blocks(source.read_text()):
            for doc, name in CITED.findall(" ".join(" ".join(block).split())):
                if not (ROOT / "docs" / f"{doc}.md").exists():
                    missing.append(f"{where}: docs/{doc}.md does not exist")
                    continue
                headings, flat = _sections(doc)
                if not any(h.startswith(name) for h in headings) and f"**{name}" not in flat:
                    missing.append(f"{where}: docs/{doc}.md has no {name!r}")
    return missing


def test_every_section_the_code_cites_exists() -> None:
    missing = unknown_sections(SOURCES)
    assert not missing, "\n".join(missing)


def test_a_citation_of_no_section_is_found(tmp_path: Path) -> None:
    source = tmp_path / "cites.py"
    source.write_text(
        '"""See docs/http-api.md, "Wire format", docs/nope.md, "X", and docs/http-api.md,\n'
        '"Archive answers"; docs/architecture.md, "Failures" is a bold label."""\n'
    )
    assert unknown_sections([source]) == [
        "cites.py: docs/http-api.md has no 'Wire format'",
        "cites.py: docs/nope.md does not exist",
    ]


#: README.md's example of ``verify``: the command line, then what it prints.
VERIFY_EXAMPLE = re.compile(r"^```\n\$ snapshot-tracker verify [^\n]*\n(.*?)^```", re.S | re.M)
#: An archive's name, with the directories before it.
ARCHIVE_PATH = re.compile(r"\S*snapshot-\d+(?:-\d+)?-[1-9A-HJ-NP-Za-km-z]+\.tar(?:\.[a-z0-9]+)?")


def output_shape(line: str) -> str:
    """A line a command prints with what differs from archive to archive (its path and name,
    a SHA-256, numbers such as offsets) written as placeholders: the example's line and the
    line printed for another archive then read the same."""
    line = ARCHIVE_PATH.sub("FILE", line)
    line = re.sub(r"\b[0-9a-f]{64}\b", "DIGEST", line)
    return re.sub(r"\d+", "N", line)


def test_an_output_shape_keeps_what_the_program_decides() -> None:
    shown = "ok manifest " + "ab" * 32 + " cut/snapshot-300-AbC.tar.zst (not proven: 9 accounts)"
    assert output_shape(shown) == "ok manifest DIGEST FILE (not proven: N accounts)"
    assert output_shape("bad incremental-snapshot-1-2-x9.tar: zstd: at byte 7") == (
        "bad FILE: zstd: at byte N"
    )


def test_the_readme_verify_example_is_what_verify_prints(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each line of README.md's ``verify`` example is one ``verify`` prints for the same kind
    of file: the quickstart's full, and a copy of it cut inside its second zstd frame."""
    found = VERIFY_EXAMPLE.search((ROOT / "README.md").read_text())
    assert found, "README.md shows no `$ snapshot-tracker verify` example"
    example = found[1].splitlines()
    assert len(example) == 2, example
    [full] = (ROOT / "examples" / "ledger").glob("snapshot-*.tar.zst")
    cut = tmp_path / "cut" / full.name
    cut.parent.mkdir()
    data = full.read_bytes()
    cut.write_bytes(data[: len(data) * 2 // 3])
    assert main(["verify", str(full), str(cut)]) == 1
    printed = capsys.readouterr().out.splitlines()
    shapes = {output_shape(line) for line in printed}
    assert [line for line in example if output_shape(line) not in shapes] == [], printed
