"""The fleet checks the tracker's word, end to end (docs/http-api.md, "Signed statements"): a
real tracker on 127.0.0.1 with ``attest`` signs the copy it cached from a real upstream, and a
real ``snapshot-tracker fetch --trust-key`` against it moves the archive into the ledger only
when the tracker's key is one it trusts; with another key it exits 1, names the key that
vouched for nothing, and leaves the ledger empty."""

from __future__ import annotations

import hashlib
from pathlib import Path

from archives import build_archive
from helpers_proxy import GROUP, make_config, running_tracker
from helpers_statements import signer
from helpers_upstream import FakeUpstream, serving
from test_attestations import attest, fill
from test_fetch import fetch_command, run_cli, the_error_line

NAME, GOOD = build_archive(9700, compression="zst", seed=97)


async def test_fetch_takes_the_archive_only_on_the_trusted_trackers_statement(
    tmp_path: Path,
) -> None:
    ours, other = signer(1), signer(2)
    config = make_config(tmp_path / "cache", verify_archives=True, attest=attest(tmp_path))
    async with (
        serving(FakeUpstream(files={NAME: GOOD})) as up,
        running_tracker(config, up) as t,
    ):
        await fill(t, NAME, GOOD)
        refused = tmp_path / "refused"
        refused.mkdir()
        base = ("--group", GROUP, "--progress", "none", "--verify=true")
        done = await run_cli(
            *fetch_command(refused, t.base, *base, "--trust-key", other.public_key)
        )
        line = the_error_line(done)
        assert f"none from {other.public_key}" in line, line
        assert list(refused.iterdir()) == []  # no archive, no temp file, no state
        trusted = tmp_path / "trusted"
        trusted.mkdir()
        done = await run_cli(*fetch_command(trusted, t.base, *base, "--trust-key", ours.public_key))
        assert done.returncode == 0, done.stderr
        assert [p.name for p in trusted.iterdir()] == [NAME]
        got = (trusted / NAME).read_bytes()
        assert hashlib.sha256(got).digest() == hashlib.sha256(GOOD).digest()
