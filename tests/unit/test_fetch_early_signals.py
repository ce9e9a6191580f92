"""A signal that reaches ``fetch`` before its own receiver runs (the command line's handlers
hold it until then, README.md "Command line"): one line, fetch's ``fetch_interrupted`` with
what the ledger kept, and 128 + the signal; a stop the interpreter dropped is never raised
into trio's event loop, whose receivers own the signals there (tracker/cli.py, ``again``),
and one dropped before fetch's receiver opened starts no download.

Fetch's body is replaced by a stand-in (``_until_signal``): nothing is downloaded, no socket
is opened; the real signal goes through the real handlers."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
import trio
from helpers_signals import DroppedStop, drops_kept

import tracker.fetch.flags as flags
import tracker.fetch.run as fetch_run
from tracker.cli import RAISE_AGAIN, main
from tracker.fetch.run import FetchOptions

SIGNALS = [(signal.SIGINT, 130), (signal.SIGTERM, 143)]


def fetch(tmp_path: Path) -> int:
    """``fetch`` of a full into ``tmp_path`` (its body replaced), with what the interpreter
    drops kept from pytest's hook; its exit code."""
    with drops_kept():
        return main(
            ["fetch", "--tracker", "http://127.0.0.1:9/", "--ledger", str(tmp_path), "--full"]
        )


def one_fetch_interrupted(err: str) -> None:
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert "fetch_interrupted" in lines[0] and "interrupted; 0 of 0 bytes kept" in lines[0]


@pytest.mark.usefixtures("default_sigint")
@pytest.mark.parametrize(("signum", "code"), SIGNALS)
def test_a_signal_before_fetchs_receiver_is_said_once_by_fetch(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    signum: int,
    code: int,
) -> None:
    async def until_signal(options: FetchOptions, stopped: list[int]) -> None:
        signal.raise_signal(signum)  # the command line's handler: KeyboardInterrupt here
        raise AssertionError("the handler did not raise")  # pragma: no cover

    monkeypatch.setattr(flags, "_until_signal", until_signal)
    assert fetch(tmp_path) == code
    one_fetch_interrupted(capsys.readouterr().err)


@pytest.mark.usefixtures("default_sigint")
def test_a_dropped_stop_is_not_raised_into_the_event_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    lasted: list[bool] = []

    async def until_signal(options: FetchOptions, stopped: list[int]) -> None:
        DroppedStop(signal.SIGTERM)  # collected at once
        await trio.sleep(5 * RAISE_AGAIN)  # trio's machinery: nothing raised into it
        lasted.append(True)

    monkeypatch.setattr(flags, "_until_signal", until_signal)
    assert fetch(tmp_path) == 143
    assert lasted == [True]
    one_fetch_interrupted(capsys.readouterr().err)


@pytest.mark.usefixtures("default_sigint")
def test_a_stop_dropped_before_the_receiver_starts_no_download(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    ran: list[FetchOptions] = []
    watched = flags.watched_signals

    def dropping_then_watched() -> tuple[signal.Signals, ...]:
        DroppedStop(signal.SIGTERM)  # just before fetch's receiver opens
        return watched()

    async def run_fetch(options: FetchOptions) -> None:
        ran.append(options)

    monkeypatch.setattr(flags, "watched_signals", dropping_then_watched)
    monkeypatch.setattr(fetch_run, "run_fetch", run_fetch)
    assert fetch(tmp_path) == 143
    assert ran == []
    one_fetch_interrupted(capsys.readouterr().err)
