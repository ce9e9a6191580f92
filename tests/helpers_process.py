"""Run ``snapshot-tracker serve`` as a real subprocess, the way an operator or systemd does."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Callable, Sequence

import trio
from helpers_ports import assert_free_ports

ADDRESS_RE = re.compile(rb"addresses\W{1,4}(http://[0-9.:]+)(?:,(http://[0-9.:]+))?")


class Serve:
    """A running ``serve`` process; ``base`` and ``internal`` are its listeners' URLs."""

    def __init__(self, proc: trio.Process, log_path: str, base: str, internal: str | None):
        self.proc = proc
        self.log_path = log_path
        self.base = base
        self.internal = internal

    @property
    def log(self) -> str:
        """Everything the process wrote to stderr so far."""
        with open(self.log_path, "rb") as f:
            return f.read().decode(errors="replace")

    def kill(self) -> None:
        """Kill the process if it still runs, and reap it (test teardown: a process left
        unreaped warns when collected, in whichever later test of the worker that is). Also
        outside a trio run (the leftover teardown, once a test's run ended: a test that failed
        or skipped half-way): trio's process closes its pidfd through the running loop, so
        there it is reaped in a run of its own."""
        try:
            trio.lowlevel.current_task()
        except RuntimeError:
            trio.run(self._kill_and_reap)
            return
        if self.proc.poll() is None:
            self.proc.kill()
        with contextlib.suppress(ChildProcessError):
            os.waitid(os.P_PID, self.proc.pid, os.WEXITED | os.WNOWAIT)  # ended, not reaped
        self.proc.poll()  # reaped by its own Popen, which keeps its exit code

    def discard(self) -> None:
        """Remove the stderr file (test teardown: nothing of a test left in /tmp)."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.log_path)

    def log_tail(self, lines: int = 200) -> str:
        """The last ``lines`` lines of stderr (a failed test's report)."""
        try:
            return "\n".join(self.log.splitlines()[-lines:])
        except FileNotFoundError:
            return "(no stderr file)"

    async def _kill_and_reap(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        with trio.fail_after(20):
            await self.proc.wait()

    async def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        """Send ``sig`` and wait for the exit code."""
        self.proc.send_signal(sig)
        with trio.fail_after(timeout):
            return await self.proc.wait()


async def reap(process: trio.Process) -> None:
    """Kill ``process`` if it still runs and wait for it, also while the test is being
    cancelled; a process not gone 20 s after SIGKILL fails the test rather than stay."""
    if process.poll() is None:
        process.kill()
    with trio.CancelScope(shield=True, deadline=trio.current_time() + 20) as scope:
        await process.wait()
    if scope.cancelled_caught:
        raise AssertionError(f"process {process.pid} not reaped 20 s after SIGKILL")


#: The environment that makes a Python child dump every thread's stack on SIGABRT
#: (:func:`ended_or_explained`).
DUMPS_STACKS = {"PYTHONFAULTHANDLER": "1"}


def signal_state(pid: int) -> str:
    """The state and signal masks of process ``pid`` (``/proc/PID/status``): what a child
    that does not end on a signal shows of why (pending, blocked, ignored, caught)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            lines = f.read().splitlines()
    except OSError as exc:
        return f"(no status: {exc})"
    keep = ("State", "Threads", "SigQ", "SigPnd", "ShdPnd", "SigBlk", "SigIgn", "SigCgt")
    return "; ".join(line.replace("\t", " ") for line in lines if line.startswith(keep))


async def ended_or_explained(process: trio.Process, seconds: float, stderr: str) -> int:
    """``process``'s exit code once it ended within ``seconds``; else AssertionError with
    its signal state and its stacks (SIGABRT: a child started with :data:`DUMPS_STACKS`
    writes them to its stderr, the file ``stderr``), then the process reaped."""
    with trio.move_on_after(seconds):
        return await process.wait()
    state = signal_state(process.pid)
    process.send_signal(signal.SIGABRT)
    with trio.move_on_after(10):
        await process.wait()
    await reap(process)
    said = (await trio.Path(stderr).read_bytes()).decode(errors="replace")
    raise AssertionError(f"not ended in {seconds} s: {state}\n{said}")


@contextlib.asynccontextmanager
async def reaped(process: trio.Process) -> AsyncIterator[trio.Process]:
    """``process``, killed (if it still runs) and reaped however the block ends."""
    try:
        yield process
    finally:
        await reap(process)


#: Every ``serve`` a test started; the test's teardown kills what still runs, reaps it and
#: removes its stderr file (tests/conftest.py), a failed test's report shows that stderr.
RUNNING: list[Serve] = []


async def start_serve(
    *args: str,
    env: dict[str, str] | None = None,
    prefix: Sequence[str] = (),
    knock: tuple[str, int] | None = None,
    preexec_fn: Callable[[], object] | None = None,
) -> Serve:
    """Start ``serve`` with ``args``; returns once it logged its listening addresses.

    ``knock``: an address to connect to once first (``systemd-socket-activate`` starts the
    program when the first connection arrives). ``preexec_fn`` runs in the child before the
    program (e.g. ``resource.setrlimit``).

    stderr goes to a file, not a pipe: a pipe nobody reads would fill up and block the
    daemon's logging.
    """
    if "--config" in args[:-1]:
        assert_free_ports(args[args.index("--config") + 1], args)
    command = [*prefix, sys.executable, "-m", "tracker", "serve", *args]
    log = tempfile.NamedTemporaryFile(prefix="tracker-log-", delete=False)  # noqa: SIM115
    proc = await trio.lowlevel.open_process(
        command, stderr=log, stdout=subprocess.DEVNULL, env=env, preexec_fn=preexec_fn
    )
    log.close()
    serve = Serve(proc, log.name, "", None)
    RUNNING.append(serve)
    if knock is not None:
        await _knock(*knock)
    with trio.fail_after(20):
        while not (m := ADDRESS_RE.search(serve.log.encode())):
            assert proc.poll() is None, serve.log
            await trio.sleep(0.02)
    serve.base, serve.internal = m[1].decode(), m[2].decode() if m[2] else None
    return serve


async def _knock(host: str, port: int) -> None:
    """Connect once to ``host:port``, retrying while nothing listens there yet."""
    with trio.fail_after(10):
        while True:
            try:
                stream = await trio.open_tcp_stream(host, port)
            except OSError:
                await trio.sleep(0.05)
                continue
            await stream.aclose()
            return


#: A child holding a cache directory's lock (``sys.argv[1]``, as a tracker holds it: a POSIX
#: record lock) until its stdin closes; it says ``held`` once it does.
LOCK_HOLDER = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o644)
fcntl.lockf(fd, fcntl.LOCK_EX)
print("held", flush=True)
sys.stdin.read()
"""
