"""Local files proven, shown, enforced and signed (docs/architecture.md, "Proven archives":
"Local files"; docs/http-api.md, "Proven archives", "Signed statements").

Real parts: the tracker (the ``serve`` command, or ``run_tracker`` on 127.0.0.1:0) over the
quickstart's own config (examples/local.yml) and its ledger (examples/ledger/, real archives
in agave's formats), copies of both in the test's directory where the test changes them, and
a real ``snapshot-tracker fetch --trust-key`` against the tracker.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import signal
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import trio.testing
import yaml
from archives import forged_accounts_archive
from helpers_cluster import STAKES, bank_hash, votes_for
from helpers_ports import REFUSED
from helpers_process import start_serve
from helpers_server import serve_app
from helpers_tls import client_tls
from helpers_tracker import start_tracker, wait_until, write_config
from helpers_votes import VoteRpc
from test_attestations import attest
from test_fetch import fetch_command, run_cli, the_error_line
from test_verified import metric

from tracker.core.digests import repr_digest
from tracker.core.snapshots import parse_archive_name
from tracker.proof.levels import Level
from tracker.proof.statements import parse_document

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
LEDGER = EXAMPLES / "ledger"
FULL = next(p.name for p in LEDGER.iterdir() if p.name.startswith("snapshot-"))
#: A full above the ledger's whose account storages do not give its manifest's lattice hash:
#: its check fails at ``accounts``.
FORGED, FORGED_DATA = forged_accounts_archive(2000, seed=7)


def on_disk(directory: Path) -> dict[str, str]:
    """The SHA-256 of each archive in ``directory`` (not the statements the README's tour,
    run in this checkout, may have written beside them)."""
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in directory.iterdir()
        if parse_archive_name(p.name) is not None
    }


def listed_files(listing: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each file of a ``/v1/snapshots`` answer, by name."""
    return {f["file_name"]: f for source in listing for f in source["files"]}


def quickstart_config(tmp_path: Path, **group: Any) -> Path:
    """examples/local.yml as it is, its ledger a copy in ``tmp_path``, ``group`` added to its
    one group (ports 127.0.0.1:0)."""
    config = yaml.safe_load((EXAMPLES / "local.yml").read_text())
    ledger = tmp_path / "ledger"
    shutil.copytree(LEDGER, ledger)
    [only] = config["target_groups"]
    only["local_targets"]["paths"] = [str(ledger)]
    only.update(group)
    config.update(listen="127.0.0.1:0", internal_listen="127.0.0.1:0", scrape_interval="300ms")
    return write_config(tmp_path, config)


async def test_the_quickstart_proves_and_shows_its_local_files() -> None:
    """``serve --config examples/local.yml``, as the README runs it: every file of the
    ledger gets its SHA-256 and proof in the JSON (the full to ``accounts``, the incrementals
    to ``manifest``), in ``/v1/targets`` and on the status page, and its ``.sha256`` route."""
    serve = await start_serve(
        *("--config", str(EXAMPLES / "local.yml")),
        *("--listen", "127.0.0.1:0", "--internal-listen", "127.0.0.1:0"),
    )
    disk = on_disk(LEDGER)
    try:
        async with httpx.AsyncClient(verify=client_tls(), trust_env=False) as client:

            async def proven() -> bool:
                files = listed_files((await client.get(f"{serve.base}/v1/snapshots")).json())
                return set(files) == set(disk) and all("proof" in f for f in files.values())

            await wait_until(proven, timeout=30)
            files = listed_files((await client.get(f"{serve.base}/v1/snapshots")).json())
            for name, f in files.items():
                assert f["sha256"] == disk[name]
                wanted = "accounts" if name == FULL else "manifest"
                assert f["proof"]["level"] == wanted, (name, f["proof"])
                assert f["proof"]["snapshot_hash"] in name
            [target] = (await client.get(f"{serve.base}/v1/targets")).json()
            checked = {f["file_name"]: f for f in target["local_files"]}
            assert {n: f["state"] for n, f in checked.items()} == dict.fromkeys(disk, "checked")
            assert checked[FULL]["sha256"] == disk[FULL]
            assert checked[FULL]["proof"]["level"] == "accounts"
            line = (await client.get(f"{serve.base}/v1/local/{FULL}.sha256")).text
            assert line == f"{disk[FULL]}  {FULL}\n"
            head = await client.head(f"{serve.base}/v1/local/{FULL}")
            assert head.headers["repr-digest"] == repr_digest(disk[FULL])
            page = (await client.get(f"{serve.internal}/?refresh=0")).text
            best = page[page.index("Best snapshots") : page.index('id="cache"')]
            assert disk[FULL][:16] in best and "accounts" in best and "manifest" in best
            assert "unknown" not in best
    finally:
        assert await serve.stop() == 0


async def test_trust_require_on_a_local_group_is_enforced(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """The quickstart's config with ``trust.require: accounts`` and a full above the
    ledger's that fails its ``accounts`` proof: from the start no listing holds a file not
    proven to the level, the forged full is never listed nor served (its target says why),
    and the pair handed out is the ledger's. With ``cluster`` (no RPC: nothing can reach
    it) nothing is handed out at all, each file's reason shown."""
    config = quickstart_config(tmp_path, trust={"require": "accounts"})
    (tmp_path / "ledger" / FORGED).write_bytes(FORGED_DATA)
    base, internal = await start_tracker(nursery, config)
    disk = on_disk(tmp_path / "ledger")
    seen: dict[str, dict[str, Any]] = {}
    async with httpx.AsyncClient(verify=client_tls(), trust_env=False) as client:

        async def settled() -> bool:
            files = listed_files((await client.get(f"{base}/v1/snapshots")).json())
            seen.update(files)
            for name, f in files.items():  # every listing, from the first: proven only
                assert f["sha256"] == disk[name], f
                assert f["proof"]["level"] in ("accounts", "cluster") or "incremental" in name
            [target] = (await client.get(f"{base}/v1/targets")).json()
            # the forged full's verdict, not its "not proven yet" while its check runs
            return len(files) == 3 and target["last_error"].startswith(
                f"archive not proven: {FORGED}: accounts:"
            )

        await wait_until(settled, timeout=30)
        assert FORGED not in seen
        [target] = (await client.get(f"{base}/v1/targets")).json()
        failed = {f["file_name"]: f for f in target["local_files"]}[FORGED]
        assert failed["state"] == "failed" and "lattice hash" in failed["reason"]
        assert (await client.get(f"{base}/v1/local/{FORGED}")).status_code == 404
        best = await client.get(f"{base}/snapshot.tar.bz2")
        assert best.headers["location"].endswith(f"/{FULL}")
        page = (await client.get(f"{internal}/?refresh=0")).text
        assert FORGED in page and "recomputed from the account storages" in page

        config.write_text(config.read_text().replace("require: accounts", "require: cluster"))
        assert (await client.post(f"{internal}/reload")).status_code == 200

        async def nothing_listed() -> bool:
            return (await client.get(f"{base}/v1/snapshots")).json() == []

        await wait_until(nothing_listed, timeout=30)
        assert (await client.get(f"{base}/v1/local/{FULL}")).status_code == 404

        async def cluster_required() -> bool:  # asked in a wait: a slow scan's error may show
            [target] = (await client.get(f"{base}/v1/targets")).json()
            return "cluster required" in target["last_error"]

        await wait_until(cluster_required)


async def test_a_group_without_a_level_ranks_its_files_but_keeps_a_failed_one_out(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """No ``trust.require``: the forged full (the newest) is checked, shown failed
    (``/v1/targets``) and kept out: it was listed, ranked best and served bare (an empty
    file too); the good files carry their digests. Its rejection is counted as a remote
    copy's is (``archives_rejected_total``: it was logged only, and an alert on the
    counter never saw a corrupt archive in a validator's ledger)."""
    config = quickstart_config(tmp_path)
    (tmp_path / "ledger" / FORGED).write_bytes(FORGED_DATA)
    base, internal = await start_tracker(nursery, config)
    async with httpx.AsyncClient(verify=client_tls(), trust_env=False) as client:

        async def all_checked() -> bool:
            [target] = (await client.get(f"{base}/v1/targets")).json()
            states = {f["file_name"]: f["state"] for f in target["local_files"]}
            done = len(states) == 4 and "checking" not in states.values()
            return done and FORGED in target["last_error"]

        await wait_until(all_checked, timeout=30)
        [target] = (await client.get(f"{base}/v1/targets")).json()
        failed = {f["file_name"]: f for f in target["local_files"]}[FORGED]
        assert failed["state"] == "failed" and "lattice hash" in failed["reason"]
        assert target["last_error"].startswith(f"archive not proven: {FORGED}: ")
        files = listed_files((await client.get(f"{base}/v1/snapshots")).json())
        assert set(files) == set(on_disk(LEDGER))
        assert files[FULL]["proof"]["level"] == "accounts"
        answer = await client.get(f"{base}/v1/local/{FORGED}")
        assert answer.status_code == 404
        assert await metric(internal, "snapshot_tracker_archives_rejected_total") == 1


async def test_a_replaced_local_file_is_not_served_on_its_predecessor_s_proof(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """A proven full of a group that requires ``accounts`` replaced under its name by other
    bytes (a rename, as a validator writes): the new file is refused from the first request
    (the identity it was opened as is not the one proven), then its own check fails and its
    target says why; the old digest is gone from the listing."""
    config = quickstart_config(tmp_path, trust={"require": "accounts"})
    base, _internal = await start_tracker(nursery, config)
    ledger = tmp_path / "ledger"
    async with httpx.AsyncClient(verify=client_tls(), trust_env=False) as client:

        async def proven() -> bool:
            return (await client.head(f"{base}/v1/local/{FULL}")).status_code == 200

        await wait_until(proven, timeout=30)
        other = ledger / ".replacement"
        other.write_bytes(b"\0" * 4096)
        os.replace(other, ledger / FULL)
        refused = await client.get(f"{base}/v1/local/{FULL}")
        assert refused.status_code == 404, refused.status_code

        async def failed() -> bool:  # its own check, not "not proven yet" while it runs
            [target] = (await client.get(f"{base}/v1/targets")).json()
            error = target["last_error"]
            return error.startswith(f"archive not proven: {FULL}: ") and "yet" not in error

        await wait_until(failed, timeout=30)
        [target] = (await client.get(f"{base}/v1/targets")).json()
        checked = {f["file_name"]: f for f in target["local_files"]}
        assert checked[FULL]["state"] == "failed", checked[FULL]
        assert (await client.get(f"{base}/v1/snapshots")).json() == []  # the chains need it
        assert (await client.get(f"{base}/v1/local/{FULL}.sha256")).status_code == 404


@pytest.mark.usefixtures("quick_vote_retries")
async def test_local_files_reach_cluster_by_the_votes(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """``trust.require: cluster`` with ``rpc``: each local file proven by its check is lifted
    by the votes, as a cached copy is, and handed out only then: nothing while the RPC holds
    its blocks back (every file checked meanwhile), all three at ``cluster`` once 2/3 of the
    stake voted each bank hash."""
    voted = trio.Event()
    node = VoteRpc(stakes=STAKES, hold={"getBlock": voted})
    url = await nursery.start(serve_app, node.app())
    config = quickstart_config(tmp_path, trust={"require": "cluster"})
    settings = yaml.safe_load(config.read_text())
    settings["rpc"] = url + "/"
    config.write_text(yaml.safe_dump(settings))
    for path in (tmp_path / "ledger").iterdir():
        slot = int(path.name.removesuffix(".tar.zst").split("-")[-2])
        bank = bank_hash(tmp_path, path.name, path.read_bytes())
        node.blocks.update(votes_for(slot, bank, majority=True))
    base, _internal = await start_tracker(nursery, config)
    async with httpx.AsyncClient(verify=client_tls(), trust_env=False) as client:

        async def listed() -> dict[str, dict[str, Any]]:
            return listed_files((await client.get(f"{base}/v1/snapshots")).json())

        async def checked_not_voted() -> bool:
            [target] = (await client.get(f"{base}/v1/targets")).json()
            states = [f["state"] for f in target["local_files"]]
            return states == ["checked"] * 3 and "getBlock" in {m for m, _p in node.calls}

        await wait_until(checked_not_voted, timeout=30)
        assert await listed() == {}
        voted.set()

        async def all_three() -> bool:
            return len(await listed()) == 3

        await wait_until(all_three, timeout=60)
        for f in (await listed()).values():
            assert f["proof"]["level"] == "cluster" and f["proof"]["voted_stake"] == 0.7, f


async def test_attest_signs_local_files_and_fetch_trusts_them(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """Redirect mode, local files, ``attest``: each file is signed, served at its
    ``.attestation`` route and in the listing; a real ``fetch --trust-key`` with the
    tracker's key moves the full into its ledger, with another key it exits 1 and takes
    nothing; the status page's signing card names the key and the statements held."""
    key = attest(tmp_path, n=5)
    config = quickstart_config(tmp_path, trust={"require": "accounts"})
    settings = yaml.safe_load(config.read_text())
    settings["attest"] = {"key": key.key, "valid_for": "1h"}
    config.write_text(yaml.safe_dump(settings))
    base, internal = await start_tracker(nursery, config)
    disk = on_disk(tmp_path / "ledger")
    async with httpx.AsyncClient(verify=client_tls(), trust_env=False) as client:

        async def signed() -> bool:
            files = listed_files((await client.get(f"{base}/v1/snapshots")).json())
            return len(files) == 3 and all(f.get("attestations") for f in files.values())

        await wait_until(signed, timeout=30)
        answer = await client.get(f"{base}/v1/local/{FULL}.attestation")
        assert answer.status_code == 200
        document = parse_document(answer.content)
        statement = document.statement
        assert (statement.name, statement.sha256) == (FULL, disk[FULL])
        assert statement.size == (tmp_path / "ledger" / FULL).stat().st_size
        assert statement.level == Level.ACCOUNTS
        page = (await client.get(f"{internal}/?refresh=0")).text
        card = page[page.index('id="signing"') : page.index('id="events"')]
        assert document.signer in card and ">3</td>" in card
        assert "nothing can be signed" not in card
    common = ("--group", "local", "--progress", "none", "--verify=true")
    refused = tmp_path / "refused"
    refused.mkdir()
    other = attest(tmp_path, n=6)
    other_key = parse_document(answer.content).signer
    assert other_key != _public_key(other.key)
    done = await run_cli(
        *fetch_command(refused, base, *common, "--trust-key", _public_key(other.key))
    )
    assert f"none from {_public_key(other.key)}" in the_error_line(done)
    assert list(refused.iterdir()) == []
    trusted = tmp_path / "trusted"
    trusted.mkdir()
    done = await run_cli(*fetch_command(trusted, base, *common, "--trust-key", document.signer))
    assert done.returncode == 0, done.stderr
    assert on_disk(trusted) == {FULL: disk[FULL]}


def _public_key(key_file: str) -> str:
    """The base58 public key of a keypair file."""
    from tracker.config.files import signing
    from tracker.config.schema import Attest

    signer, _valid_for = signing(Attest(key=key_file))
    assert signer is not None
    return signer.public_key


def test_check_config_says_when_attest_can_sign_nothing(tmp_path: Path) -> None:
    """Redirect mode without local files: ``attest`` passes with a warning that says nothing
    can be signed; with the quickstart's local files it passes without one."""
    from test_cli import run_cli as run_command

    key = attest(tmp_path, n=5).key
    settings = {
        "attest": {"key": key},
        "target_groups": [{"group": "g", "http_targets": {"targets": [f"http://{REFUSED}/"]}}],
    }
    remote = write_config(tmp_path, settings, "remote.yml")
    result = run_command("check-config", "--config", str(remote))
    assert result.returncode == 0, result.stderr
    assert "warning: attest: nothing can be signed: redirect mode holds no copy" in result.stderr
    local = quickstart_config(tmp_path)
    with_key = yaml.safe_load(local.read_text())
    with_key["attest"] = {"key": key}
    local.write_text(yaml.safe_dump(with_key))
    result = run_command("check-config", "--config", str(local))
    assert result.returncode == 0 and "attest" not in result.stderr, result.stderr
    assert os.stat(key).st_mode & 0o777 == 0o600


def _running(pids: dict[int, str]) -> bool:
    """True while one of ``pids`` runs (is in /proc)."""
    return any(Path(f"/proc/{pid}").exists() for pid in pids)


def _descendants(pid: int) -> dict[int, str]:
    """The processes below ``pid`` and their command lines, from /proc."""
    found: dict[int, str] = {}
    parents = [pid]
    while parents:
        parent = parents.pop()
        for task in os.listdir(f"/proc/{parent}/task"):
            try:
                children = Path(f"/proc/{parent}/task/{task}/children").read_text().split()
            except OSError:
                continue
            for child in map(int, children):
                try:
                    found[child] = Path(f"/proc/{child}/cmdline").read_bytes().decode()
                except OSError:
                    continue
                parents.append(child)
    return found


async def test_a_tracker_of_many_proof_workers_proves_in_scan_processes(tmp_path: Path) -> None:
    """``serve`` with ``proof_workers: 8`` (a host of eight cores or more, whatever this one
    has) proves the ledger's full to ``accounts`` in scan processes (their forkserver is the
    daemon's child), and Ctrl-C (SIGINT to the process group, as a terminal sends it) ends
    it with no traceback and nothing of them left running."""
    path = quickstart_config(tmp_path)
    config = yaml.safe_load(path.read_text())
    config.update(proof_workers=8, prove_accounts_memory="2GiB")
    path.write_text(yaml.safe_dump(config))
    serve = await start_serve("--config", str(path))
    disk = on_disk(tmp_path / "ledger")
    try:
        async with httpx.AsyncClient(verify=client_tls(), trust_env=False) as client:

            async def proven() -> bool:
                files = listed_files((await client.get(f"{serve.base}/v1/snapshots")).json())
                return FULL in files and "proof" in files[FULL]

            await wait_until(proven, timeout=60)
            files = listed_files((await client.get(f"{serve.base}/v1/snapshots")).json())
            assert files[FULL]["proof"]["level"] == "accounts"
            assert files[FULL]["sha256"] == disk[FULL]
        below = _descendants(serve.proc.pid)
        forkservers = [pid for pid, line in below.items() if "multiprocessing.forkserver" in line]
        assert forkservers, below
        serve.proc.send_signal(signal.SIGINT)
        for pid in below:  # a terminal's Ctrl-C reaches every process of the group
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGINT)
        with trio.fail_after(20):
            assert await serve.proc.wait() == 0
        assert "Traceback" not in serve.log

        async def all_gone() -> bool:
            return not _running(below)

        await wait_until(all_gone, timeout=20)
    finally:
        if serve.proc.returncode is None:
            serve.kill()
            await serve.proc.wait()


def _ledger_of_one_archive(tmp_path: Path) -> tuple[Path, str, bytes, Any]:
    """A ledger directory holding one real archive, and a config whose one group serves it
    as a local target: the ledger, the archive's name and bytes, the config."""
    from archives import build_archive

    from tracker.config.loading import load_config

    ledger = tmp_path / "ledger"
    ledger.mkdir()
    name, data = build_archive(100)
    (ledger / name).write_bytes(data)
    config = load_config(write_config(tmp_path, {
        "listen": "127.0.0.1:0",
        "target_groups": [{"group": "local", "local_targets": {"paths": [str(ledger)]}}],
    }))  # fmt: skip
    return ledger, name, data, config


def _mount_and_ledger(
    tmp_path: Path, slots: tuple[int, ...], timeout: str
) -> tuple[Path, Path, list[tuple[str, bytes]], Any]:
    """Two local directories (``mount``, whose mount the test hangs, holding the first
    archive; ``ledger``, empty), a real archive per slot of ``slots``, and a config of two
    groups, one local target each (``a``: the mount, ``b``: the ledger), whose rounds leave
    a directory that does not answer within ``timeout``."""
    from archives import build_archive

    from tracker.config.loading import load_config

    mount, ledger = tmp_path / "mount", tmp_path / "ledger"
    mount.mkdir()
    ledger.mkdir()
    archives = [build_archive(slot) for slot in slots]
    (mount / archives[0][0]).write_bytes(archives[0][1])
    config = load_config(write_config(tmp_path, {
        "scrape_interval": "3s", "scrape_timeout": timeout, "prove_accounts": False,
        "target_groups": [
            {"group": "a", "local_targets": {"paths": [str(mount)]}},
            {"group": "b", "local_targets": {"paths": [str(ledger)]}},
        ],
    }))  # fmt: skip
    return mount, ledger, archives, config


async def test_a_statement_from_a_clock_ahead_is_taken_once_this_clock_catches_up(
    tmp_path: Path,
) -> None:
    """A local ``FILE.attestation`` signed on a clock 400 s ahead is refused (over the 300 s
    skew allowed): a refusal time cures. It was never read again while the file stayed as
    it was; it is taken once this clock is within the skew (no network: the daemon's own
    class, a real archive, a clock of the test's)."""
    from helpers_statements import signer

    from tracker.core.digests import Digests
    from tracker.ordering.index import Index
    from tracker.proof.background.localfiles import LocalProofs
    from tracker.proof.statements import MAX_CLOCK_SKEW, Statement

    ledger, name, data, config = _ledger_of_one_archive(tmp_path)
    start = 1_900_000_000.0
    now = [start]
    ahead = int(start) + MAX_CLOCK_SKEW + 100
    said = Statement(
        name=name, size=len(data), sha256=hashlib.sha256(data).hexdigest(), slot=100,
        base_slot=None, snapshot_hash=None, bank_hash=None, level=Level.STRUCTURE,
        voted_stake=None, checked_at=ahead, expires=ahead + 7 * 86400,
    )  # fmt: skip
    (ledger / f"{name}.attestation").write_bytes(signer(7).sign(said).encode())
    digests = Digests()
    proofs = LocalProofs(lambda: config, Index(), digests, clock=lambda: now[0])

    def held() -> list[bool]:
        return [copy.attestation is not None for copy in digests.copies("local", name)]

    for _ in range(2):  # listed, checked, its statement read
        await proofs.round()
    assert held() == [False]
    now[0] = start + 99  # still a second too far ahead: not read again, still refused
    await proofs.round()
    assert held() == [False]
    now[0] = start + 100
    await proofs.round()
    assert held() == [True]


async def test_a_file_that_could_not_be_opened_is_retried_on_time_whatever_the_wall_clock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A local file whose check could not open it is tried again RETRY_AFTER later on the
    monotonic clock (docs/architecture.md, "Proven archives": "Local files"): on the wall
    clock, a step back of an hour kept it unchecked, and unserved under trust.require, an
    hour more (no network: the daemon's own class, a real archive, the test's clocks)."""

    import tracker.proof.background.localfiles as localfiles
    from tracker.core.digests import Digests
    from tracker.ordering.index import Index, TargetKey
    from tracker.proof.background.rounds import RETRY_AFTER

    ledger, _name, _data, config = _ledger_of_one_archive(tmp_path)
    real_open, opens = localfiles.open_copy, [0]

    async def open_copy(path: str) -> Any:
        opens[0] += 1
        if opens[0] == 1:
            raise OSError(24, "Too many open files")  # a descriptor short, this once
        return await real_open(path)

    monkeypatch.setattr(localfiles, "open_copy", open_copy)
    wall, mono = [1_900_000_000.0], [500.0]
    proofs = localfiles.LocalProofs(
        lambda: config, Index(), Digests(), clock=lambda: wall[0], monotonic=lambda: mono[0]
    )

    def checked() -> bool:
        [(_name, done)] = proofs.of_target(TargetKey("local", str(ledger)))
        return done is not None and done.verified is not None

    assert await proofs.round() == 1 and not checked()  # could not open it
    wall[0] -= 3600  # the wall clock steps an hour back
    mono[0] += RETRY_AFTER - 1
    assert await proofs.round() == 0  # not yet due
    mono[0] += 1
    assert await proofs.round() == 1 and checked()  # due on time, and passed


async def test_a_file_proven_short_for_the_tracker_s_own_cause_is_checked_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A local full whose accounts proof lost its hashing process (SIGKILL, as an OOM kill:
    ``Proof.local_cause``) stays at ``manifest``, unranked under ``trust.require: accounts``,
    and is checked again RETRY_AFTER later on the monotonic clock though the file did not
    change (docs/http-api.md, "Proven archives": "Local files"); it was checked once per
    file identity, so it stayed out until it changed or the tracker restarted. What the
    first check said stands meanwhile. No network: the daemon's own class, a real archive,
    its hashing processes real children, the test's clock."""
    from archives import build_archive

    from tracker.config.loading import load_config
    from tracker.core.digests import Digests
    from tracker.observability.logs import TextFormatter
    from tracker.ordering.index import Index, TargetKey
    from tracker.proof.accounts import hashworker
    from tracker.proof.accounts.budget import AccountsLimits
    from tracker.proof.background.localfiles import LocalProofs
    from tracker.proof.background.rounds import RETRY_AFTER

    caplog.set_level(logging.INFO, logger="tracker")
    ledger = tmp_path / "ledger"
    ledger.mkdir()
    name, data = build_archive(1100, accounts=7)
    (ledger / name).write_bytes(data)
    config = load_config(write_config(tmp_path, {
        "listen": "127.0.0.1:0",
        "prove_accounts": True,
        "target_groups": [{"group": "local", "local_targets": {"paths": [str(ledger)]},
                           "trust": {"require": "accounts"}}],
    }))  # fmt: skip
    monkeypatch.setattr(hashworker, "START_FROM", 0)  # a small archive's proof starts one
    real_start, started, kill = hashworker.HashWorker._start, [], [True]

    def start(self: hashworker.HashWorker) -> None:
        real_start(self)
        if self._proc is not None:
            started.append(self._proc.pid)
            if kill[0]:  # the OOM killer
                os.kill(self._proc.pid, signal.SIGKILL)

    monkeypatch.setattr(hashworker.HashWorker, "_start", start)
    mono = [500.0]
    index = Index()
    proofs = LocalProofs(
        lambda: config, index, Digests(),
        accounts=lambda: AccountsLimits(memory=64 * 1024**2, workers=2),
        monotonic=lambda: mono[0],
    )  # fmt: skip

    def proven() -> tuple[str, bool]:
        [(_name, done)] = proofs.of_target(TargetKey("local", str(ledger)))
        assert done is not None and done.verified is not None, done
        return done.verified.proof.level.label, done.verified.proof.local_cause

    assert await proofs.round() == 1
    assert len(started) == 1
    assert proven() == ("manifest", True)  # the tracker's own cause, not the file's
    # its line says why, as a warning: ``proven=manifest`` alone read as the file's fault
    [line] = [r for r in caplog.records if r.getMessage() == "local_checked"]
    assert line.levelname == "WARNING"
    assert "note=" in TextFormatter().format(line) and "killed" in TextFormatter().format(line)
    key = TargetKey("local", str(ledger))
    [refused] = index.disproven()[key].values()  # below trust.require: kept out
    assert refused.startswith("proven to manifest, accounts required: not proven: the hash")
    kill[0] = False  # memory again
    mono[0] += RETRY_AFTER - 1
    assert await proofs.round() == 0  # not yet due: what it said stands
    assert proven() == ("manifest", True)
    mono[0] += 1
    assert await proofs.round() == 1  # due again, though the same file
    assert proven() == ("accounts", False)
    assert name not in index.disproven().get(key, {})  # ranked
    mono[0] += RETRY_AFTER
    assert await proofs.round() == 0  # proven: once per identity again
    # each hashing process reaped by its proof's close, however the check ended
    assert [pid for pid in started if _exists(f"/proc/{pid}")] == []


def _exists(path: str) -> bool:
    return os.path.exists(path)


async def test_a_check_marks_its_own_file_not_every_file_again(tmp_path: Path) -> None:
    """After each check every listed file was marked again (O(files) a check, O(files²) a
    round: a ledger of 19,000 archives held the event loop ~70 ms a check). Only what may
    have changed is marked now; another config marks every file again."""
    import attrs
    from names import full_name

    from tracker.config.loading import load_config
    from tracker.core.digests import Digests
    from tracker.ordering.index import Index, TargetKey
    from tracker.proof.background.localfiles import LocalProofs

    class Counting(Index):
        marks = 0

        def prove(self, key: TargetKey, name: str, proven: bool = True) -> None:
            Counting.marks += 1
            super().prove(key, name, proven)

    ledger = tmp_path / "ledger"
    ledger.mkdir()
    count = 200
    for slot in range(1000, 1000 + count):
        (ledger / full_name(slot)).write_bytes(b"not an archive")  # each check fails at once
    config = load_config(write_config(tmp_path, {
        "listen": "127.0.0.1:0",
        "target_groups": [{"group": "local", "local_targets": {"paths": [str(ledger)]}}],
    }))  # fmt: skip
    index = Counting()
    proofs = LocalProofs(lambda: config, index, Digests())
    assert await proofs.round() == count  # every file checked, one after another
    assert Counting.marks <= 3 * count, Counting.marks  # was count * (count + 2)
    failed = [checked for _name, checked in proofs.of_target(TargetKey("local", str(ledger)))]
    assert len(failed) == count and all(c is not None and c.failed for c in failed)
    before = Counting.marks
    assert await proofs.round() == 0  # nothing due, nothing changed: nothing marked
    assert Counting.marks == before
    config = attrs.evolve(config)  # a reload: every file marked again
    await proofs.round()
    assert Counting.marks == before + count


async def test_a_listing_short_of_descriptors_keeps_what_the_checks_said(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A listing of the ledger that failed for want of a descriptor (EMFILE: this process's
    trouble, not the directory's; the scrape keeps the target's files and health) forgot
    every check of that directory: its digests went, a group's gate unranked its files, and
    every archive (a mainnet full: its whole accounts proof) was read again at the next
    round. Now what was said of each file stands, and is read again only if the file
    changed (no network: the daemon's own class, a real archive)."""
    import errno

    import tracker.proof.background.localfiles as localfiles
    from tracker.core.digests import Digests
    from tracker.errors import ProbeError
    from tracker.ordering.index import Index, TargetKey
    from tracker.proof.records.localcopies import holder

    ledger, name, _data, config = _ledger_of_one_archive(tmp_path)
    real_scan, short = localfiles.scan_local, [False]

    def scan_local(directory: str) -> Any:
        if short[0]:
            raise ProbeError("cannot list: Too many open files") from OSError(
                errno.EMFILE, "Too many open files"
            )
        return real_scan(directory)

    monkeypatch.setattr(localfiles, "scan_local", scan_local)
    digests = Digests()
    proofs = localfiles.LocalProofs(lambda: config, Index(), digests)
    key = TargetKey("local", str(ledger))
    assert await proofs.round() == 1
    assert digests.of(holder(str(ledger / name)), "local", name) is not None
    short[0] = True
    assert await proofs.round() == 0
    assert digests.of(holder(str(ledger / name)), "local", name) is not None
    [(_name, done)] = proofs.of_target(key)
    assert done is not None and done.verified is not None
    short[0] = False
    assert await proofs.round() == 0  # the same file: not read again


@pytest.mark.parametrize("hung_in", ["scan_local", "_statement_files"])
async def test_a_ledger_on_a_hung_mount_holds_back_no_other_ledgers_checks(
    hung_in: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every local directory was listed in one worker thread, one after another, each round,
    and the statement files beside every checked archive looked for in another: one
    directory on a mount that hangs (a stuck NFS or FUSE server) held the round there, and
    no file of any other ledger was checked again, so a new full of a group with
    ``trust.require`` was never ranked, for as long as the mount hung. Each directory is now
    read in a thread of its own within ``scrape_timeout``: the hung one is left after it
    (what its checks said stands: the mount said nothing of its files) and not read again
    while that read runs, and the others are checked on schedule (no network: the daemon's
    own class, real archives; the hung read is the test's)."""
    import threading

    import tracker.proof.background.localfiles as localfiles
    from tracker.core.digests import Digests
    from tracker.ordering.index import Index
    from tracker.proof.records.localcopies import holder

    mount, ledger, archives, config = _mount_and_ledger(tmp_path, (100, 200, 300), "3s")
    hangs, answers, hung = [False], threading.Event(), []
    real = getattr(localfiles, hung_in)

    def read(what: Any) -> Any:
        if hangs[0] and str(mount) in (what if isinstance(what, str) else str(list(what))):
            hung.append(str(mount))
            answers.wait(60)
        return real(what)

    monkeypatch.setattr(localfiles, hung_in, read)
    digests = Digests()
    proofs = localfiles.LocalProofs(lambda: config, Index(), digests)

    def held(directory: Path, group: str, name: str) -> bool:
        return digests.of(holder(str(directory / name)), group, name) is not None

    assert await proofs.round() == 1
    hangs[0] = True
    try:
        for name, data in archives[1:]:
            (ledger / name).write_bytes(data)
            with trio.fail_after(30):  # the mount's listing is left after 3 s
                assert await proofs.round() == 1
            assert held(ledger, "b", name)
        assert held(mount, "a", archives[0][0])
        assert hung == [str(mount)]  # one thread there, however many rounds
    finally:
        answers.set()


async def test_the_check_of_a_file_the_validator_deleted_is_stopped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """agave deletes its oldest archives (``maximum_full_snapshot_archives_to_retain``) as
    it writes new ones. A check of a file deleted meanwhile ran to its end: a full's whole
    accounts proof, its ~100 GB held on the validator's disk by the open descriptor, and
    every other file's check (the new full, which a group's ``trust.require`` serves only
    once proven) waiting behind it. It is stopped at the next listing, and its result is
    never kept (no network: the daemon's own class, a real archive)."""
    import tracker.proof.background.localfiles as localfiles
    from tracker.core.digests import Digests
    from tracker.ordering.index import Index, TargetKey

    ledger, name, _data, config = _ledger_of_one_archive(tmp_path)
    started, stopped = trio.Event(), []
    real_check = localfiles.check_opened

    async def check_opened(fd: int, st: os.stat_result, *args: Any) -> Any:
        started.set()
        try:
            await trio.sleep_forever()  # a long proof
        except trio.Cancelled:
            stopped.append(True)
            raise
        return await real_check(fd, st, *args)  # pragma: no cover

    monkeypatch.setattr(localfiles, "check_opened", check_opened)
    proofs = localfiles.LocalProofs(lambda: config, Index(), Digests())
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            assert await proofs.round(nursery) == 1
            await started.wait()
            (ledger / name).unlink()  # the validator's retention
            await proofs.round(nursery)
            await trio.testing.wait_all_tasks_blocked()  # the cancelled check has run
            assert stopped == [True]
            assert proofs.of_target(TargetKey("local", str(ledger))) == []
            nursery.cancel_scope.cancel()


async def test_a_check_reading_from_a_hung_mount_gives_way_to_the_other_ledgers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each directory was listed in a thread of its own, but the checks run one at a time:
    a check already reading an archive when its mount hung waited in the kernel, holding
    that turn, and no other ledger's file was checked for as long as the mount hung (a new
    full of a group with ``trust.require`` never ranked). Once its directory's listing gets
    no answer within ``scrape_timeout``, the check gives way (its thread parked until the
    mount answers) and is tried again after ``retry_after`` (no network: the daemon's own
    class, real archives; the hung reads are the test's, of the mount's files only)."""
    import threading

    import tracker.proof.background.localfiles as localfiles
    from tracker.core.digests import Digests
    from tracker.ordering.index import Index
    from tracker.proof.records.localcopies import holder

    mount, ledger, archives, config = _mount_and_ledger(tmp_path, (100, 200), "1s")
    (first, _), (second, second_data) = archives
    answers, reading = threading.Event(), trio.Event()
    token = trio.lowlevel.current_trio_token()
    real_pread, real_scan = os.pread, localfiles.scan_local

    def pread(fd: int, count: int, offset: int) -> bytes:
        if os.readlink(f"/proc/self/fd/{fd}").startswith(str(mount)):
            trio.from_thread.run_sync(reading.set, trio_token=token)
            answers.wait(60)  # the mount hangs under the check's read
        return real_pread(fd, count, offset)

    def scan(path: str) -> Any:
        if path == str(mount) and reading.is_set():
            answers.wait(60)  # and under its listing once it does
        return real_scan(path)

    monkeypatch.setattr(os, "pread", pread)
    monkeypatch.setattr(localfiles, "scan_local", scan)
    digests = Digests()
    proofs = localfiles.LocalProofs(lambda: config, Index(), digests, every=0.05)

    async def checked() -> bool:
        return digests.of(holder(str(ledger / second)), "b", second) is not None

    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(proofs.run)
            with trio.fail_after(30):
                await reading.wait()  # the mount's check reads, then the mount hangs
            (ledger / second).write_bytes(second_data)
            # the hung listing is left after 1 s, the check within FollowingCheck.stopped's
            # 10 s: the other ledger's file is checked long before the mount answers
            await wait_until(checked, timeout=40)
            assert digests.of(holder(str(mount / first)), "a", first) is None
            nursery.cancel_scope.cancel()
    finally:
        answers.set()


async def test_a_check_opening_a_file_on_a_hung_mount_gives_way_to_the_other_ledgers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As a check reading a file on a hung mount gives way (the test above), so does one
    still opening it: the open ran in a thread cancellation could not reach, and held the
    one-at-a-time turn (no other ledger's file checked) for as long as the mount hung (no
    network: the daemon's own class, real archives; the hung opens are the test's, of the
    mount's files only, at the open's executor seam)."""
    import threading

    import tracker.cache.checked as checked
    import tracker.proof.background.localfiles as localfiles
    from tracker.core.digests import Digests
    from tracker.ordering.index import Index
    from tracker.proof.records.localcopies import holder

    mount, ledger, archives, config = _mount_and_ledger(tmp_path, (100, 200), "1s")
    (first, _), (second, second_data) = archives
    answers, opening, opened = threading.Event(), trio.Event(), threading.Event()
    token = trio.lowlevel.current_trio_token()
    real_open, real_scan = checked._open_regular, localfiles.scan_local

    def open_regular(path: str) -> tuple[int, os.stat_result]:
        if not path.startswith(str(mount)):
            return real_open(path)
        trio.from_thread.run_sync(opening.set, trio_token=token)
        answers.wait(60)  # the mount hangs under the check's open
        try:
            return real_open(path)
        finally:
            opened.set()

    def scan(path: str) -> Any:
        if path == str(mount) and opening.is_set():
            answers.wait(60)  # and under its listing once it does
        return real_scan(path)

    monkeypatch.setattr(checked, "_open_regular", open_regular)
    monkeypatch.setattr(localfiles, "scan_local", scan)
    digests = Digests()
    proofs = localfiles.LocalProofs(lambda: config, Index(), digests, every=0.05)

    async def checked_second() -> bool:
        return digests.of(holder(str(ledger / second)), "b", second) is not None

    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(proofs.run)
            with trio.fail_after(30):
                await opening.wait()  # the mount's check opens its file: the mount hangs
            (ledger / second).write_bytes(second_data)
            # the hung listing is left after 1 s, the open at once: the other ledger's file
            # is checked long before the mount answers
            await wait_until(checked_second, timeout=40)
            assert not opened.is_set()
            assert digests.of(holder(str(mount / first)), "a", first) is None
            nursery.cancel_scope.cancel()
    finally:
        answers.set()
    # its thread ends once the mount answers (what it opened is closed there: test_cache_unit)
    assert await trio.to_thread.run_sync(opened.wait, 60)
