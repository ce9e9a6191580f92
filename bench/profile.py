"""Optional py-spy sampling of the tracker while it is being measured (``--profile``).

Each profiled measurement writes py-spy's collapsed stacks (``--format raw``: one line per
distinct stack, ``frame;frame;... count``) to ``{out}/profiles/{label}.txt``; :func:`summary`
turns one into the functions with the most samples, on their own (self) and with what they
call (inclusive). Sampling is ``--nonblocking`` so that the tracker is not paused.
"""

from __future__ import annotations

import collections
import contextlib
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import attrs


def find_py_spy() -> str | None:
    """py-spy next to this Python (the venv) or on PATH."""
    beside = Path(sys.executable).with_name("py-spy")
    return str(beside) if beside.exists() else shutil.which("py-spy")


@attrs.define
class Profiler:
    py_spy: str
    directory: Path
    rate: int = 200
    written: list[Path] = attrs.Factory(list)

    @contextlib.contextmanager
    def record(self, label: str, pid: int) -> Iterator[None]:
        """Sample ``pid`` (all its threads) while the block runs."""
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"{label}.txt"
        argv = [self.py_spy, "record", "--pid", str(pid), "--rate", str(self.rate)]
        argv += ["--format", "raw", "--nonblocking", "--threads", "-o", str(path)]
        spy = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)  # let it attach
        try:
            yield
        finally:
            spy.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
            try:
                spy.wait(30)
            except subprocess.TimeoutExpired:
                spy.kill()
                spy.wait(5)
            if path.exists():
                self.written.append(path)


def nothing() -> contextlib.AbstractContextManager[None]:
    return contextlib.nullcontext()


def _frame_name(frame: str) -> str:
    # "function (path/to/module.py:123)" -> "function (module.py)"; thread frames kept as-is.
    name, _, where = frame.partition(" (")
    if not where:
        return frame
    file = where.rsplit(":", 1)[0].rsplit("/", 1)[-1]
    return f"{name} ({file})"


def summary(path: Path, top: int = 15) -> str:
    """The ``top`` functions by self and by inclusive samples, as text."""
    self_counts: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = [_frame_name(f) for f in stack.split(";")]
        self_counts[frames[-1]] += count
        for f in set(frames):
            incl[f] += count
    if not total:
        return f"{path.name}: no samples"
    lines = [f"{path.name}: {total} samples"]
    for title, counter in (("self", self_counts), ("inclusive", incl)):
        lines.append(f"  top {title}:")
        for name, count in counter.most_common(top):
            lines.append(f"    {100 * count / total:5.1f}%  {name}")
    return "\n".join(lines)
