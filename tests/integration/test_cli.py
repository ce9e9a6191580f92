"""The command line as an operator runs it: real subprocesses, real signals, real sockets."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import trio
from helpers_process import start_serve
from helpers_tls import client_tls
from helpers_tracker import wait_until

import tracker

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tracker", *args], capture_output=True, text=True, timeout=60
    )


def test_version() -> None:
    result = run_cli("--version")
    assert result.returncode == 0 and tracker.__version__ in result.stdout


def test_check_config_ok() -> None:
    result = run_cli("check-config", "--config", str(EXAMPLES / "local.yml"))
    assert result.returncode == 0
    assert result.stdout.strip().endswith("OK") and len(result.stdout.strip().splitlines()) == 1


def test_output_that_cannot_be_written_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    """Stdout on a full disk (``/dev/full``): one line and exit 1 (it was an OSError
    traceback); a reader that left (``| head -0``): exit 1, quietly, as other tools."""
    key = tmp_path / "key.json"
    assert run_cli("keygen", "--out", str(key)).returncode == 0
    commands = [
        ("pubkey", str(key)),
        ("check-config", "--config", str(EXAMPLES / "local.yml")),
        # argparse's own writes drop a failed write: they exited 0 with nothing written
        ("--help",),
        ("--version",),
        ("verify", "--help"),
    ]
    for command in commands:
        with open("/dev/full", "w") as full:
            result = subprocess.run(
                [sys.executable, "-m", "tracker", *command],
                stdout=full,
                stderr=subprocess.PIPE,
                text=True,
                timeout=60,
            )
        assert result.returncode == 1, command
        assert result.stderr == "snapshot-tracker: No space left on device\n", command
    # keygen's key goes when its public key cannot be said (a rerun then works): it stayed
    fresh = tmp_path / "fresh.json"
    with open("/dev/full", "w") as full:
        result = subprocess.run(
            [sys.executable, "-m", "tracker", "keygen", "--out", str(fresh)],
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
        )
    assert result.returncode == 1 and not fresh.exists(), result.stderr
    read, write = os.pipe()
    os.close(read)  # the reader is gone before the first line
    with os.fdopen(write, "w") as gone:
        left = subprocess.run(
            [sys.executable, "-m", "tracker", "pubkey", str(key)],
            stdout=gone,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
        )
    assert (left.returncode, left.stderr) == (1, "")
    for command in [("check-config", "--config", str(EXAMPLES / "local.yml")), ("--help",)]:
        closed = subprocess.run(  # started with stdout closed (``>&-``): nothing to write to
            [sys.executable, "-m", "tracker", *command],
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
            preexec_fn=lambda: os.close(1),
        )
        assert (closed.returncode, closed.stderr) == (0, ""), command


def test_check_config_lists_every_problem(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yml"
    bad.write_text(
        "scrape_interval: 1s\nscrape_timeout: 5s\nbogus: 1\n"
        "target_groups:\n  - group: a\n    http_targets: {targets: [foo]}\n"
    )
    result = run_cli("check-config", "--config", str(bad))
    assert result.returncode == 2
    assert "target_groups[0].http_targets.targets[0]" in result.stderr
    assert "bogus" in result.stderr and "scrape_timeout" in result.stderr
    assert "Traceback" not in result.stderr


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    assert run_cli("serve").returncode == 2
    assert run_cli("nonsense").returncode == 2
    missing = run_cli("serve", "--config", str(tmp_path / "missing.yml"))
    assert missing.returncode == 2 and "missing.yml" in missing.stderr
    bad_flag = run_cli("serve", "--config", str(EXAMPLES / "local.yml"), "--listen", "nope")
    assert bad_flag.returncode == 2 and "--listen" in bad_flag.stderr


async def test_quickstart_serves_the_example_ledger() -> None:
    serve = await start_serve(
        "--config",
        str(EXAMPLES / "local.yml"),
        "--listen",
        "127.0.0.1:0",
        "--internal-listen",
        "127.0.0.1:0",
    )
    base = serve.base
    try:
        async with httpx.AsyncClient(
            verify=client_tls(), follow_redirects=True, trust_env=False
        ) as client:

            async def listed() -> bool:
                return len((await client.get(f"{base}/v1/snapshots")).json()) == 3

            with trio.fail_after(15):
                while not await listed():
                    await trio.sleep(0.05)
            response = await client.get(f"{base}/snapshot.tar.bz2")
            assert response.status_code == 200
            name = response.url.path.rsplit("/", 1)[-1]
            on_disk = (EXAMPLES / "ledger" / name).read_bytes()
            assert hashlib.sha256(response.content).digest() == hashlib.sha256(on_disk).digest()
            incr = await client.get(f"{base}/incremental-snapshot.tar.bz2")
            assert incr.url.path.startswith("/incremental-snapshot-1000-1200-")
    finally:
        assert await serve.stop() == 0


async def test_sigint_stops_cleanly(tmp_path: Path) -> None:
    serve = await start_serve(
        "--config",
        str(EXAMPLES / "local.yml"),
        "--listen",
        "127.0.0.1:0",
        "--internal-listen",
        "",
        "--log-format",
        "json",
    )
    async with httpx.AsyncClient(verify=client_tls(), trust_env=False) as client:
        assert (await client.get(f"{serve.base}/v1/best_snapshots")).status_code == 200
    assert await serve.stop(signal.SIGINT) == 0


def test_port_in_use_exits_1(tmp_path: Path) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        result = run_cli(
            "serve",
            "--config",
            str(EXAMPLES / "local.yml"),
            "--listen",
            f"127.0.0.1:{port}",
            "--internal-listen",
            "",
        )
    assert result.returncode == 1
    assert "startup_failed" in result.stderr and "Traceback" not in result.stderr


def test_serve_refuses_an_invalid_file_before_binding(tmp_path: Path) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    bad = tmp_path / "bad.yml"
    bad.write_text(f'listen: "127.0.0.1:{port}"\ntarget_groups:\n  - group: "a/b"\n')
    result = run_cli("serve", "--config", str(bad))
    assert result.returncode == 2
    assert "target_groups[0].group" in result.stderr
    assert "listening" not in result.stderr


def test_check_config_warns_about_what_discovery_leaves_unguarded(tmp_path: Path) -> None:
    """A group that only uses cluster discovery has targets (no "no targets" warning); with
    no ``rpc`` nothing checks the slots discovered nodes advertise: check-config says so."""
    path = tmp_path / "cluster.yml"
    group = "target_groups: [{group: g, cluster_discovery: {rpc: ['http://127.0.0.1:8899']}}]\n"
    path.write_text(group)
    result = run_cli("check-config", "--config", str(path))
    assert result.returncode == 0 and result.stdout.strip().endswith("OK")
    [warning] = result.stderr.strip().splitlines()
    assert warning.startswith(f"{path}: warning: target_groups[0].cluster_discovery: no `rpc`")
    assert "(at least 2)" in warning
    path.write_text(group + "rpc: http://127.0.0.1:8899\n")
    result = run_cli("check-config", "--config", str(path))
    assert result.returncode == 0 and result.stderr == ""


async def test_known_sources_typos_are_refused_and_unmatched_ones_warned(tmp_path: Path) -> None:
    """``known_sources: [foo]`` exits 2 naming the key; an entry that matches no target is
    logged as a warning at start and again at each reload."""
    path = tmp_path / "trust.yml"
    path.write_text("target_groups: [{group: g, trust: {known_sources: [foo]}}]\n")
    result = run_cli("check-config", "--config", str(path))
    assert result.returncode == 2
    assert "target_groups[0].trust.known_sources[0]: expected a target URL" in result.stderr
    ledger = tmp_path / "ledger"
    ledger.mkdir()

    def config(entry: str) -> str:
        trust = f"trust: {{known_sources: ['{entry}']}}"
        group = f"{{group: g, local_targets: {{paths: ['{ledger}']}}, {trust}}}"
        return f"listen: 127.0.0.1:0\ninternal_listen: 127.0.0.1:0\ntarget_groups: [{group}]\n"

    path.write_text(config("10.0.0.1:13080"))
    serve = await start_serve("--config", str(path))
    try:
        assert "known_sources[0]: '10.0.0.1:13080' matches no configured target" in serve.log
        path.write_text(config("http://10.0.0.2:8899"))
        async with httpx.AsyncClient(verify=client_tls(), trust_env=False, timeout=10) as client:
            answer = await client.post(f"{serve.internal}/reload")
        assert answer.status_code == 200
        assert "known_sources[0]: 'http://10.0.0.2:8899' matches no configured" in serve.log
    finally:
        assert await serve.stop() == 0


async def test_a_ledger_not_mounted_yet_is_listed_once_it_appears(tmp_path: Path) -> None:
    """A ``local_targets`` directory missing at start (a ledger on a mount that comes up
    after the tracker at boot): ``serve`` refused the config with exit 2, which the systemd
    unit never restarts (``RestartPreventExitStatus=2``), and the fleet had no tracker until
    someone started it again. ``check-config`` and ``serve`` now warn naming the key, the
    target shows down with the reason (``/v1/targets``, ``snapshot_tracker_targets_up``),
    and the ledger's archives are listed once the directory appears."""
    from archives import build_archive

    ledger = tmp_path / "mnt" / "ledger"
    path = tmp_path / "ledger.yml"
    path.write_text(
        "listen: 127.0.0.1:0\ninternal_listen: 127.0.0.1:0\nscrape_interval: 300ms\n"
        f"target_groups: [{{group: g, local_targets: {{paths: ['{ledger}']}}}}]\n"
    )
    key = "target_groups[0].local_targets.paths[0]"
    result = run_cli("check-config", "--config", str(path))
    assert result.returncode == 0, result.stderr
    assert f"warning: {key}: '{ledger}' does not exist yet" in result.stderr
    serve = await start_serve("--config", str(path))
    try:
        assert serve.log.count(key) == 1, serve.log  # one warning, at start
        async with httpx.AsyncClient(verify=client_tls(), trust_env=False, timeout=10) as client:

            async def target() -> dict[str, object]:
                [only] = (await client.get(f"{serve.base}/v1/targets")).json()
                return dict(only)

            async def shown(health: str) -> bool:
                return (await target())["health"] == health

            await wait_until(lambda: shown("down"), timeout=30)
            assert "No such file or directory" in str((await target())["last_error"])
            metrics = (await client.get(f"{serve.internal}/metrics")).text
            assert 'snapshot_tracker_targets_up{group="g"} 0.0' in metrics
            name, data = build_archive(100)
            ledger.mkdir(parents=True)
            (ledger / name).write_bytes(data)

            async def listed() -> bool:
                answer = (await client.get(f"{serve.base}/v1/snapshots")).json()
                return [f["file_name"] for s in answer for f in s["files"]] == [name]

            await wait_until(listed, timeout=30)
            assert await shown("up")
    finally:
        assert await serve.stop() == 0
