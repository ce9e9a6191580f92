"""What a signal does to ``serve``: the daemon's decision (``signal_action``, a table) and
the command line's holder while the daemon starts (``StartingSignals``)."""

from __future__ import annotations

import signal

import pytest

from tracker.cli import StartingSignals
from tracker.service import signal_action


@pytest.mark.parametrize(
    ("signum", "stopping", "action"),
    [
        (signal.SIGTERM, False, "stop"),
        (signal.SIGINT, False, "stop"),
        (signal.SIGHUP, False, "reload"),
        (signal.SIGTERM, True, "force"),
        (signal.SIGINT, True, "force"),
        (signal.SIGHUP, True, "reload_ignored"),
    ],
)
def test_signal_action(signum: int, stopping: bool, action: str) -> None:
    assert signal_action(signum, stopping) == action


class Stopped(Exception):
    pass


def stop(signum: int, frame: object) -> None:
    raise Stopped(signum)


@pytest.mark.parametrize(
    ("looping", "signum", "stops"),
    [
        (False, signal.SIGTERM, True),  # nothing started: the command is interrupted
        (False, signal.SIGINT, True),
        (False, signal.SIGHUP, False),  # held: the daemon's first reload
        (True, signal.SIGTERM, False),  # held: the daemon stops gracefully once it can
        (True, signal.SIGINT, False),
        (True, signal.SIGHUP, False),
    ],
)
def test_starting_signals(looping: bool, signum: int, stops: bool) -> None:
    starting = StartingSignals(stop)
    starting.looping = looping
    if stops:
        with pytest.raises(Stopped):
            starting(signum, None)
    else:
        starting(signum, None)
    # held when it stops too: should its interrupt be dropped, the daemon stops first thing
    assert starting.held == [signum]
