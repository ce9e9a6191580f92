"""SIGINT and SIGTERM end ``fetch`` and ``verify`` with one line and exit 128 + the signal
(README.md#command-line), never a traceback; an interrupted fetch keeps its state and a rerun
resumes. Real subprocesses, waited on through their files and pipes. (``check-config`` has
the same handler, and nothing it reads waits: a FIFO for a config is refused at once,
tests/unit/test_exhaustion_unit.py.)"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path

import attrs
import pytest
import trio
from archives import build_archive, many_accounts_archive
from helpers_bytes import MiB, archive_bytes, sha256
from helpers_process import DUMPS_STACKS, ended_or_explained, reap, reaped
from helpers_proxy import wait_for
from helpers_upstream import Behaviour, FakeUpstream, serving
from test_fetch import (
    FULL,
    advertise_all,
    fetch_command,
    ledger_of,
    requested,
    run_cli,
    saved_ranges,
    tracker_for,
)
from test_fetch_sources import tracker_of

SIGNALS = [(signal.SIGINT, 130), (signal.SIGTERM, 143)]
#: SIGHUP too (a closed terminal, a session's end): it killed them with no line at all.
ENDING = [*SIGNALS, (signal.SIGHUP, 129)]


def as_a_terminal_starts_it() -> None:
    """In the child before it runs: SIGINT, SIGTERM and SIGHUP at their defaults, as a shell
    starts a command in the foreground. A suite started in the background (``pytest &`` from
    a script) passes SIGINT on ignored, one under ``nohup`` SIGHUP, and a command then
    rightly keeps ignoring them."""
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_DFL)


@attrs.frozen
class Fetching:
    """A ``fetch`` subprocess downloading ``data`` from ``up`` (4 MiB/s) through tracker ``t``."""

    process: trio.Process
    up: FakeUpstream
    data: bytes
    ledger: Path
    state: Path
    errors: Path
    base: str


@asynccontextmanager
async def fetching(
    tmp_path: Path, seed: int, preexec_fn: Callable[[], None]
) -> AsyncIterator[Fetching]:
    """Start ``fetch`` of a 32 MiB full with ``preexec_fn`` run in the child; reaped on exit."""
    data = archive_bytes(32 * MiB, seed=seed)
    up = FakeUpstream(files={FULL: data}, behaviour={FULL: Behaviour(rate=4 * MiB)})
    ledger = ledger_of(tmp_path)
    errors = tmp_path / "stderr"
    async with serving(up), tracker_for("redirect", tmp_path) as t:
        advertise_all(t, up, {FULL: data})
        with errors.open("wb") as sink:
            process = await trio.lowlevel.open_process(
                fetch_command(ledger, t.base, "--progress", "none"),
                stdout=subprocess.DEVNULL,
                stderr=sink,
                preexec_fn=preexec_fn,
            )
        state = ledger / f".tmp-{FULL}.state"
        try:
            yield Fetching(process, up, data, ledger, state, errors, t.base)
        finally:
            await reap(process)


def saved_bytes(state: Path) -> int:
    try:
        return sum(e - s for s, e in json.loads(state.read_text())["done"])
    except (OSError, ValueError):
        return 0


async def saved_at_least(f: Fetching, count: int, timeout: float = 60) -> None:
    """Wait until the fetch's state says ``count`` bytes are saved; on a timeout, fail with
    what the fetch and its upstream did meanwhile (a fetch that stalls says why)."""
    try:
        await wait_for(lambda: saved_bytes(f.state) >= count, timeout=timeout)
    except trio.TooSlowError:
        raise AssertionError(
            f"{saved_bytes(f.state)} bytes saved in {timeout} s, process "
            f"{f.process.poll()}, {len(f.up.gets(FULL))} requests upstream; stderr: "
            f"{f.errors.read_text()[-3000:]!r}"
        ) from None


def one_line(stderr: str, marker: str) -> str:
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if marker in line]
    assert len(lines) == 1, stderr
    return lines[0]


@pytest.mark.parametrize(("signum", "code"), ENDING)
async def test_a_signal_ends_fetch_with_one_line_and_a_rerun_resumes(
    tmp_path: Path, signum: int, code: int
) -> None:
    async with fetching(tmp_path, 71, as_a_terminal_starts_it) as f:
        await saved_at_least(f, 4 * MiB)
        f.process.send_signal(signum)
        with trio.fail_after(15):
            returncode = await f.process.wait()
        saved = saved_ranges(f.state)
        before = len(f.up.gets(FULL))
        f.up.behaviour[FULL] = Behaviour()
        rerun = await run_cli(*fetch_command(f.ledger, f.base, "--progress", "none"))
    assert returncode == code
    line = one_line(f.errors.read_text(), "interrupted")
    kept = sum(e - s for s, e in saved)
    assert f"interrupted; {kept} of {len(f.data)} bytes kept, run again to resume" in line
    assert kept >= 4 * MiB
    assert rerun.returncode == 0, rerun.stderr
    assert sha256((f.ledger / FULL).read_bytes()) == sha256(f.data)
    for seen in f.up.gets(FULL)[before:]:  # the rerun asked only for what was missing
        if seen.headers["range"] != "bytes=0-0":
            start, end = requested(seen.headers["range"], len(f.data))
            assert all(end <= s or e <= start for s, e in saved), (start, end, saved)


def sigint_ignored() -> None:
    """In the child: SIGINT ignored, as a script starts a background job."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def hangup_ignored() -> None:
    """In the child: SIGHUP ignored, as ``nohup`` starts a command; SIGTERM at its default."""
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


@pytest.mark.parametrize(
    ("signum", "started"), [(signal.SIGINT, sigint_ignored), (signal.SIGHUP, hangup_ignored)]
)
async def test_fetch_started_with_a_signal_ignored_keeps_ignoring_it(
    tmp_path: Path, signum: int, started: Callable[[], None]
) -> None:
    """A background job of a script: Ctrl-C in the terminal is for the script; under
    ``nohup`` a closed terminal is not for the fetch either (its SIGHUP ended it). SIGTERM
    still ends the fetch with its one line."""
    async with fetching(tmp_path, 72, started) as f:
        await saved_at_least(f, 4 * MiB)
        f.process.send_signal(signum)
        # Still fetching after it: more bytes saved, or the process ended (a failure).
        more = saved_bytes(f.state) + 4 * MiB
        await wait_for(
            lambda: f.process.poll() is not None or saved_bytes(f.state) >= more, timeout=60
        )
        assert f.process.returncode is None, f.errors.read_text()
        f.process.send_signal(signal.SIGTERM)
        with trio.fail_after(15):
            returncode = await f.process.wait()
    assert returncode == 143
    assert "interrupted; " in one_line(f.errors.read_text(), "interrupted")


@pytest.mark.parametrize(("signum", "code"), ENDING)
async def test_a_signal_ends_verify_with_one_line(tmp_path: Path, signum: int, code: int) -> None:
    """Many files to check; the signal comes after the first ``ok`` line (the process
    cannot end before: its stdout pipe fills while the test reads no more)."""
    name, good = build_archive(34_000, compression="zst")
    archive = tmp_path / name
    archive.write_bytes(good)
    errors = tmp_path / "stderr"
    command = [sys.executable, "-m", "tracker", "verify", *[str(archive)] * 3000]
    with errors.open("wb") as sink:
        process = await trio.lowlevel.open_process(
            command, stdout=subprocess.PIPE, stderr=sink, preexec_fn=as_a_terminal_starts_it
        )
    assert process.stdout is not None
    try:
        with trio.fail_after(30):
            first = await process.stdout.receive_some(100)
            assert first.startswith(b"ok ")
            process.send_signal(signum)
            while await process.stdout.receive_some(65536):
                pass
            returncode = await process.wait()
    finally:
        await reap(process)
    assert returncode == code
    assert one_line(errors.read_text(), "interrupted") == "snapshot-tracker: interrupted"


async def test_verify_under_nohup_keeps_ignoring_sighup(tmp_path: Path) -> None:
    """``nohup snapshot-tracker verify ...``: a SIGHUP (the terminal closed) is for the
    terminal's jobs, not for this one; SIGTERM still ends it with its one line. The
    handlers took SIGHUP over whatever it came as."""
    name, good = build_archive(34_001, compression="zst")
    archive = tmp_path / name
    archive.write_bytes(good)
    errors = tmp_path / "stderr"
    command = [*ENTRIES["module"], "verify", *[str(archive)] * 3000]
    with errors.open("wb") as sink:
        process = await trio.lowlevel.open_process(
            command, stdout=subprocess.PIPE, stderr=sink, preexec_fn=hangup_ignored
        )
    assert process.stdout is not None
    async with reaped(process):
        with trio.fail_after(60):
            first = await process.stdout.receive_some(100)
            assert first.startswith(b"ok ")
            process.send_signal(signal.SIGHUP)
            # still checking after it: more lines come (the pipe was full: it waited on us)
            more = b""
            while more.count(b"\n") < 200 and process.poll() is None:
                more += await process.stdout.receive_some(65536)
            assert process.poll() is None, errors.read_text()
            process.send_signal(signal.SIGTERM)
            while await process.stdout.receive_some(65536):
                pass
            returncode = await process.wait()
    assert returncode == 143, errors.read_text()
    assert one_line(errors.read_text(), "interrupted") == "snapshot-tracker: interrupted"


@pytest.fixture(scope="module")
def big_full(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A full of 200,000 accounts (~21 MB): its accounts proof within 4 MiB spills for
    seconds."""
    name, data = many_accounts_archive(7_000, 200_000, seed=5)
    path = tmp_path_factory.mktemp("big") / name
    path.write_bytes(data)
    return path


def spilled(directory: Path) -> int:
    """Bytes the proof's files under ``directory`` hold now (files come and go meanwhile)."""
    total = 0
    for path in directory.rglob("*"):
        with contextlib.suppress(OSError):
            total += path.stat().st_size if path.is_file() else 0
    return total


def _mid_proof(process: trio.Process, spill: Path, at: int) -> bool:
    """True once ``process`` ended, or its proof spilled ``at`` bytes to ``spill``."""
    return process.poll() is not None or (any(spill.iterdir()) and spilled(spill) >= at)


#: When each try signals: once the proof's first file is there, once it spilled 1 MiB, 4 MiB.
SPILLED = [0, 1 * MiB, 4 * MiB]


@pytest.mark.parametrize("to_the_group", [False, True], ids=["to-verify", "to-its-group"])
@pytest.mark.parametrize(("signum", "code"), SIGNALS)
async def test_a_signal_during_the_accounts_proof_is_an_interruption_never_a_verdict(
    tmp_path: Path, big_full: Path, signum: int, code: int, to_the_group: bool
) -> None:
    """A good full's ``verify`` signalled while its accounts proof runs (its index spilling
    to the temporary directory, the event waited on), at three points of the proof, the
    signal sent to ``verify`` alone or to its process group as a terminal's Ctrl-C is: exit
    128 + the signal, the one line, nothing on stdout (never ``bad``), no file left."""
    for attempt, spill_at in enumerate(SPILLED):
        spill = tmp_path / f"spill-{attempt}"
        spill.mkdir()
        errors = tmp_path / f"stderr-{attempt}"
        command = [
            *(sys.executable, "-m", "tracker", "verify", "--prove-accounts-memory", "4MiB"),
            *("--prove-accounts-temp-dir", str(spill), str(big_full)),
        ]
        with errors.open("wb") as sink:
            process = await trio.lowlevel.open_process(
                command,
                stdout=subprocess.PIPE,
                stderr=sink,
                preexec_fn=as_a_terminal_starts_it,
                start_new_session=to_the_group,
            )
        assert process.stdout is not None
        out = b""
        try:
            with trio.fail_after(120):
                await wait_for(
                    partial(_mid_proof, process, spill, spill_at),
                    timeout=120,
                )
                assert process.returncode is None, (attempt, errors.read_text())
                if to_the_group:
                    os.killpg(process.pid, signum)
                else:
                    process.send_signal(signum)
                while piece := await process.stdout.receive_some(65536):
                    out += piece
                returncode = await process.wait()
        finally:
            await reap(process)
        assert (attempt, returncode, out) == (attempt, code, b"")
        line = one_line(errors.read_text(), "interrupted")
        assert line == "snapshot-tracker: interrupted"
        assert list(spill.iterdir()) == []


#: What a hashing process of the accounts proof runs (docs/architecture.md, "Every core").
HASHWORKER = "tracker.proof.accounts.hashworker"


def hashing_processes(pid: int) -> list[int]:
    """The children of ``pid`` that run the accounts proof's hashing (from /proc)."""
    found = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError):
            for child in map(int, Path(f"/proc/{pid}/task/{task}/children").read_text().split()):
                with contextlib.suppress(OSError):
                    if HASHWORKER.encode() in Path(f"/proc/{child}/cmdline").read_bytes():
                        found.append(child)
    return found


def still_there(pid: int) -> bool:
    """True while ``pid`` is a hashing process (alive, stopped, or not reaped yet)."""
    try:
        return HASHWORKER.encode() in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


@pytest.mark.parametrize(("signum", "code"), SIGNALS)
async def test_a_signal_while_fetchs_proof_runs_with_a_hung_hashing_process_leaves_nothing(
    tmp_path: Path, big_full: Path, signum: int, code: int
) -> None:
    """``fetch`` of a good full whose accounts proof's hashing process hangs (stopped, as a
    frozen or thrashing one is) is signalled once every byte is on disk, its proof running.
    It exited at once, its check's thread cut off by the exit mid-proof: the stopped child
    stayed behind for good (an orphan), or the proof's spill directory. It ends with the one
    line and exit 128 + the signal once the check stopped: the child killed and reaped, no
    file of the proof left (the proof's own wait on a hung child: test_hashworker.py)."""
    name, data = big_full.name, await trio.Path(big_full).read_bytes()
    up = FakeUpstream(files={name: data}, behaviour={name: Behaviour(rate=8 * MiB)})
    spill = tmp_path / "spill"
    spill.mkdir()
    ledger = ledger_of(tmp_path)
    state = ledger / f".tmp-{name}.state"
    errors = tmp_path / "stderr"
    hung: list[int] = []
    async with tracker_of([up]) as tracker:
        command = fetch_command(ledger, tracker.base, "--progress", "none", "--verify=true")
        command += ["--prove-accounts-memory", "4MiB", "--prove-accounts-temp-dir", str(spill)]
        with errors.open("wb") as sink:
            process = await trio.lowlevel.open_process(
                command, stdout=subprocess.DEVNULL, stderr=sink, preexec_fn=as_a_terminal_starts_it
            )
        try:
            # the child starts with the proof's first storages, while the download runs
            await wait_for(
                lambda: process.poll() is not None or bool(hashing_processes(process.pid)), 60
            )
            hung += hashing_processes(process.pid)
            assert hung, errors.read_text()
            os.kill(hung[0], signal.SIGSTOP)
            await wait_for(
                lambda: process.poll() is not None or saved_bytes(state) >= len(data), 60
            )
            assert process.returncode is None, errors.read_text()
            process.send_signal(signum)
            with trio.fail_after(60):
                returncode = await process.wait()
        finally:
            await reap(process)
            for pid in hung:  # however the test ends, none is left stopped
                if still_there(pid):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
    assert returncode == code
    assert "interrupted" in one_line(errors.read_text(), "interrupted")
    assert [pid for pid in hung if still_there(pid)] == []
    assert list(spill.iterdir()) == []


#: A module put before the real one on the child's path: it says so on the pipe ``HOLD_FD``
#: names, waits for a line on stdin (the test sends its signal first), then loads the real
#: module in its place. It holds the child at the moment that module is first imported.
HOLDER = """\
import importlib, os, sys
_here = os.path.dirname(os.path.abspath(__file__))
os.write(int(os.environ["HOLD_FD"]), b"held\\n")
sys.stdin.buffer.readline()
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _here]
del sys.modules[__name__]
sys.modules[__name__] = importlib.import_module(__name__)
"""


@attrs.frozen
class Held:
    """A child held at the first import of a module (:data:`HOLDER`)."""

    process: trio.Process
    errors: Path

    async def release(self) -> None:
        """Let the child go on past the held import."""
        assert self.process.stdin is not None
        await self.process.stdin.send_all(b"go\n")

    async def ended(self, seconds: float = 30) -> int:
        """The exit code, once the child ended (AssertionError with its signal state and
        stacks when it did not within ``seconds``)."""
        return await ended_or_explained(self.process, seconds, str(self.errors))


@asynccontextmanager
async def held_at(tmp_path: Path, module: str, command: list[str]) -> AsyncIterator[Held]:
    """Start ``command`` and return once it is held at its first import of ``module``;
    reaped however the block ends."""
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / f"{module}.py").write_text(HOLDER)
    read, write = os.pipe()
    env = {
        **os.environ,
        **DUMPS_STACKS,
        "PYTHONPATH": f"{shim}{os.pathsep}{Path.cwd()}",
        "HOLD_FD": str(write),
    }
    errors = tmp_path / "stderr"
    try:
        with errors.open("wb") as sink:
            process = await trio.lowlevel.open_process(
                command,
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=sink,
                env=env,
                pass_fds=(write,),
                preexec_fn=as_a_terminal_starts_it,
            )
        os.close(write)
        write = -1
        async with reaped(process):
            with trio.fail_after(30):
                said = await trio.to_thread.run_sync(os.read, read, 5, abandon_on_cancel=True)
            assert said == b"held\n", errors.read_text()
            yield Held(process, errors)
    finally:
        os.close(read)
        if write >= 0:
            os.close(write)


#: The program's two entry points: the installed script and ``python -m tracker``.
ENTRIES = {
    "script": [str(Path(sys.executable).parent / "snapshot-tracker")],
    "module": [sys.executable, "-m", "tracker"],
}


@pytest.mark.parametrize("entry", ENTRIES)
@pytest.mark.parametrize(("signum", "code"), ENDING)
async def test_a_signal_while_the_command_line_loads_is_one_line(
    tmp_path: Path, entry: str, signum: int, code: int
) -> None:
    """Held while ``tracker.cli`` imports its first libraries (``difflib``): the signal
    ends the command as one while it runs does. The handlers were installed only once
    the command line had loaded: SIGTERM and SIGHUP killed it with no line, SIGINT printed
    a KeyboardInterrupt traceback."""
    async with held_at(tmp_path, "difflib", [*ENTRIES[entry], "--version"]) as held:
        held.process.send_signal(signum)
        returncode = await held.ended()
    assert returncode == code, held.errors.read_text()
    assert held.errors.read_text() == "snapshot-tracker: interrupted\n"


def serve_config(tmp_path: Path) -> Path:
    """A daemon on 127.0.0.1 (ports the kernel picks) over an empty ledger directory."""
    (tmp_path / "ledger").mkdir()
    path = tmp_path / "config.yml"
    path.write_text(
        json.dumps(
            {
                "listen": "127.0.0.1:0",
                "internal_listen": "127.0.0.1:0",
                "target_groups": [{"group": "g", "local_targets": {"paths": ["ledger"]}}],
            }
        )
    )
    return path


def serve_command(tmp_path: Path) -> list[str]:
    return [*ENTRIES["module"], "serve", "--config", str(serve_config(tmp_path))]


async def test_sigterm_while_serve_loads_ends_it_with_one_line(tmp_path: Path) -> None:
    """Held while the daemon's libraries load (``quart_trio``, before its event loop):
    nothing is started yet, so SIGTERM ends it as interrupted. It was killed silently (the
    handlers were back at their defaults until the daemon's own receiver)."""
    async with held_at(tmp_path, "quart_trio", serve_command(tmp_path)) as held:
        held.process.send_signal(signal.SIGTERM)
        returncode = await held.ended()
    assert returncode == 143, held.errors.read_text()
    assert one_line(held.errors.read_text(), "interrupted") == "snapshot-tracker: interrupted"


@pytest.mark.parametrize(
    ("loading", "then"),
    [
        # the daemon's libraries, after the config was read: held, its first reload (the
        # file may have changed since it was read); it was killed silently
        ("quart_trio", "config_reloaded"),
        # the command line's first libraries, before the config is read: a reload of a file
        # not read yet changes nothing; it ended ``serve`` as interrupted (exit 129)
        ("difflib", "listening"),
    ],
)
async def test_sighup_while_serve_loads_is_no_end(tmp_path: Path, loading: str, then: str) -> None:
    """A SIGHUP while ``serve`` loads never ends it: the daemon runs on (``then`` in its
    log), and stops on SIGTERM."""
    async with held_at(tmp_path, loading, serve_command(tmp_path)) as held:
        held.process.send_signal(signal.SIGHUP)
        await held.release()
        log = held.errors

        def said(event: str) -> bool:
            return held.process.poll() is not None or event in log.read_text()

        await wait_for(lambda: said(then), timeout=30)
        assert held.process.poll() is None, log.read_text()
        assert "listening" in log.read_text()
        held.process.send_signal(signal.SIGTERM)
        returncode = await held.ended()
    assert returncode == 0, log.read_text()
    text = log.read_text()
    assert "Traceback" not in text and "interrupted" not in text and "stopped" in text
