"""The quickstart's own examples as an operator types them, against ``serve --config
examples/local.yml`` (a copy on port 0 beside a link to examples/ledger/): the download the
config's comment suggests keeps the archive's real name, so ``verify`` takes the file."""

from __future__ import annotations

import contextlib
import os
import re
import select
import shlex
import shutil
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import trio
from helpers_process import Serve, reap, start_serve
from helpers_s3 import free_ports  # ports outside the kernel's ephemeral range
from helpers_tls import client_tls

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
    # once the tracker lists the ledger's full (its first scan of the directory ends after it
    # listens: on a loaded host a command run at once would get the empty 404 of a tracker
    # that knows no snapshot yet)
    async with httpx.AsyncClient(verify=client_tls(), trust_env=False) as client:
        with trio.fail_after(30):
            while not (await client.get(quickstart.base + "/v1/snapshots")).json():
                await trio.sleep(0.05)
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


async def test_what_the_readme_says_a_tracker_without_snapshots_answers(tmp_path: Path) -> None:
    """README's "Answers in short", each claim read from the README and asked of a tracker
    whose one local directory is empty: the listings are 200 ``[]``, not 202."""
    readme = " ".join((ROOT / "README.md").read_text().split())
    claims = {
        "202 `no snapshot available` on the `/v1/` short redirects": [
            ("/v1/snapshot.tar.bz2", 202, "no snapshot available"),
            ("/v1/incremental-snapshot.tar.zst", 202, "no snapshot available"),
        ],
        "200 with `[]` from the listings (`/v1/snapshots`, `/v1/best_snapshots`)": [
            ("/v1/snapshots", 200, "[]"),
            ("/v1/best_snapshots", 200, "[]"),
        ],
        "500 `no snapshots found` from `/v1/health`": [("/v1/health", 500, "no snapshots found")],
        "an empty 404 on the root aliases": [("/snapshot.tar.bz2", 404, "")],
    }
    for claim in claims:
        assert claim in readme, claim
    (tmp_path / "empty").mkdir()
    config = tmp_path / "empty.yml"
    config.write_text(
        'listen: "127.0.0.1:0"\ninternal_listen: ""\ntarget_groups:\n'
        '  - group: local\n    local_targets: {paths: ["empty"]}\n'
    )
    serve = await start_serve("--config", str(config))
    try:
        async with httpx.AsyncClient(verify=client_tls(), trust_env=False) as client:
            for answers in claims.values():
                for path, status, body in answers:
                    got = await client.get(serve.base + path)
                    assert got.status_code == status, (path, got.status_code, got.text)
                    assert body in got.text and (body or not got.text), (path, got.text)
    finally:
        serve.kill()
        await serve.proc.wait()


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "tracker", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=cwd)


async def test_attest_beside_the_served_archives_then_fetch_trust_key_takes_them(
    tmp_path: Path,
) -> None:
    """The quickstart serving a ledger (a copy), ``keygen`` and ``attest`` of its archives
    (statements beside them), then a real ``fetch --trust-key`` against the tracker: the
    statements are served (checked against each file's size and digest first), the ledger
    gets both archives and ``fetch_done`` says which key vouched. A statement that names
    another file is refused (logged), never served."""
    ledger = tmp_path / "served"
    shutil.copytree(EXAMPLES / "ledger", ledger)
    config = tmp_path / "local.yml"
    text = (EXAMPLES / "local.yml").read_text().replace('["ledger"]', f'["{ledger}"]')
    config.write_text(text.replace("127.0.0.1:8458", "127.0.0.1:0").replace(":8457", ":0"))
    assert cli("keygen", "--out", "tour.key", cwd=tmp_path).returncode == 0
    key = cli("pubkey", "tour.key", cwd=tmp_path).stdout.strip()
    archives = sorted(str(p) for p in ledger.glob("*.tar.zst"))
    signed = cli("attest", *archives, "--key", "tour.key", cwd=tmp_path)
    assert signed.returncode == 0, signed.stderr
    full = next(p for p in ledger.glob("snapshot-*.tar.zst"))
    incrementals = sorted(ledger.glob("incremental-*.tar.zst"))
    # The older incremental's statement swapped for the newer one's: it names another file.
    shutil.copy(f"{incrementals[1]}.attestation", f"{incrementals[0]}.attestation")
    serve = await start_serve("--config", str(config))
    try:
        async with httpx.AsyncClient(verify=client_tls(), trust_env=False) as client:

            async def served(name: str) -> httpx.Response:
                return await client.get(f"{serve.base}/v1/local/{name}.attestation")

            with trio.fail_after(30):
                while (await served(full.name)).status_code != 200:
                    await trio.sleep(0.05)
                while "local_attestation_refused" not in serve.log:
                    await trio.sleep(0.05)
            assert (await served(incrementals[0].name)).status_code == 404
            assert (await served(incrementals[1].name)).status_code == 200
            assert f"{incrementals[0].name}.attestation" in serve.log
        trusted = tmp_path / "trusted"
        trusted.mkdir()
        fetch = ["fetch", "--ledger", str(trusted), "--tracker", serve.base, "--group", "local"]
        done = cli(*fetch, "--trust-key", key, "--progress", "none", cwd=tmp_path)
    finally:
        serve.kill()
        await serve.proc.wait()
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in trusted.iterdir()) == [incrementals[1].name, full.name]
    done_lines = [line for line in done.stderr.splitlines() if "fetch_done" in line]
    assert len(done_lines) == 2 and all(f"vouched_by={key}" in x for x in done_lines), done_lines


def end_group(group: int) -> None:
    """SIGKILL what is left of process group ``group`` and wait for each to end."""
    while members := [
        int(pid) for pid in filter(str.isdigit, os.listdir("/proc")) if _group_of(pid) == group
    ]:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGKILL)
        for pid in members:
            with contextlib.suppress(ProcessLookupError):
                ended = os.pidfd_open(pid)
                try:
                    select.select([ended], [], [], 30)
                finally:
                    os.close(ended)


def _group_of(pid: str) -> int | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] == b"Z" else int(fields[2])


async def test_the_readme_refresh_from_three_sources_runs_as_written(tmp_path: Path) -> None:
    """README's refresh from three sources, its block run as written (the ports changed to
    free ones, in the block and in copies of its two configs): every source sends part of
    the full in parallel, as /v1/targets says."""
    readme = (ROOT / "README.md").read_text()
    [block] = [b for b in re.findall(r"^```sh\n(.*?)^```", readme, re.S | re.M) if "three-" in b]
    ports = dict(
        zip(("8461", "8462", "8463", "8468", "8467"), map(str, free_ports(5)), strict=True)
    )
    work = tmp_path / "work"
    (work / "examples").mkdir(parents=True)
    (work / "examples" / "make_ledger.py").symlink_to(EXAMPLES / "make_ledger.py")
    for name in ("source.yml", "three-sources.yml"):
        text = (EXAMPLES / name).read_text()
        for old, new in ports.items():
            text = text.replace(old, new)
        (work / "examples" / name).write_text(text)
    script = block.replace(".venv/bin/", f"{Path(sys.executable).parent}/")
    for old, new in ports.items():
        script = script.replace(old, new)
    script = script.replace("python3 -c", f"{sys.executable} -c")
    process = await trio.lowlevel.open_process(
        ["bash", "-e", "-c", script], cwd=work, stdout=subprocess.PIPE, start_new_session=True
    )
    try:
        with trio.fail_after(120):
            assert process.stdout is not None
            out = b""
            while chunk := await process.stdout.receive_some():
                out += chunk
            assert await process.wait() == 0, out
    finally:
        end_group(process.pid)  # the script's children (serve, fetch): not ours to reap
        await reap(process)  # the script's shell, ours
    lines = [x for x in out.decode().splitlines() if x.startswith("http://")]
    assert len(lines) == 3, out
    for port in (ports["8461"], ports["8462"], ports["8463"]):
        [line] = [x for x in lines if x.startswith(f"http://127.0.0.1:{port} ")]
        assert "'used': 'parallel'" in line, lines
    [full] = work.glob("snapshot-1000-*.tar.zst")
    assert full.read_bytes() == next((work / "big-ledger").glob("snapshot-*")).read_bytes()
