"""A signal during ``verify``'s proof is an interruption, never a verdict (README.md, "Command
line": exit 128 + the signal, one line): the KeyboardInterrupt a signal raises while a compiled
kernel runs reaches the check as CPython hands it back from a C function, a SystemError
("returned a result with an exception set") whose cause is the interrupt, which the check
used to map to ``bad FILE: check failed: SystemError: ...``.

Here the interrupt is raised where a storage is scanned, by the real signal and its real
handler (``signal.raise_signal`` runs the handler before it returns), and handed on as the
dispatcher hands it on. The same with real subprocesses signalled mid-proof:
tests/integration/test_cli_signals.py.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from archives import build_archive

from tracker.cli import main
from tracker.proof.archive.archivecheck import as_rejection, interruption_in
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


@pytest.fixture
def default_sigint() -> Iterator[None]:
    """SIGINT as a terminal starts a command (a suite started in the background may pass
    it on ignored)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@pytest.mark.usefixtures("default_sigint")
@pytest.mark.parametrize(("signum", "code"), SIGNALS)
def test_a_signal_inside_a_compiled_kernel_is_an_interruption(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    signum: int,
    code: int,
) -> None:
    name, good = build_archive(901)
    path = tmp_path / name
    path.write_bytes(good)
    original = ArchiveProver.member

    def member(self: ArchiveProver, member_name: str, size: int) -> Parser | None:
        parser = original(self, member_name, size)
        if parser is not None and member_name.startswith("accounts/"):
            parser.close()
            return _interrupted_in_a_kernel(signum)
        return parser

    monkeypatch.setattr(ArchiveProver, "member", member)
    assert main(["verify", str(path)]) == code
    out, err = capsys.readouterr()
    assert (out, err) == ("", "snapshot-tracker: interrupted\n")


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
    plain = SystemError("a kernel's own failure")
    assert interruption_in(plain) is None
    assert as_rejection(plain).reason == "check failed: SystemError: a kernel's own failure"
    looped = ValueError("a chain that loops")
    looped.__context__ = RuntimeError()
    looped.__context__.__context__ = looped
    assert interruption_in(looped) is None
