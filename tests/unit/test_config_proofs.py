"""The config of proven archives: a group's ``trust.require`` and its default, the bounds of
the proofs' own keys (docs/architecture.md, "Proven archives")."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
from helpers_config import load, problem_at, problems
from helpers_statements import keypair_json

from tracker.config.files import load_signer
from tracker.config.warnings import proof_settings, spill_directory
from tracker.proof.accounts.budget import default_memory
from tracker.proof.accounts.machine import memory_backed, read_mountinfo
from tracker.proof.levels import Level


@pytest.mark.parametrize(
    ("settings", "group", "expected"),
    [
        ("", "", Level.MANIFEST),
        ("verify_archives: false\n", "", Level.STRUCTURE),
        ("", "trust: {require: structure}", Level.STRUCTURE),
        ("", "trust: {require: accounts}", Level.ACCOUNTS),
        ("", "trust: {require: cluster}", Level.CLUSTER),
        ("verify_archives: false\n", "trust: {require: structure}", Level.STRUCTURE),
    ],
)
def test_the_required_level_of_a_group(
    tmp_path: Path, settings: str, group: str, expected: Level
) -> None:
    config = load(tmp_path, f"{settings}target_groups: [{{group: g, {group}}}]\n")
    assert config.required_level(config.target_groups[0]) is expected


#: Nine certificate relays, one more than a cluster may name.
NINE_RELAYS = ", ".join(f"'https://r{n}.example/c'" for n in range(9))


@pytest.mark.parametrize(
    ("text", "path", "reason"),
    [
        (
            "target_groups: [{group: g, trust: {require: proven}}]\n",
            "target_groups[0].trust.require",
            "must be one of structure, manifest, accounts, cluster, got 'proven'",
        ),
        (
            "target_groups: [{group: g, trust: {require: 3}}]\n",
            "target_groups[0].trust.require",
            "must be one of structure, manifest, accounts, cluster, got an integer",
        ),
        (
            "verify_archives: false\ntarget_groups: [{group: g, trust: {require: manifest}}]\n",
            "target_groups[0].trust.require",
            "needs verify_archives: true",
        ),
        (
            "prove_accounts: false\ntarget_groups: [{group: g, trust: {require: accounts}}]\n",
            "target_groups[0].trust.require",
            "needs prove_accounts: true",
        ),
        (
            "prove_accounts: false\ntarget_groups: [{group: g, trust: {require: cluster}}]\n",
            "target_groups[0].trust.require",
            "needs prove_accounts: true",
        ),
        ("manifest_read: 1KiB\n", "manifest_read", "must be from 1048576 to"),
        ("prove_accounts_max: 10\n", "prove_accounts_max", "must be from 1000 to"),
        ("prove_accounts_memory: 1KiB\n", "prove_accounts_memory", "must be from 1048576 to"),
        ("prove_accounts_memory: lots\n", "prove_accounts_memory", "expected a size like"),
        ("prove_accounts_temp_dir: [a]\n", "prove_accounts_temp_dir", "expected"),
        ("proof_workers: 0\n", "proof_workers", "must be from 1 to 1024"),
        ("cluster_proof: {blocks: 0}\n", "cluster_proof.blocks", "must be from 1 to 512"),
        ("cluster_proof: {deadline: 0}\n", "cluster_proof.deadline", "must be from 1s"),
        (
            "cluster_proof: {also_rpc: ['ftp://x']}\n",
            "cluster_proof.also_rpc[0]",
            "not an absolute http(s) URL",
        ),
        (
            "cluster_proof: {certificates: '/var/certs'}\n",
            "cluster_proof.certificates",
            "not an absolute http(s) URL",
        ),
        (
            "cluster_proof: {certificates: ['https://a.example/c', 'ftp://b']}\n",
            "cluster_proof.certificates[1]",
            "not an absolute http(s) URL",
        ),
        (
            "cluster_proof: {certificates: ['https://a.example/c', '']}\n",
            "cluster_proof.certificates[1]",
            "a certificate relay's http(s) URL prefix, got an empty one",
        ),
        (  # one relay's word counted as two that agree
            "cluster_proof: {certificates: ['https://a.example/c', 'HTTPS://A.example:443/c/']}\n",
            "cluster_proof.certificates[1]",
            "the same relay as certificates[0]",
        ),
        (
            f"cluster_proof: {{certificates: [{NINE_RELAYS}]}}\n",
            "cluster_proof.certificates",
            "at most 8 certificate relays, got 9",
        ),
        (  # a port out of range said "not an absolute http(s) URL", unlike static_targets
            "cluster_proof: {also_rpc: ['http://127.0.0.1:99999']}\n",
            "cluster_proof.also_rpc[0]",
            "port must be a number from 1 to 65535",
        ),
        (
            "cluster_proof: {also_rpc: ['http://127.0.0.1:0']}\n",
            "cluster_proof.also_rpc[0]",
            "port must be a number from 1 to 65535",
        ),
    ],
)
def test_bad_proof_settings_name_their_key(
    tmp_path: Path, text: str, path: str, reason: str
) -> None:
    assert reason in problem_at(problems(tmp_path, text), path)


@pytest.mark.parametrize(
    ("value", "relays"),
    [
        # a plain string is one relay, as the key was before it took a list
        ("'https://certs.example/mainnet'", ("https://certs.example/mainnet",)),
        ("''", ()),
        ("[]", ()),
        (
            "['https://a.example/c', 'https://b.example/c/']",
            ("https://a.example/c", "https://b.example/c/"),
        ),
    ],
)
def test_the_certificate_relays_are_read(tmp_path: Path, value: str, relays: tuple[str]) -> None:
    text = f"cluster_proof: {{certificates: {value}}}\n"
    assert load(tmp_path, text).cluster_proof.certificates == relays
    assert load(tmp_path, "cluster_proof: {blocks: 4}\n").cluster_proof.certificates == ()


def test_prove_accounts_false_allows_require_manifest(tmp_path: Path) -> None:
    text = "prove_accounts: false\ntarget_groups: [{group: g, trust: {require: manifest}}]\n"
    assert load(tmp_path, text).prove_accounts is False


def test_the_proofs_defaults(tmp_path: Path) -> None:
    config = load(tmp_path, "target_groups: [{group: g}]\n")
    assert config.prove_accounts is True
    assert config.manifest_read == 512 * 1024**2
    assert config.prove_accounts_max is None  # a mainnet full is proven: no count bound
    # derived from the cores and the memory (the rule: test_the_default_memory_...)
    assert config.prove_accounts_memory == default_memory() >= 512 * 1024**2
    assert config.prove_accounts_temp_dir == ""
    assert config.proof_workers is None  # the machine's cores
    assert (config.cluster_proof.blocks, config.cluster_proof.deadline) == (32, 30.0)


@pytest.mark.parametrize(
    ("settings", "shown"),
    [
        (
            "proof_workers: 16\nprove_accounts_memory: 8GiB\n",
            "prove_accounts_memory 8192 MiB (set), proof_workers 16 (set), "
            "scan processes 15 (used from 8 proof_workers up)",
        ),
        (
            "proof_workers: 16\nprove_accounts_memory: 512MiB\n",
            "proof_workers 16 (set), scan processes 2 (used from 8 proof_workers up)",
        ),
        (
            "proof_workers: 4\nprove_accounts_memory: 8GiB\n",
            "proof_workers 4 (set), scan processes 0 (used from 8 proof_workers up)",
        ),
        ("prove_accounts: false\n", ""),
    ],
)
def test_check_config_shows_what_the_proofs_run_within(
    tmp_path: Path, settings: str, shown: str
) -> None:
    config = load(tmp_path, settings + "target_groups: [{group: g, trust: {require: manifest}}]\n")
    said = proof_settings(config)
    assert said.endswith(shown) if shown else said == ""


def _keypair(path: Path, mode: int = 0o600, content: bytes | None = None) -> Path:
    """A keypair file as solana-keygen writes it, with ``mode``."""
    path.write_bytes(content if content is not None else keypair_json(bytes(range(32))))
    path.chmod(mode)
    return path


def test_a_signing_key_of_mode_0600_is_taken(tmp_path: Path) -> None:
    key = _keypair(tmp_path / "attest.json")
    config = load(
        tmp_path, f"attest: {{key: {key}, valid_for: 1d}}\ntarget_groups: [{{group: g}}]\n"
    )
    assert config.attest is not None
    assert (config.attest.key, config.attest.valid_for) == (str(key), 86400.0)
    assert load_signer(config.attest.key).public_key  # the key it names signs


@pytest.mark.parametrize(
    ("mode", "content", "reason"),
    [
        (0o644, None, "has mode 0644; a signing key must be 0600"),
        (0o640, None, "has mode 0640; a signing key must be 0600"),
        (0o600, b"[1, 2]", "not a JSON array of 64 bytes"),
        (0o600, b"\xff" * 10_000, "10000 bytes, more than 4096"),
    ],
)
def test_a_bad_signing_key_names_attest_key(
    tmp_path: Path, mode: int, content: bytes | None, reason: str
) -> None:
    key = _keypair(tmp_path / "attest.json", mode, content)
    found = problem_at(problems(tmp_path, f"attest: {{key: {key}}}\n"), "attest.key")
    assert reason in found
    assert "[" not in found.split(":", 1)[-1] or content == b"[1, 2]"  # never the key's bytes


def test_a_signing_key_behind_a_link_or_a_fifo_is_refused_at_once(tmp_path: Path) -> None:
    key = _keypair(tmp_path / "real.json")
    (tmp_path / "link.json").symlink_to(key)
    os.mkfifo(tmp_path / "fifo.json", 0o600)
    for name, reason in (("link.json", "cannot read"), ("fifo.json", "not a regular file")):
        found = problem_at(
            problems(tmp_path, f"attest: {{key: {tmp_path / name}}}\n"), "attest.key"
        )
        assert reason in found


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can give a file to another user")
def test_a_signing_key_of_another_user_is_refused(tmp_path: Path) -> None:
    key = _keypair(tmp_path / "attest.json")
    os.chown(key, 65534, 65534)
    found = problem_at(problems(tmp_path, f"attest: {{key: {key}}}\n"), "attest.key")
    assert "owned by uid 65534, not the tracker's user" in found


@pytest.mark.parametrize(
    ("settings", "warned"),
    [
        ("prove_accounts: true\n", None),  # 512 MiB, the default
        ("prove_accounts_memory: 427MiB\n", None),
        (
            "prove_accounts_memory: 426MiB\n",
            "prove_accounts_memory: 426 MiB bounds the accounts proofs' index (106 MiB of it)"
            " but not the tracker: the proving processes need ~320 MiB besides it; at least"
            " 427 MiB bounds both",
        ),
        ("prove_accounts_memory: 1MiB\n", "prove_accounts_memory: 1 MiB bounds"),
        ("prove_accounts_memory: 1MiB\nprove_accounts: false\n", None),
    ],
)
def test_a_budget_below_what_the_processes_need_warns(
    tmp_path: Path, settings: str, warned: str | None
) -> None:
    found = [w for w in load(tmp_path, settings).warnings if w.startswith("prove_accounts_mem")]
    if warned is None:
        assert found == []
    else:
        assert len(found) == 1 and found[0].startswith(warned)


@pytest.mark.parametrize(
    ("bytes_", "bounded"),
    [(1024**2, False), (256 * 1024**2, False), (426 * 1024**2, False), (427 * 1024**2, True)],
)
def test_bounds_the_process_is_the_room_plus_the_fixed_cost(bytes_: int, bounded: bool) -> None:
    from tracker.proof.accounts.budget import PROCESS_MINIMUM, bounds_the_process

    assert bounds_the_process(bytes_) is bounded
    assert PROCESS_MINIMUM == 427 * 1024**2


@pytest.mark.parametrize(
    ("settings", "warned"),
    [
        ("", True),
        ("rpc: http://127.0.0.1:8899\n", False),
    ],
)
def test_require_cluster_without_rpc_warns(tmp_path: Path, settings: str, warned: bool) -> None:
    text = f"{settings}target_groups: [{{group: g, trust: {{require: cluster}}}}]\n"
    config = load(tmp_path, text)
    found = [w for w in config.warnings if "require: cluster needs `rpc`" in w]
    assert bool(found) is warned


@pytest.mark.parametrize(
    ("settings", "targets", "says"),
    [
        pytest.param("", "http_targets: {targets: ['http://n:1/']}", None, id="no attest"),
        pytest.param(
            "ATTEST",
            "http_targets: {targets: ['http://n:1/']}",
            "redirect mode holds no copy",
            id="redirect mode: nothing held",
        ),
        pytest.param("ATTEST", "local_targets: {paths: [LEDGER]}", "", id="local files: signed"),
        pytest.param(
            "ATTESTproxy_snapshot_downloads: true\nproxy_snapshot_cache_dir: CACHE\n",
            "http_targets: {targets: ['http://n:1/']}",
            "",
            id="a disk cache: signed",
        ),
        pytest.param(
            "ATTESTproxy_snapshot_downloads: true\n",
            "http_targets: {targets: ['http://n:1/']}",
            "proxy mode without proxy_snapshot_cache_dir holds no copy",
            id="proxy mode uncached: nothing held",
        ),
        pytest.param(
            "ATTESTverify_archives: false\n",
            "local_targets: {paths: [LEDGER]}",
            "verify_archives is false",
            id="nothing checked",
        ),
    ],
)
def test_attest_says_when_nothing_can_be_signed(
    tmp_path: Path, settings: str, targets: str, says: str | None
) -> None:
    """docs/http-api.md, "Signed statements": only copies the tracker holds and checked are
    signed; a config whose ``attest`` can sign nothing says so (check-config, the page)."""
    from tracker.config.warnings import nothing_signed

    key = tmp_path / "key.json"
    key.write_bytes(keypair_json(bytes([3]) * 32))
    os.chmod(key, 0o600)
    (tmp_path / "ledger").mkdir()
    settings = settings.replace("ATTEST", f"attest: {{key: {key}}}\n")
    settings = settings.replace("CACHE", str(tmp_path / "cache"))
    targets = targets.replace("LEDGER", str(tmp_path / "ledger"))
    config = load(tmp_path, f"{settings}target_groups: [{{group: g, {targets}}}]\n")
    found = nothing_signed(config)
    warned = [w for w in config.warnings if w.startswith("attest: ")]
    if not says:
        assert found == "" and warned == []
    else:
        assert says in found and warned == [f"attest: {found}"]


@pytest.mark.parametrize(
    ("settings", "targets", "warned"),
    [
        pytest.param("", "http_targets: {targets: ['http://n:1/']}", True, id="redirect mode"),
        pytest.param("", "local_targets: {paths: [LEDGER]}", False, id="local files: read whole"),
        pytest.param(
            "proxy_snapshot_downloads: true\nproxy_snapshot_cache_dir: CACHE\n",
            "http_targets: {targets: ['http://n:1/']}",
            False,
            id="a disk cache reads them whole",
        ),
        pytest.param(
            "proxy_snapshot_downloads: true\n",
            "http_targets: {targets: ['http://n:1/']}",
            True,
            id="proxy mode uncached",
        ),
    ],
)
def test_require_accounts_out_of_reach_of_head_reads_is_said(
    tmp_path: Path, settings: str, targets: str, warned: bool
) -> None:
    """docs/http-api.md, "Proven archives": a head read proves a copy to manifest at most."""
    (tmp_path / "ledger").mkdir()
    settings = settings.replace("CACHE", str(tmp_path / "cache"))
    targets = targets.replace("LEDGER", str(tmp_path / "ledger"))
    text = f"{settings}target_groups: [{{group: g, trust: {{require: accounts}}, {targets}}}]\n"
    found = [w for w in load(tmp_path, text).warnings if ".trust.require: accounts" in w]
    assert bool(found) is warned, found
    if warned:
        assert found[0].startswith("target_groups[0].trust.require: accounts: without a disk")


@pytest.mark.parametrize(
    ("settings", "warned"),
    [
        ("", False),  # warned otherwise: no rpc at all
        ("rpc: http://127.0.0.1:8899\n", True),
        (
            "rpc: http://127.0.0.1:8899\ncluster_proof: {also_rpc: ['http://127.0.0.2:8899']}\n",
            False,
        ),
    ],
)
def test_require_cluster_on_one_rpc_warns(tmp_path: Path, settings: str, warned: bool) -> None:
    # One lying RPC reaches two thirds with a voter it invents (docs/http-api.md, "The
    # cluster level").
    text = f"{settings}target_groups: [{{group: g, trust: {{require: cluster}}}}]\n"
    config = load(tmp_path, text)
    found = [w for w in config.warnings if "rests on one RPC's word" in w]
    assert bool(found) is warned
    if warned:
        assert found[0].startswith("target_groups[0].trust.require: cluster rests on one RPC")


MiB_ = 1024**2


@pytest.mark.parametrize(
    ("total_mib", "wanted", "workers"),
    [
        (512, 1, 1),  # two cores: the one worker FIXED_COST counts
        (512, 15, 2),  # sixteen cores, the default budget: half of 192 MiB pays one more
        (256, 15, 1),  # a small budget: the first only
        (2048, 15, 9),  # eight, then three frame threads, then one more
        (3072, 15, 15),  # a budget that pays for every core and the frame threads
        (2048, 31, 9),  # thirty-two cores: the same half of 1,728 MiB
        (100_000, 0, 1),  # one core: still one child
    ],
)
def test_a_budget_pays_for_the_hashing_processes_it_allows(
    total_mib: int, wanted: int, workers: int
) -> None:
    from tracker.proof.accounts.budget import (
        FIXED_COST,
        FRAME_THREAD_COST,
        WORKER_COST,
        AccountsLimits,
        paid_within,
        room_of,
        shared_limits,
    )

    total = total_mib * MiB_
    assert paid_within(total, wanted + 1)[0] == workers  # wanted: besides the check's own
    budget, slots, frames = shared_limits(total, wanted + 1)
    assert slots.total == workers
    assert budget.room == room_of(total, workers, frames.total)
    paid = FIXED_COST + (workers - 1) * WORKER_COST + frames.total * FRAME_THREAD_COST
    if total >= paid + total // 4:
        # The whole process tree within the budget: the check, its workers, its frame
        # threads and the index.
        assert budget.room + paid <= total
    limits = AccountsLimits(memory=total, workers=wanted + 1)
    assert limits.hash_workers == workers
    assert limits.shared().room == room_of(total, workers, limits.frame_threads)


@pytest.mark.parametrize(
    ("cores", "ram_gib", "memory_mib", "hashers", "frames"),
    [
        (1, 8, 512, 1, 0),  # one core: the least budget, one child
        (2, 24, 512, 1, 0),  # this bench's host: unchanged
        (4, 64, 1312, 3, 3),  # a hashing process on every core but one, three frame threads
        (16, 128, 2656, 15, 3),
        (32, 256, 4448, 31, 3),
        (16, 8, 1024, 7, 0),  # little memory: an eighth of it
        (16, 2, 512, 2, 0),  # less: never below the least budget
    ],
)
def test_the_default_memory_pays_for_every_core_within_the_machines_memory(
    cores: int, ram_gib: int, memory_mib: int, hashers: int, frames: int
) -> None:
    from tracker.proof.accounts.budget import paid_within

    memory = default_memory(cores, ram_gib * 1024**3)
    assert memory == memory_mib * MiB_
    assert paid_within(memory, cores) == (hashers, frames)


def test_proof_workers_set_derives_the_memory_from_them(tmp_path: Path) -> None:
    config = load(tmp_path, "proof_workers: 16\ntarget_groups: [{group: g}]\n")
    assert config.prove_accounts_memory == default_memory(16)
    config = load(tmp_path, "proof_workers: 16\nprove_accounts_memory: 1GiB\n")
    assert config.prove_accounts_memory == 1024 * MiB_  # set: kept as it is


@pytest.mark.parametrize(
    ("settings", "warned"),
    [
        ("rpc: http://127.0.0.1:8899\n", False),  # no relay: nothing lifts after the migration
        ("rpc: http://127.0.0.1:8899\ncluster_proof: {certificates: 'http://r.example/c'}\n", True),
        (
            "rpc: http://127.0.0.1:8899\n"
            "cluster_proof: {certificates: ['http://r.example/c', 'http://s.example/c']}\n",
            False,
        ),
    ],
)
def test_require_cluster_on_one_certificate_relay_warns(
    tmp_path: Path, settings: str, warned: bool
) -> None:
    # A relay's footer is its word: one that lies lifts a forged archive of a real block
    # (docs/http-api.md, "After the migration: finality certificates").
    text = f"{settings}target_groups: [{{group: g, trust: {{require: cluster}}}}]\n"
    found = [w for w in load(tmp_path, text).warnings if "one certificate relay's word" in w]
    assert bool(found) is warned
    if warned:
        assert found[0].startswith("target_groups[0].trust.require: cluster after the Alpenglow")
        assert found[0].endswith("in cluster_proof.certificates, all of which must agree")


#: The start of the warning of a spill on a memory-backed file system.
IN_MEMORY = "is on a memory-backed file system (tmpfs): their spilled index"


def _spill_warnings(config_warnings: tuple[str, ...]) -> list[str]:
    return [w for w in config_warnings if w.startswith("prove_accounts_temp_dir: ")]


def test_a_spill_directory_in_memory_is_warned_of(tmp_path: Path, shm_dir: Path) -> None:
    """The proofs' spill counts against the tracker's memory on a tmpfs (its cgroup's
    shmem): check-config and serve's start say so, naming the key, the directory and why."""
    spill = shm_dir / "spill"
    config = load(tmp_path, f"prove_accounts_temp_dir: {spill}\ntarget_groups: [{{group: g}}]\n")
    [warning] = _spill_warnings(config.warnings)
    assert warning.startswith(f"prove_accounts_temp_dir: {str(spill)!r} {IN_MEMORY}"), warning
    assert warning.endswith("past prove_accounts_memory; name a directory on disk")
    # nothing is proven, nothing spills
    text = (
        f"prove_accounts: false\nprove_accounts_temp_dir: {spill}\ntarget_groups: [{{group: g}}]\n"
    )
    assert _spill_warnings(load(tmp_path, text).warnings) == []


def test_a_default_spill_directory_in_memory_is_warned_of(
    tmp_path: Path, shm_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without ``prove_accounts_temp_dir`` the warning says which default is in memory: the
    system's temporary directory (TMPDIR), or the cache directory's ``.accounts-proof``."""
    monkeypatch.setattr(tempfile, "tempdir", str(shm_dir))  # as TMPDIR=/dev/shm/... gives
    config = load(tmp_path, "target_groups: [{group: g}]\n")
    assert spill_directory(config) == (str(shm_dir), "the system's temporary directory")
    [warning] = _spill_warnings(config.warnings)
    unset = "unset, so the accounts proofs spill to the system's temporary directory"
    assert warning.startswith(f"prove_accounts_temp_dir: {unset} {str(shm_dir)!r} {IN_MEMORY}")
    cache = shm_dir / "cache"
    config = load(tmp_path, f"proxy_snapshot_cache_dir: {cache}\ntarget_groups: [{{group: g}}]\n")
    [warning] = _spill_warnings(config.warnings)
    where = f"in the cache directory {str(cache / '.accounts-proof')!r}"
    assert warning.startswith(
        f"prove_accounts_temp_dir: unset, so the accounts proofs spill to {where}"
    )


def test_a_spill_directory_on_disk_is_not_warned_of(tmp_path: Path) -> None:
    """Judged by this host's mounts (its temporary directory may be a tmpfs): the warning
    comes exactly when the directory's file system is memory."""
    spill = tmp_path / "spill"
    config = load(tmp_path, f"prove_accounts_temp_dir: {spill}\ntarget_groups: [{{group: g}}]\n")
    mounts = read_mountinfo()
    assert mounts is not None
    expected = memory_backed(mounts, os.path.realpath(spill))
    assert bool(_spill_warnings(config.warnings)) is expected
