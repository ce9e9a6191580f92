"""A source's transport failure or silence becomes SourceFailed in one place
(tracker/net/exchange.py ``source_failures``), and nowhere else outside the proxy."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import trio

import tracker
from tracker.errors import FetchError, SourceFailed, TransportError
from tracker.net.exchange import source_failures

ROOT = Path(tracker.__file__).parent


@pytest.mark.parametrize(
    ("url", "raised", "reason"),
    [
        (
            "http://s/x",
            TransportError("connection broken: reset"),
            "http://s/x: connection broken: reset",
        ),
        ("", TransportError("connect timeout"), "connect timeout"),
        ("http://s/x", trio.TooSlowError(), "http://s/x: no answer within 3s"),
        ("", trio.TooSlowError(), "no answer within 3s"),
    ],
)
def test_a_failure_or_silence_is_one_line_naming_the_source(
    url: str, raised: Exception, reason: str
) -> None:
    with pytest.raises(SourceFailed) as info, source_failures(url, "no answer within 3s"):
        raise raised
    assert str(info.value) == reason
    # The library's failure stays the cause; a deadline is no failure worth a traceback.
    assert info.value.__cause__ is (raised if isinstance(raised, TransportError) else None)


@pytest.mark.parametrize("raised", [SourceFailed("other"), FetchError("x"), OSError(28, "full")])
def test_anything_else_passes_through(raised: Exception) -> None:
    with pytest.raises(type(raised)) as info, source_failures("http://s/x", "silent"):
        raise raised
    assert info.value is raised


async def test_a_deadline_inside_the_block_is_its_silence() -> None:
    with (
        pytest.raises(SourceFailed) as info,
        source_failures("http://s/x", "no data for 0s"),
        trio.fail_after(0),
    ):
        await trio.sleep_forever()
    assert str(info.value) == "http://s/x: no data for 0s"


#: Handlers still worded on their own, to be switched by the proxy reshape (module: function).
CAUGHT = frozenset({"TransportError", "trio.TooSlowError"})


def own_wordings(name: str, source: str) -> list[str]:
    """``module:function`` of every ``except`` of a TransportError or trio.TooSlowError that
    raises SourceFailed itself."""
    found = []
    for func in ast.walk(ast.parse(source)):
        if not isinstance(func, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        for handler in ast.walk(func):
            if not isinstance(handler, ast.ExceptHandler) or handler.type is None:
                continue
            kinds = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
            if not CAUGHT & {ast.unparse(kind) for kind in kinds}:
                continue
            raises = [n for n in ast.walk(handler) if isinstance(n, ast.Raise) and n.exc]
            if any("SourceFailed" in ast.unparse(r.exc) for r in raises if r.exc is not None):
                found.append(f"{name}:{func.name}")
    return found


def test_own_wordings_are_found() -> None:
    source = (
        "async def f():\n"
        "    try:\n        pass\n"
        "    except trio.TooSlowError:\n        raise SourceFailed('slow') from None\n"
        "    except (ValueError, TransportError) as exc:\n        raise SourceFailed(str(exc))\n"
        "def g():\n"
        "    try:\n        pass\n"
        "    except TransportError as exc:\n        raise ProbeError(str(exc))\n"
    )
    assert own_wordings("m.py", source) == ["m.py:f", "m.py:f"]


def test_no_byte_path_words_a_source_failure_of_its_own() -> None:
    found = {
        wording
        for path in sorted(ROOT.rglob("*.py"))
        if path.relative_to(ROOT).as_posix() != "net/exchange.py"
        for wording in own_wordings(path.relative_to(ROOT).as_posix(), path.read_text())
    }
    assert not found, f"use tracker.net.exchange.source_failures: {found}"
