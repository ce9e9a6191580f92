"""What of an exception that ended a connection's handler is that connection's failure, and
what goes on up (:func:`tracker.zerocopy.server.unforeseen`), and how a failure is named in
its log line (:func:`tracker.zerocopy.server.failure_text`)."""

from __future__ import annotations

import pytest
import trio

from tracker.zerocopy.server import failure_text, unforeseen


async def a_cancellation() -> trio.Cancelled:
    """A real ``trio.Cancelled`` (trio makes them only in a cancelled scope)."""
    with trio.CancelScope() as scope:
        scope.cancel()
        try:
            await trio.lowlevel.checkpoint()
        except trio.Cancelled as cancelled:
            return cancelled
    raise AssertionError("not cancelled")


def shape(exc: BaseException | None) -> object:
    """``exc`` as its types: a group as the list of its members' shapes."""
    if exc is None:
        return None
    if isinstance(exc, BaseExceptionGroup):
        return [type(exc).__name__, *(shape(inner) for inner in exc.exceptions)]
    return type(exc).__name__


CANCELLED = object()  # stands for a real trio.Cancelled, made in the test


@pytest.mark.parametrize(
    ("members", "failure", "rest"),
    [
        (RuntimeError("bug"), "RuntimeError", None),
        (KeyError("k"), "KeyError", None),
        (CANCELLED, None, "Cancelled"),
        (KeyboardInterrupt(), None, "KeyboardInterrupt"),
        (SystemExit(1), None, "SystemExit"),
        (GeneratorExit(), None, "GeneratorExit"),
        # trio's nurseries (hypercorn's, the listener's) group what their tasks raised
        (["eg", RuntimeError("bug")], ["ExceptionGroup", "RuntimeError"], None),
        (
            ["beg", CANCELLED, RuntimeError("bug")],
            ["ExceptionGroup", "RuntimeError"],
            ["BaseExceptionGroup", "Cancelled"],
        ),
        (
            ["beg", ["eg", ValueError("v")], KeyboardInterrupt()],
            ["ExceptionGroup", ["ExceptionGroup", "ValueError"]],
            ["BaseExceptionGroup", "KeyboardInterrupt"],
        ),
        (["beg", CANCELLED, CANCELLED], None, ["BaseExceptionGroup", "Cancelled", "Cancelled"]),
    ],
)
async def test_an_exception_is_the_connections_failure_unless_it_is_no_exception(
    members: object, failure: object, rest: object
) -> None:
    async def build(spec: object) -> BaseException:
        if spec is CANCELLED:
            return await a_cancellation()
        if isinstance(spec, list):
            kind, *inner = spec
            built = [await build(item) for item in inner]
            if kind == "eg":
                return ExceptionGroup("g", built)  # type: ignore[type-var]
            return BaseExceptionGroup("g", built)
        assert isinstance(spec, BaseException)
        return spec

    ended = await build(members)
    contained, going_on = unforeseen(ended)
    assert (shape(contained), shape(going_on)) == (failure, rest)
    if failure is None:
        assert going_on is ended  # raised as it came, untouched
    if rest is None:
        assert contained is ended


@pytest.mark.parametrize(
    ("failure", "text"),
    [
        (RuntimeError("a bug"), "RuntimeError: a bug"),
        (KeyError("k"), "KeyError: 'k'"),
        (ExceptionGroup("Exceptions from Trio nursery", [ValueError("v")]), "ValueError: v"),
        (
            ExceptionGroup("g", [ValueError("v"), ExceptionGroup("h", [OSError(5, "io")])]),
            "ValueError: v; OSError: [Errno 5] io",
        ),
    ],
)
def test_a_failure_is_named_by_what_it_holds(failure: BaseException, text: str) -> None:
    assert failure_text(failure) == text
