"""The quickstart's own examples as an operator types them, against ``serve --config
examples/local.yml`` (a copy on port 0 beside a link to examples/ledger/): the download the
config's comment suggests keeps the archive's real name, so ``verify`` takes the file."""

from __future__ import annotations

import shlex
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio
from helpers_process import Serve, start_serve

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
PUBLIC = "http://127.0.0.1:8458"


def quickstart_copy(tmp_path: Path) -> Path:
    """examples/local.yml on port 0, next to a link to its ledger."""
    text = (EXAMPLES / "local.yml").read_text()
    copy = tmp_path / "local.yml"
    copy.write_text(text.replace("127.0.0.1:8458", "127.0.0.1:0").replace(":8457", ":0"))
    (tmp_path / "ledger").symlink_to(EXAMPLES / "ledger")
    return copy


@pytest.fixture
async def quickstart(tmp_path: Path) -> AsyncIterator[Serve]:
    serve = await start_serve("--config", str(quickstart_copy(tmp_path)))
    try:
        yield serve
    finally:
        serve.kill()
        await serve.proc.wait()


def verify(*paths: Path) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "tracker", "verify", *map(str, paths)]
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


async def test_the_configs_download_command_keeps_the_name_verify_needs(
    quickstart: Serve, tmp_path: Path
) -> None:
    comment = [
        line.lstrip("#").strip()
        for line in (EXAMPLES / "local.yml").read_text().splitlines()
        if line.startswith("#")
        and PUBLIC in line
        and line.lstrip("# ").startswith(("curl", "wget"))
    ]
    assert comment, "examples/local.yml suggests no download command"
    work = tmp_path / "work"
    work.mkdir()
    for line in comment:
        argv = shlex.split(line.replace(PUBLIC, quickstart.base))
        with trio.fail_after(30):
            await trio.run_process(argv, cwd=work, capture_stdout=True)
    written = sorted(work.iterdir())
    assert [p.name for p in written] == [
        "snapshot-1000-DSDfJEwPp5cKu4Mgf2hZkPQ3abRDccBgmvS3CFJXc2Yt.tar.zst"
    ]
    done = verify(*written)
    assert done.returncode == 0 and done.stdout.startswith("ok "), done
