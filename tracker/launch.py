"""The program's entry point (``snapshot-tracker``, ``python -m tracker``): SIGINT, SIGTERM
and SIGHUP are the command's from its first line, before the command line and its
libraries are imported (a third of a second, more on a cold disk).

A signal while they load ends the command as one while it runs does (README.md, "Command
line"): one line, ``snapshot-tracker: interrupted``, and exit 128 + the signal's number;
it killed the process with no line, or printed a KeyboardInterrupt traceback. ``serve``'s
SIGHUP is a reload, never an end: one while it loads changes nothing (the config is read
after). Only the interpreter's own start, before this module runs, is left to the
defaults.

Standard library only: importing this module must itself be quick.
"""

from __future__ import annotations

import signal
import sys
from typing import Any

#: The line a command ends with when a signal stops it.
INTERRUPTED = "snapshot-tracker: interrupted"


def main() -> int:
    """Hold the signals, load the command line, run it; its exit code."""
    received: list[int] = []

    def stop(signum: int, frame: object) -> None:
        received.append(signum)
        raise KeyboardInterrupt

    original: dict[signal.Signals, Any] = {
        signum: signal.getsignal(signum)
        for signum in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)
    }
    # as tracker.cli.command_of reads it (that module is what is being loaded)
    serving = next((arg for arg in sys.argv[1:] if not arg.startswith("-")), "") == "serve"
    for signum, handler in original.items():
        # one that came ignored stays ignored: SIGINT in a background job of a script,
        # SIGHUP under nohup
        if handler is signal.SIG_IGN:
            continue
        if serving and signum == signal.SIGHUP:
            signal.signal(signum, _reload_before_reading)
        else:
            signal.signal(signum, stop)
    try:
        from tracker.cli import main as run

        if not received:  # else raised where it was dropped (an import lock's __del__)
            # the command line takes the signals over, and what it records goes in the
            # same list: one exit code, one line, whichever handler took the signal
            return run(None, original, received)
    except KeyboardInterrupt:
        pass
    for signum in original:  # ending: a second signal changes nothing of what is said
        signal.signal(signum, signal.SIG_IGN)
    print(INTERRUPTED, file=sys.stderr)
    return 128 + (received[0] if received else signal.SIGINT)


def _reload_before_reading(signum: int, frame: object) -> None:
    """``serve``'s SIGHUP before its config is read: a reload of a file not read yet is
    what the start does anyway."""
