"""What a process tree holds, read from /proc: the peaks of a measured process's children
(VmHWM) and of the tree's PSS, polled from a process of its own (:class:`PeakWatch`), so that
the polling takes no turn at the measured process's GIL. Standard library only: the poller
starts in a few tens of milliseconds.

    python bench/procwatch.py PID     # polls PID's tree every 100 ms until stdin closes,
                                      # then prints {"peaks": {pid: bytes}, "pss_peak": bytes}
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import subprocess
import sys
from pathlib import Path


def peak_rss(pid: str) -> int:
    """A process's peak RSS (VmHWM: ru_maxrss would count the parent's before the exec)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def pss(pid: str) -> int:
    """A process's proportional set size now (0: it ended)."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    return 0


def direct_children(pid: str = "self") -> list[str]:
    """The children of ``pid``, from each of its threads' ``children`` list (cheap enough
    to read at every sample), and theirs: the scan processes of ``accounts.scanprocs`` are
    the children of its forkserver. Where the kernel keeps no such list, every /proc entry
    is searched (children only); a process that ended has none."""
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return []
    found: list[str] = []
    for task in tasks:
        listed = Path(f"/proc/{pid}/task/{task}/children")
        try:
            found += listed.read_text().split()
        except FileNotFoundError:
            if listed.parent.exists():  # the thread is there, the list is not: no such list
                return children_of(pid)
        except OSError:  # a thread that ended
            continue
    return found + [each for child in found for each in direct_children(child)]


def children_of(pid: str) -> list[str]:
    """The pids whose parent is ``pid`` ("self": this process), every /proc entry read."""
    parent = str(os.getpid()) if pid == "self" else pid
    found = []
    for entry in os.listdir("/proc"):
        try:
            if (
                entry.isdigit()
                and Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1] == parent
            ):
                found.append(entry)
        except (OSError, IndexError):
            continue
    return found


def poll(pid: str) -> dict[str, object]:
    """Poll ``pid``'s tree every 100 ms until stdin closes: each child's peak RSS (found at
    every tick until the first, then once a second) and the most the tree held at one poll
    counting each page once (the sum of the processes' PSS)."""
    peaks: dict[str, int] = {}
    pss_peak = ticks = 0
    me = str(os.getpid())  # a child of ``pid`` too: never counted
    while True:
        if not peaks or ticks % 10 == 0:
            for child in direct_children(pid):
                if child != me:
                    peaks.setdefault(child, 0)
        ticks += 1
        held = pss(pid)
        for child in peaks:
            with contextlib.suppress(OSError):  # it ended
                peaks[child] = max(peaks[child], peak_rss(child))
                held += pss(child)
        pss_peak = max(pss_peak, held)
        if ticks == 1:
            print("ready", flush=True)
        if select.select([sys.stdin], [], [], 0.1)[0]:  # closed: the measure is over
            return {"peaks": peaks, "pss_peak": pss_peak}


class PeakWatch:
    """:func:`poll` of this process's tree in a process of its own: :meth:`start` returns
    once it polled once, :meth:`stop` ends it and keeps what it found."""

    def __init__(self) -> None:
        self.peaks: dict[str, int] = {}
        self.pss_peak = 0
        self._poller: subprocess.Popen[str] | None = None

    @property
    def peak(self) -> int:
        """The sum of the children's peaks."""
        return sum(self.peaks.values())

    def start(self) -> None:
        """Start the poller; return after its first poll."""
        self._poller = subprocess.Popen(
            [sys.executable, __file__, str(os.getpid())],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self._poller.stdout is not None
        if self._poller.stdout.readline().strip() != "ready":
            self._poller.kill()
            self._poller.wait()
            raise RuntimeError("the /proc poller did not start")

    def stop(self) -> None:
        """End the poller and take its peaks."""
        poller, self._poller = self._poller, None
        if poller is None:
            return
        out, _ = poller.communicate(timeout=30)
        found = json.loads(out)
        self.peaks, self.pss_peak = found["peaks"], found["pss_peak"]


if __name__ == "__main__":
    print(json.dumps(poll(sys.argv[1])))
