"""The command line's flags (README.md#command-line): every option of every subcommand has
one line of help with its default, no flag is taken by a prefix of its name, and a mistyped
flag is named."""

from __future__ import annotations

import argparse

import pytest

from tracker.cli import build_parser, main, unknown_flag
from tracker.proof.accounts.budget import default_memory, default_workers


def options() -> list[tuple[str, argparse.Action]]:
    return [
        (command, action)
        for command, sub in build_parser().commands.items()
        for action in sub.options()
        if action.help != argparse.SUPPRESS
    ]


def test_every_subcommand_is_seen() -> None:
    commands = {"serve", "check-config", "fetch", "verify", "attest", "keygen", "pubkey"}
    assert set(build_parser().commands) == commands
    fetch = [a for command, a in options() if command == "fetch" and a.dest != "help"]
    assert len(fetch) == 30


@pytest.mark.parametrize(
    ("command", "action"), options(), ids=lambda v: v if isinstance(v, str) else v.dest
)
def test_every_option_has_help_with_its_default(command: str, action: argparse.Action) -> None:
    assert action.help and "\n" not in action.help, (command, action.option_strings)
    if action.dest != "help" and not action.required:
        # The default, or which of two flags must be given.
        assert "default" in action.help or "is required" in action.help, action.help


def test_help_names_the_defaults() -> None:
    fetch = build_parser().commands["fetch"].format_help()
    for shown in ("(default: 500)", "(default: 8)", "(default: 10MiB)", "(default: 3s)"):
        assert shown in fetch
    flat = " ".join(fetch.split())
    assert '"The accounts level") (default: true)' in flat  # --prove-accounts
    assert "said so (default: no bound)" in flat  # --prove-accounts-max
    assert (
        "(default: from the cores and the memory it may use, a container's limits included,"
        f" {default_memory() // 1024**2}MiB here)"
    ) in flat  # --prove-accounts-memory
    assert (
        "(default: the cores this process may use, a container's CPU quota included:"
        f" {default_workers()} here)"
    ) in flat  # --proof-workers
    verify = " ".join(build_parser().commands["verify"].format_help().split())
    assert "--prove-accounts-max N a full of more accounts" in verify
    assert "said so (default: no bound)" in verify
    assert "--prove-accounts-memory SIZE memory of the accounts proof" in verify
    assert "--prove-accounts-temp-dir DIR where" in verify


@pytest.mark.parametrize(
    ("argv", "error"),
    [
        (["serve", "--conifg", "x"], "unknown flag --conifg (did you mean --config?)"),
        (["check-config", "--confg=x"], "unknown flag --confg (did you mean --config?)"),
        (
            ["fetch", "--ledg", "x", "--tracker", "t"],
            "unknown flag --ledg (did you mean --ledger?)",
        ),
        (["fetch", "--ledger", "x", "--trackr", "t"], "did you mean --tracker?"),
        (["verify", "--quiet", "f"], "unknown flag --quiet"),
        (["serve", "--config", "x"], ""),
        # before the subcommand: the program's own flags
        (["--verison"], "unknown flag --verison (did you mean --version?)"),
        (["-V"], "unknown flag -V"),
        (["--bogus", "serve", "--config", "x"], "unknown flag --bogus"),
        (["--version"], ""),
        (["-h"], ""),
        (["verify", "--", "--odd-name"], ""),
    ],
)
def test_an_unknown_flag_is_named(argv: list[str], error: str) -> None:
    found = unknown_flag(build_parser(), argv)
    assert (error in found) if error else found == ""


def test_a_prefix_of_a_flag_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["serve", "--conf", "x"])
    assert info.value.code == 2
    assert "unknown flag --conf (did you mean --config?)" in capsys.readouterr().err
