"""A signal during ``verify``'s proof is an interruption, never a verdict (README.md, "Command
line": exit 128 + the signal, one line): the KeyboardInterrupt a signal raises while a compiled
kernel runs reaches the check as CPython hands it back from a C function, a SystemError
("returned a result with an exception set") whose cause is the interrupt, which the check
used to map to ``bad FILE: check failed: SystemError: ...``.

Here the interrupt is raised where a storage is scanned, by the real signal and its real
handler (``signal.raise_signal`` runs the handler before it returns), and handed on as the
dispatcher hands it on; or where the interpreter drops it (the handler run inside a
``__del__``), after which the command must still end within moments, and a stop that landed
must let its cleanups run whole. The same with real subprocesses signalled mid-proof:
tests/integration/test_cli_signals.py.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from archives import build_archive
from helpers_signals import DroppedStop, drops_kept

from tracker.cli import RAISE_AGAIN, main, unwinding
from tracker.errors import interruption_in
from tracker.proof.archive.archivecheck import as_rejection
from tracker.proof.formats.parsing import Parser
from tracker.proof.formats.prover import ArchiveProver

SIGNALS = [(signal.SIGINT, 130), (signal.SIGTERM, 143)]


def _interrupted_in_a_kernel(signum: int) -> Parser:
    yield 1  # the storage's scan has begun
    try:
        signal.raise_signal(signum)  # its handler raises KeyboardInterrupt here
    except KeyboardInterrupt as interrupt:
        raise SystemError(
            "CPUDispatcher(<function scan at 0x7f8c22f9d1c0>) returned a result with an "
            "exception set"
        ) from interrupt
    raise AssertionError("the signal's handler did not raise")  # pragma: no cover


def test_an_interrupt_anywhere_in_the_chain_is_raised_again() -> None:
    interrupt = KeyboardInterrupt()
    wrapped = SystemError("returned a result with an exception set")
    wrapped.__cause__ = interrupt
    during = ValueError("while handling it")
    during.__context__ = wrapped
    for exc in (wrapped, during):
        assert interruption_in(exc) is interrupt
        with pytest.raises(KeyboardInterrupt):
            as_rejection(exc)
    exit_ = SystemExit(3)
    assert interruption_in(exit_) is exit_
    grouped = KeyboardInterrupt()  # as trio raises it out of a nursery
    assert interruption_in(BaseExceptionGroup("", [ValueError(), grouped])) is grouped
    plain = SystemError("a kernel's own failure")
    assert interruption_in(plain) is None
    assert as_rejection(plain).reason == "check failed: SystemError: a kernel's own failure"
    looped = ValueError("a chain that loops")
    looped.__context__ = RuntimeError()
    looped.__context__.__context__ = looped
    assert interruption_in(looped) is None


def _dropped_then_working(signum: int) -> Parser:
    yield 1
    DroppedStop(signum)  # collected at once
    for _ in range(100):  # five seconds of a scan's work, fifty times RAISE_AGAIN
        time.sleep(0.05)
    raise AssertionError("the scan went on to its end after the signal")


def _landed_then_cleaning(signum: int, cleaned: list[float]) -> Parser:
    yield 1
    try:
        signal.raise_signal(signum)
    finally:
        began = time.monotonic()
        while time.monotonic() - began < 5 * RAISE_AGAIN:  # a cleanup longer than the period
            time.sleep(0.01)
        cleaned.append(time.monotonic() - began)


def _verify_with(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, storage: Callable[[], Parser]
) -> int:
    """``verify`` of a real archive whose first account storage is read by ``storage``
    (what the interpreter drops meanwhile is kept from pytest's hook): its exit code."""
    name, good = build_archive(902)
    path = tmp_path / name
    path.write_bytes(good)
    original = ArchiveProver.member

    def member(self: ArchiveProver, member_name: str, size: int) -> Parser | None:
        parser = original(self, member_name, size)
        if parser is not None and member_name.startswith("accounts/"):
            parser.close()
            return storage()
        return parser

    monkeypatch.setattr(ArchiveProver, "member", member)
    with drops_kept():
        return main(["verify", str(path)])


@pytest.mark.usefixtures("default_sigint")
@pytest.mark.parametrize(
    "storage",
    [_interrupted_in_a_kernel, _dropped_then_working],
    ids=["inside a compiled kernel", "dropped in a finalizer"],
)
@pytest.mark.parametrize(("signum", "code"), SIGNALS)
def test_a_signal_during_the_proof_is_an_interruption(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    signum: int,
    code: int,
    storage: Callable[[int], Parser],
) -> None:
    """No verdict, one line: the interrupt raised inside a compiled kernel (handed back as
    a SystemError), or dropped by the interpreter inside a ``__del__`` while the work goes
    on (a verify of 3,000 files ran to its end after SIGTERM: raised again until it lands)."""
    assert _verify_with(tmp_path, monkeypatch, lambda: storage(signum)) == code
    out, err = capsys.readouterr()
    assert (out, err) == ("", "snapshot-tracker: interrupted\n")


@pytest.mark.usefixtures("default_sigint")
def test_a_stop_that_landed_is_not_raised_again_in_its_cleanups(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    cleaned: list[float] = []
    storage = lambda: _landed_then_cleaning(signal.SIGTERM, cleaned)  # noqa: E731
    assert _verify_with(tmp_path, monkeypatch, storage) == 143
    assert len(cleaned) == 1 and cleaned[0] >= 5 * RAISE_AGAIN  # ran whole
    assert capsys.readouterr() == ("", "snapshot-tracker: interrupted\n")


def test_unwinding_is_an_interrupt_handled_now_or_what_is_handled_came_from() -> None:
    assert not unwinding()
    try:
        raise KeyboardInterrupt
    except KeyboardInterrupt:
        assert unwinding()
        try:
            raise ValueError("a cleanup's own failure on the way up")
        except ValueError:
            assert unwinding()
    try:
        raise ValueError("no interrupt")
    except ValueError:
        assert not unwinding()
    try:  # as trio raises it out of a nursery (fetch handles it there)
        raise BaseExceptionGroup("", [ValueError(), BaseExceptionGroup("", [KeyboardInterrupt()])])
    except BaseExceptionGroup:
        assert unwinding()
    try:
        raise ExceptionGroup("", [ValueError()])
    except ExceptionGroup:
        assert not unwinding()
    looped = ValueError("a chain that loops")
    looped.__context__ = RuntimeError()
    looped.__context__.__context__ = looped
    try:
        raise looped
    except ValueError:
        assert not unwinding()
