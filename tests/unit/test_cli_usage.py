"""Usage errors a newcomer meets on ``fetch`` (issue 47, points 4 and 6; README.md#command-line):
each is one line naming the subcommand and the fix, exit 2, before anything runs."""

from __future__ import annotations

import contextlib
import errno
import io
import os
import signal
import sys
from pathlib import Path
from typing import Any

import pytest

import tracker.cli as cli_module
from tracker.cli import build_parser, main
from tracker.fetch.progress import BarProgress, NoProgress, progress_for
from tracker.fetch.run import proven_text
from tracker.proof.accounts.budget import beyond_the_machine
from tracker.proof.levels import Level, Proof

KEY = "4Nd1mBQtrMJVYVfKf2PJy9NZUZdTAsp7D4xWLs4gDB4T"
FETCH = ["fetch", "--ledger", "l", "--tracker", "http://127.0.0.1:8458"]


MiB = 1024 * 1024


def usage_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """The stderr of ``argv``, which must exit 2."""
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    return capsys.readouterr().err


def test_trust_min_above_the_keys_is_one_line_of_fetchs(capsys: pytest.CaptureFixture[str]) -> None:
    err = usage_error([*FETCH, "--trust-key", KEY, "--trust-min", "2"], capsys)
    assert len(err.splitlines()) == 1, err  # one line, no usage block
    assert err.splitlines()[-1] == (
        "snapshot-tracker fetch: error: --trust-min 2 needs as many distinct --trust-key, 1 given"
    )


@pytest.mark.parametrize("flag", ["--tracker", "--source"])
def test_a_url_without_a_scheme_gets_the_fix(flag: str, capsys: pytest.CaptureFixture[str]) -> None:
    err = usage_error(["fetch", "--ledger", "l", flag, "127.0.0.1:8458"], capsys)
    assert len(err.splitlines()) == 1, err  # one line, no usage block
    assert err.splitlines()[-1].endswith(
        f"argument {flag}: '127.0.0.1:8458' has no scheme: did you mean http://127.0.0.1:8458?"
    )


@pytest.mark.parametrize(
    ("given", "fix"),
    [
        ("::1:8458", "did you mean http://[::1]:8458?"),
        ("2001:db8::3:8899/v1", "did you mean http://[2001:db8::3]:8899/v1?"),
        ("http://::1:8458", "an IPv6 address needs brackets: http://[::1]:8458"),
    ],
)
def test_an_unbracketed_ipv6_url_gets_the_bracketed_fix(
    given: str, fix: str, capsys: pytest.CaptureFixture[str]
) -> None:
    err = usage_error(["fetch", "--ledger", "l", "--tracker", given], capsys)
    assert fix in err.splitlines()[-1], err
    assert "port must be" not in err


@pytest.mark.parametrize(
    ("flag", "given", "shown"),
    [
        ("--tracker", "user:s3cretPW@127.0.0.1:8458", "did you mean http://***@127.0.0.1:8458?"),
        ("--tracker", "http://user:s3cretPW@127.0.0.1:8458/v1", "http://***@127.0.0.1:8458?"),
        ("--tracker", "ftp://user:s3cretPW@127.0.0.1:8458", "got 'ftp://***@127.0.0.1:8458'"),
        ("--source", "user:s3cretPW@127.0.0.1:8899", "did you mean http://***@127.0.0.1:8899?"),
        ("--rpc", "user:s3cretPW@127.0.0.1:8899", "did you mean http://***@127.0.0.1:8899?"),
    ],
)
def test_a_typed_password_is_masked_in_a_usage_error(
    flag: str, given: str, shown: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A URL refused as a flag's value was echoed whole, its password with it, into the
    journal or a CI log; the URL checks' own answers already masked it."""
    err = usage_error([*FETCH, flag, given], capsys)
    assert len(err.splitlines()) == 1, err
    assert "s3cretPW" not in err and shown in err, err


@pytest.mark.parametrize("flag", ["--source", "--rpc"])
def test_an_empty_url_of_a_repeatable_flag_is_a_usage_error(
    flag: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # `--source=` (a variable that was not set) was taken as a source: the run failed
    # later, "no source answered: : target is not an absolute http(s) URL", exit 1.
    err = usage_error([*FETCH, f"{flag}="], capsys)
    assert len(err.splitlines()) == 1, err
    assert err.splitlines()[-1].endswith(
        f"argument {flag}: empty: expected an http:// or https:// URL"
    )


@pytest.mark.parametrize(
    ("url", "taken"),
    [
        ("http://127.0.0.1:8458", True),
        ("HTTPS://tracker:8458/x", True),
        ("ftp://tracker", False),
        ("http://", False),
        # taken, then "unexpected error: ValueError: Port out of range" and exit 1
        ("http://127.0.0.1:99999", False),
        ("http://127.0.0.1:-1", False),
        ("http://[zz]:1", False),
        ("http://127.0.0.1:1/\udcff", False),  # a byte of argv that is no UTF-8
    ],
)
def test_only_http_urls_are_taken(
    url: str, taken: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    if taken:
        args = build_parser().parse_args(["fetch", "--ledger", "l", "--tracker", url])
        assert args.tracker == url
        return
    err = usage_error(["fetch", "--ledger", "l", "--tracker", url], capsys)
    assert f"expected an http:// or https:// URL, got {url!r}" in err or (
        f"not an absolute http(s) URL: {url!r}" in err
        or f"port must be a number from 1 to 65535: {url!r}" in err
    )


@pytest.mark.parametrize("group", ["\udcff", "a/b", ".hidden", "x" * 129])
def test_a_group_no_tracker_has_is_a_usage_error(
    group: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--group`` with a name no group can have (a byte of argv that is no UTF-8 among
    them) ended as "unexpected error", exit 1, once the tracker was asked."""
    err = usage_error(
        ["fetch", "--ledger", "l", "--tracker", "http://t:1", "--group", group], capsys
    )
    assert "argument --group: group name must" in err.splitlines()[-1]


def test_verify_refuses_a_trust_min_its_keys_cannot_meet_before_any_check(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``verify --trust-min 2`` with one key checked every archive (minutes for a mainnet
    full) and then failed each without saying why; ``fetch`` refused it at once. So does
    ``verify`` now: one line, exit 2, nothing read."""
    archive = tmp_path / "snapshot-100-11111111111111111111111111111111.tar.zst"
    archive.write_bytes(b"not read")
    assert main(["verify", "--trust-key", KEY, "--trust-min", "2", str(archive)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err == (
        "snapshot-tracker verify: --trust-min 2 needs as many distinct --trust-key, 1 given\n"
    )


def test_a_bad_duration_names_every_unit_the_parser_takes(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The docs write ``7d`` (``--valid-for``'s default): the parser takes it, and the
    error for a bad duration says so."""
    parsed = build_parser().parse_args(["attest", "f", "--key", "k", "--valid-for", "7d"])
    assert parsed.valid_for == 7 * 24 * 3600
    err = usage_error(["attest", "f", "--key", "k", "--valid-for", "7x"], capsys)
    assert "'500ms', '15s', '1m30s' or '7d'" in err


@pytest.mark.parametrize(
    ("value", "said"),
    [
        (
            "59s",
            "must be from 1m to 366d, got '59s'",
        ),  # expired before it is read (was 3.16224e+07s)
        ("500ms", "must be from 1m"),  # was signed, already expired (a whole second)
        ("367d", "must be from 1m to 366d"),  # past the 20 digits a reader takes: unreadable
        ("1" + "0" * 400 + "h", "longer than Go's longest"),  # was an OverflowError traceback
    ],
)
def test_valid_for_takes_the_configs_range(
    value: str, said: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """``attest --valid-for`` had no bounds but > 0: a statement signed and already
    expired, or one whose ``expires`` no reader takes, each with exit 0; a huge one a
    traceback. The config's range, ``attest.valid_for``'s, applies (exit 2)."""
    err = usage_error(["attest", "f", "--key", "k", "--valid-for", value], capsys)
    assert said in err.splitlines()[-1]


def test_require_cluster_without_rpc_is_refused_before_any_download(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Without ``--rpc`` nothing could reach ``cluster``: refused at once (this layer has
    no network at all: a request would fail the test), not after a whole download."""
    err = usage_error([*FETCH, "--require", "cluster"], capsys)
    assert len(err.splitlines()) == 1, err  # one line, no usage block
    assert err.splitlines()[-1] == (
        "snapshot-tracker fetch: error: --require cluster needs --rpc URL: the cluster's votes "
        "are asked of an RPC"
    )


@pytest.mark.parametrize(
    ("flags", "refused"),
    [
        (["--require", "cluster", "--rpc", "http://127.0.0.1:8899"], ""),
        (["--rpc", "http://127.0.0.1:8899"], ""),
        (["--rpc", "http://a", "--rpc", "http://b", "--require", "cluster"], ""),
        (["--rpc", "http://a", "--verify=false"], "--rpc needs --verify true"),
        (
            ["--require", "cluster", "--rpc", "http://a", "--prove-accounts=false"],
            "--require cluster needs --verify and --prove-accounts true",
        ),
        # Unchecked nothing is proven: the level was never asked (whatever came, went in)
        (["--require", "manifest", "--verify=false"], "--require manifest needs --verify true"),
        (
            ["--require", "accounts", "--full=false", "--verify=false"],
            "--require accounts needs --verify true",
        ),
        (["--require", "structure", "--verify=false"], ""),
    ],
)
def test_rpc_lifts_the_refusal_of_cluster(flags: list[str], refused: str) -> None:
    from tracker.fetch.flags import unreachable_level

    args = build_parser().parse_args([*FETCH, *flags])
    found = unreachable_level(args)
    assert (refused in found) if refused else found == ""
    assert args.rpc == [f for f in flags if f.startswith("http")]


def test_rpc_without_a_scheme_gets_the_fix(capsys: pytest.CaptureFixture[str]) -> None:
    err = usage_error([*FETCH, "--rpc", "127.0.0.1:8899"], capsys)
    assert "did you mean http://127.0.0.1:8899?" in err


def test_the_help_of_require_says_what_incrementals_and_cluster_get() -> None:
    flat = " ".join(build_parser().commands["fetch"].format_help().split())
    assert "accounts takes incrementals at manifest, the most an incremental can reach" in flat
    assert "cluster needs --rpc" in flat
    assert "--rpc URL a Solana JSON-RPC URL whose votes lift each checked archive" in flat


MANIFEST = Proof(Level.MANIFEST)


@pytest.mark.parametrize(
    ("proof", "is_full", "required", "text"),
    [
        (
            MANIFEST,
            False,
            Level.ACCOUNTS,
            "incremental: proven to manifest, the most an incremental can reach",
        ),
        (MANIFEST, False, Level.MANIFEST, "manifest"),
        (MANIFEST, True, Level.STRUCTURE, "manifest"),
        (Proof(Level.ACCOUNTS), True, Level.ACCOUNTS, "accounts"),
        (Proof(Level.CLUSTER), False, Level.CLUSTER, "cluster"),
        (
            Proof(Level.ACCOUNTS, note="cluster not proven: no answer"),
            True,
            Level.ACCOUNTS,
            "accounts (cluster not proven: no answer)",
        ),
        (None, False, Level.ACCOUNTS, "not verified"),
    ],
)
def test_the_line_of_each_archive_says_how_far_it_is_proven(
    proof: Proof | None, is_full: bool, required: Level, text: str
) -> None:
    assert proven_text(proof, is_full, required) == text


class _FullDisk(io.StringIO):
    """A stderr on a full disk (``2>/dev/full``)."""

    def write(self, text: str) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    def isatty(self) -> bool:
        return True


def test_a_progress_bar_that_cannot_be_drawn_never_ends_the_download(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``fetch --progress bar 2>/dev/full`` failed the fetch with "No space left on device"
    (the ledger's disk was not full), and with stderr closed (``2>&-``) it died of
    ``None.isatty()``: the bar stops, the download goes on."""
    bar = progress_for("bar", _FullDisk())
    assert isinstance(bar, BarProgress)
    bar.start("snapshot-100-x.tar.zst", 10 * MiB, 0)
    for _ in range(3):
        bar.add(MiB)
    bar.finish()
    bar.start("incremental-snapshot-100-200-x.tar.zst", MiB, 0)  # nothing more is tried
    bar.finish()
    monkeypatch.setattr(sys, "stderr", None)
    assert isinstance(progress_for("auto"), NoProgress)


def test_a_proof_budget_beyond_the_machine_is_a_usage_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Taken, it made the proof's first allocation fail: a MemoryError that rejected the
    # archive (fetch deleted a good download).
    err = usage_error(["verify", "--prove-accounts-memory", "100000GiB", "f.tar.zst"], capsys)
    assert len(err.splitlines()) == 1 and "of memory this process may use" in err, err


@pytest.mark.parametrize(
    ("memory", "usable", "fits"),
    [
        (512 * MiB, 1024 * MiB, True),
        (1024 * MiB, 1024 * MiB, True),
        (1025 * MiB, 1024 * MiB, False),
        (10**15, 0, True),
    ],
)
def test_the_proof_budget_fits_the_machine(memory: int, usable: int, fits: bool) -> None:
    assert (beyond_the_machine(memory, usable) == "") == fits


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_an_interrupt_a_library_swallowed_still_ends_the_command_interrupted(
    signum: int, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # numba's object-cache callback and an import lock's __del__ drop the KeyboardInterrupt
    # the handler raises: verify and attest went on and exited 0 (7 runs in 100).
    def swallowing(_argv: object, _watched: object, _stop: object, _received: object) -> int:
        with contextlib.suppress(KeyboardInterrupt):  # as a ctypes callback does
            os.kill(os.getpid(), signum)
        return 0

    monkeypatch.setattr(cli_module, "_run", swallowing)
    # as a terminal starts a command (a suite started in the background has SIGINT ignored,
    # one under nohup SIGHUP, which a command rightly keeps ignoring)
    before = {
        signal.SIGINT: signal.signal(signal.SIGINT, signal.default_int_handler),
        signal.SIGHUP: signal.signal(signal.SIGHUP, signal.SIG_DFL),
    }
    try:
        assert main(["verify", "x"]) == 128 + signum
    finally:
        for each, handler in before.items():
            signal.signal(each, handler)
    assert capsys.readouterr().err == "snapshot-tracker: interrupted\n"


def test_a_signal_the_entry_points_handler_took_is_the_exit_code(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # tracker.launch's handler records into the list it hands over: a SIGTERM it took
    # while the command line took the handlers over exited 130 (each kept its own list)
    received: list[int] = []

    def taken_by_the_launcher(
        _argv: object, _watched: object, _stop: object, _received: object
    ) -> int:
        received.append(signal.SIGTERM)
        raise KeyboardInterrupt

    monkeypatch.setattr(cli_module, "_run", taken_by_the_launcher)
    watchable = (*cli_module.STOPPING, signal.SIGINT)
    original = {signum: signal.getsignal(signum) for signum in watchable}
    try:
        assert main(["verify", "x"], original, received) == 128 + signal.SIGTERM
    finally:
        for signum, handler in original.items():
            signal.signal(signum, handler)
    assert capsys.readouterr().err == "snapshot-tracker: interrupted\n"


def test_serve_s_sighup_while_its_command_line_is_parsed_changes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # serve's SIGHUP is a reload: before its config is read it changed nothing but ended
    # serve as interrupted (exit 129) while its command line was parsed
    parser = cli_module.build_parser

    def hung_up_while_parsing() -> Any:
        os.kill(os.getpid(), signal.SIGHUP)
        return parser()

    monkeypatch.setattr(cli_module, "build_parser", hung_up_while_parsing)
    watchable = (*cli_module.STOPPING, signal.SIGINT)
    before = {signum: signal.getsignal(signum) for signum in watchable}
    original = {**before, signal.SIGHUP: signal.SIG_DFL}  # as a terminal starts serve
    try:
        code = main(["serve", "--config", str(tmp_path / "missing.yml")], original, [])
    finally:
        for signum, handler in before.items():
            signal.signal(signum, handler)
    assert code == 2  # the missing config's usage error, not an interruption
    assert "interrupted" not in capsys.readouterr().err


def test_a_held_stop_ends_the_process_at_once_with_its_log_written() -> None:
    """``serve``'s end of a stop held by a hung mount (``stop_held``): a thread still in a
    file system's call would hold the interpreter's exit as long as the mount hangs (here a
    thread that never returns); the process ends with 0 and what was logged is written."""
    import subprocess

    code = (
        "import logging, threading\n"
        "from tracker.cli import _end_held_stop\n"
        "from tracker.observability.logs import log_event, setup_logging\n"
        "setup_logging('info', 'text')\n"
        "threading.Thread(target=threading.Event().wait, name='cache sync').start()\n"
        "log_event(logging.getLogger('tracker'), 'warning', 'stop_held', threads='cache sync')\n"
        "_end_held_stop()\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert b"stop_held" in done.stderr and b'threads="cache sync"' in done.stderr, done.stderr


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["serve", "--config", "x", "--log-level=--"], "serve: error: argument --log-level"),
        ([*FETCH, "--connections=--"], "fetch: error: argument --connections"),
        ([*FETCH, "--trust-key=--"], "fetch: error: argument --trust-key"),
        (
            ["verify", "f", "--prove-accounts-max=--"],
            "verify: error: argument --prove-accounts-max",
        ),
        (["attest", "f", "--key=--"], "attest: error: argument --key"),
    ],
)
def test_a_flag_given_the_value_double_dash_is_a_usage_error(
    argv: list[str], said: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # Python 3.11's argparse takes ``=--`` for the end of the flags and hands the flag an
    # empty list, its type never called: a traceback, or a good archive said bad.
    err = usage_error(argv, capsys)
    assert len(err.splitlines()) == 1, err
    assert err.strip().endswith(f"{said}: expected one argument")


def test_the_parser_is_built_without_writing_to_the_temporary_directory(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Every command built it, and verify's help text asked tempfile.gettempdir(), which
    # writes a probe file there: a write outside the configured directories, and with no
    # writable /tmp even --version failed.
    import tempfile

    def no_temporary_directory() -> str:
        raise FileNotFoundError("No usable temporary directory found")

    monkeypatch.setattr(tempfile, "gettempdir", no_temporary_directory)
    assert "verify" in build_parser().commands
