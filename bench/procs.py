"""Child processes of the bench: started in their own process group, always cleaned up.

Every process is started by :meth:`Procs.start`, which remembers it; :meth:`Procs.stop` and
:meth:`Procs.close` end them by their own process-group id (SIGTERM, then SIGKILL after a
short wait). ``run.py`` calls ``close`` in a ``finally`` and turns SIGTERM into
KeyboardInterrupt, so an error, Ctrl-C or a kill leaves nothing running. A bench killed
outright (SIGKILL: no ``finally`` runs) takes its children with it: each is started with
the kernel's parent-death signal (``PR_SET_PDEATHSIG``, SIGKILL), but for a child whose own
children the kernel would orphan (nginx: its workers outlive a master killed outright), which
gets a signal it ends them on (nginx's master: SIGTERM, a fast shutdown of its workers).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import attrs

HOST = "127.0.0.1"
#: ``prctl(2)``'s option that sends the caller a signal when its parent dies.
PR_SET_PDEATHSIG = 1


def die_with_parent(signum: int = signal.SIGKILL) -> None:
    """In a child before exec: get ``signum`` when the process that started it dies (Linux;
    elsewhere nothing)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signum, 0, 0, 0)


@attrs.define
class Proc:
    """A started child: its Popen and the file its stdout and stderr go to."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def log(self) -> str:
        """What the process wrote so far."""
        return self.log_path.read_text(errors="replace")

    def check_alive(self) -> None:
        """Raise RuntimeError with the tail of its log if the process has exited."""
        code = self.popen.poll()
        if code is not None:
            tail = "\n".join(self.log().splitlines()[-20:])
            raise RuntimeError(f"{self.name} exited with {code}:\n{tail}")


@attrs.define
class Procs:
    """The running children, by name; logs go to ``log_dir``."""

    log_dir: Path
    running: dict[str, Proc] = attrs.Factory(dict)

    def start(
        self,
        name: str,
        argv: Sequence[str],
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        death_signal: int = signal.SIGKILL,
    ) -> Proc:
        """Start ``argv`` in a new session (its own process group); output to a log file.
        ``death_signal``: what it gets when the bench dies (see the module doc).

        A log file, not a pipe: a pipe nobody reads would fill up and block the child.
        """
        if name in self.running:
            raise RuntimeError(f"{name} is already running")
        log_path = self.log_dir / f"{name}.log"
        with open(log_path, "wb") as log:
            popen = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=env,
                cwd=cwd,
                preexec_fn=partial(die_with_parent, death_signal),
            )
        proc = self.running[name] = Proc(name, popen, log_path)
        return proc

    def stop(self, name: str, timeout: float = 10.0) -> None:
        """SIGTERM the process group of ``name``; SIGKILL it if still there after ``timeout``."""
        proc = self.running.pop(name, None)
        if proc is None:
            return
        _signal_group(proc.popen, signal.SIGTERM)
        try:
            proc.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            _signal_group(proc.popen, signal.SIGKILL)
            proc.popen.wait(5)
        # Whatever the leader left in its group (nginx workers) goes too.
        _signal_group(proc.popen, signal.SIGKILL)

    def close(self) -> None:
        """Stop every running child (in reverse start order)."""
        for name in reversed(list(self.running)):
            with contextlib.suppress(Exception):
                self.stop(name)


def _signal_group(popen: subprocess.Popen[bytes], sig: int) -> None:
    # The child is the leader of its own session, so its pgid is its pid: only processes
    # this bench started are signalled.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(popen.pid, sig)


def free_port() -> int:
    """A port that was free on 127.0.0.1 a moment ago (for servers that cannot report one)."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def wait_for_port(proc: Proc, port: int, host: str = HOST, timeout: float = 20.0) -> None:
    """Wait until ``host:port`` accepts connections; raise if ``proc`` dies or time runs out."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        proc.check_alive()
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=1):
            return
        time.sleep(0.05)
    raise RuntimeError(f"{proc.name}: port {port} not accepting after {timeout:g}s")


def rss_kib(pid: int, field: str = "VmRSS") -> int:
    """A memory figure of ``pid`` from /proc/PID/status (VmRSS, VmHWM), in KiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/{pid}/status")
