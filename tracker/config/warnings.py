"""What a valid config probably did not mean: one warning line each, key path first.

``load_config`` puts them in ``Config.warnings``; ``check-config`` and the service log them,
and the command-line overrides recompute them (:mod:`tracker.config.overrides`).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence

import attrs

from tracker.config.bounded import no_answer
from tracker.config.files import PathLooks, Seen, TargetsRead
from tracker.config.problems import lines
from tracker.config.schema import TARGET_KINDS, Config, TargetGroup, rpc_identity
from tracker.config.sections import proof_problems, store_problems
from tracker.core.hosts import party_of, voice_of
from tracker.core.snapshots import MIN_DISCOVERED_AGREEING, is_known
from tracker.observability.redact import redact_text, redact_url
from tracker.proof.accounts.budget import (
    CACHE_TEMP,
    FIXED_COST,
    PROCESS_MINIMUM,
    SCAN_FROM_WORKERS,
    AccountsLimits,
    bounds_the_process,
    default_memory,
    default_workers,
    derived_from,
    limit_problem,
    room_of,
    scan_processes,
)
from tracker.proof.accounts.machine import cgroup_memory, in_memory
from tracker.proof.levels import Level


def config_warnings(config: Config, looks: PathLooks | None = None) -> list[str]:
    """What is valid in ``config`` but probably unintended or unguarded, one line each
    (key path first); ``load_config`` puts them in ``Config.warnings``, passing the
    ``looks`` its checks took of the ``local_targets`` directories (else looked at now)."""
    looked = looks if looks is not None else PathLooks()
    found: list[str] = []
    if config.proxy_snapshot_cache_dir and not config.proxy_snapshot_downloads:
        found.append(
            "proxy_snapshot_cache_dir: caches no archive while proxy_snapshot_downloads is false"
            " (the learned figures and the accounts proofs' spill still go there)"
        )
    if not config.target_groups:
        found.append("target_groups: none configured; the tracker will know no snapshots")
    entries = config.group_entries or range(len(config.target_groups))
    for index, group in zip(entries, config.target_groups, strict=True):
        found += [
            f"target_groups[{index}]{line}" for line in _group_warnings(group, config, looked)
        ]
    for later, earlier in similar_group_names([g.group for g in config.target_groups]):
        name, other = config.target_groups[later].group, config.target_groups[earlier].group
        found.append(
            f"target_groups[{entries[later]}].group: {name!r} differs from {other!r}"
            f" (target_groups[{entries[earlier]}]) only {_how_similar(name, other)}: they are"
            " two groups (entries merge into one only under the same name); if they are one"
            " cluster, give them one name"
        )
    found += shared_rpc_warnings(config)
    memory = memory_warning(config)
    if memory:
        found.append(f"prove_accounts_memory: {memory}")
    over = (
        limit_problem(config.prove_accounts_memory, cgroup_memory())
        if config.prove_accounts
        else ""
    )
    if over:
        found.append(f"prove_accounts_memory: {over}")
    spill = spill_warning(config, looked)
    if spill:
        found.append(f"prove_accounts_temp_dir: {spill}")
    unsigned = nothing_signed(config)
    if unsigned:
        found.append(f"attest: {unsigned}")
    return found


#: The shortest group names compared letter by letter (:func:`similar_group_names`): below
#: it a letter more or less is a name of its own (``eu``, ``eus``), not a slip.
SIMILAR_FROM = 4


def similar_group_names(names: Sequence[str]) -> list[tuple[int, int]]:
    """Each name of ``names`` (group names, each once) that reads as an earlier one
    mistyped, as ``(later, earlier)`` indexes, with the first it resembles: the same but
    for case (``Mainnet``, ``mainnet``), or one letter more or less and the same otherwise
    (``mainet``, ``mainnet``), both at least :data:`SIMILAR_FROM` long. A different letter
    (``node-a``, ``node-b``) or a digit more (``testnet``, ``testnet2``) makes a name of
    its own: never warned. Pure."""
    # By lookups, not pairs: every pair of 20,000 groups (a 1.2 MB file, within the size
    # bound) held a load for minutes. A name one letter longer than an earlier one is that
    # one with a letter removed (looked up among the earlier names), one shorter is an
    # earlier one with a letter removed (looked up among their removals).
    found: list[tuple[int, int]] = []
    first: dict[str, int] = {}  # each folded name: its first index
    shortened: dict[str, int] = {}  # an earlier name less one letter: its first index
    for later, name in enumerate(name.casefold() for name in names):
        resembled = [first.get(name), shortened.get(name) if len(name) >= SIMILAR_FROM else None]
        removals = _letter_removals(name)
        resembled += [first.get(less) for less in removals]
        earlier = min((at for at in resembled if at is not None), default=None)
        if earlier is not None:
            found.append((later, earlier))
        first.setdefault(name, later)
        for less in removals:
            shortened.setdefault(less, later)
    return found


def _letter_removals(name: str) -> set[str]:
    """``name`` less one of its letters (a-z and the other alphabets'), each way, where what
    is left is at least :data:`SIMILAR_FROM` long."""
    if len(name) - 1 < SIMILAR_FROM:
        return set()
    return {name[:at] + name[at + 1 :] for at, letter in enumerate(name) if letter.isalpha()}


def _how_similar(name: str, other: str) -> str:
    """How two names of :func:`similar_group_names` differ, for the warning."""
    return "in case" if name.casefold() == other.casefold() else "by one letter"


def shared_rpcs(config: Config) -> list[tuple[str, tuple[str, ...]]]:
    """Each RPC (one written twice, ``…:8899/`` and ``HTTP://…``, is one) whose slot (and
    votes) two or more groups take (:meth:`Config.group_rpc`), with those groups: the URL
    as the first of them resolves it. Pure."""
    by_rpc: dict[str, tuple[str, list[str]]] = {}
    for url, groups in config.slot_rpcs().items():
        _first, names = by_rpc.setdefault(rpc_identity(url), (url, []))
        names.extend(groups)
    return [(url, tuple(names)) for url, names in by_rpc.values() if len(names) > 1]


def shared_rpc_warnings(config: Config) -> list[str]:
    """One line per RPC that two or more groups resolve to. Not an error: two groups may be
    one cluster (two regions); but if they are different clusters, one cluster's slot
    screens the other's archives (trust.max_slot_ahead: the higher cluster's newer ones are
    never ranked), answers its /v1/health and would prove its archives by its votes
    (trust.require: cluster)."""
    found = []
    for url, groups in shared_rpcs(config):
        names = ", ".join(groups)
        found.append(
            f"target_groups: the groups {names} all take their cluster slot from the RPC"
            f" {redact_url(url)!r} (trust.max_slot_ahead, /v1/health, the cluster level's"
            " votes): if they are different clusters, give each cluster its own `rpc` in"
            " its group"
        )
    return found


def memory_warning(config: Config) -> str:
    """Why ``prove_accounts_memory`` bounds the proofs' index but not their processes (""
    when it bounds both, or nothing is proven): below ``PROCESS_MINIMUM`` the index keeps
    within a quarter of it and the interpreter, numpy, numba and the hashing processes
    (~320 MiB) come on top (docs/architecture.md, "Bounded memory"). Valid, since the
    proofs still prove and spill (tests use budgets of a MiB), so a warning, not a refusal."""
    total = config.prove_accounts_memory
    if not config.prove_accounts or bounds_the_process(total):
        return ""
    return (
        f"{total // 1024**2} MiB bounds the accounts proofs' index ({room_of(total) // 1024**2}"
        f" MiB of it) but not the tracker: the proving processes need ~{FIXED_COST // 1024**2}"
        f" MiB besides it; at least {PROCESS_MINIMUM // 1024**2} MiB bounds both"
    )


def spill_directory(config: Config) -> tuple[str, str]:
    """Where the daemon's accounts proofs spill their index, and how the config says so
    ("" when ``prove_accounts_temp_dir`` names it): as ``ProxyStreamer`` gives its proofs
    the directory, ``.accounts-proof`` in the cache directory, else the system's temporary
    directory (``TMPDIR``)."""
    if config.prove_accounts_temp_dir:
        return config.prove_accounts_temp_dir, ""
    if config.proxy_snapshot_cache_dir:
        return os.path.join(config.proxy_snapshot_cache_dir, CACHE_TEMP), "in the cache directory"
    return tempfile.gettempdir(), "the system's temporary directory"


def spill_warning(config: Config, looks: PathLooks) -> str:
    """Why the accounts proofs' spill directory defeats ``prove_accounts_memory`` ("" when
    it does not, nothing is proven, or its place did not answer within the looks' bound):
    it is on a memory-backed file system (tmpfs, ramfs: /tmp on many hosts and containers),
    where the spilled index (~40 bytes a stored version, tens of GB for a mainnet full)
    counts against the tracker's memory, so the kernel kills it where the proof would have
    stopped at "no room" (docs/architecture.md, "Bounded memory")."""
    if not config.prove_accounts:
        return ""
    directory, how = spill_directory(config)
    if not in_memory(directory, lambda path: looks.look(path).real):
        return ""
    unset = f"unset, so the accounts proofs spill to {how} {directory!r}" if how else ""
    return (
        f"{unset or repr(directory)} is on a memory-backed file system (tmpfs): their spilled"
        " index (tens of GB for a mainnet full) counts against the tracker's memory, past"
        " prove_accounts_memory; name a directory on disk"
    )


def proof_settings(config: Config) -> str:
    """What the accounts proofs run within, as ``check-config`` shows it ("" when nothing is
    proven): ``prove_accounts_memory`` and ``proof_workers``, each said to be derived (from
    the cores and memory the tracker may use, a container's limits included:
    ``proof.accounts.budget.derived_from``) or set, and the scan processes they give."""
    if not config.prove_accounts:
        return ""
    cores = default_workers()
    workers = config.proof_workers or cores
    memory = config.prove_accounts_memory
    derived = default_memory(config.proof_workers)
    how = f"derived from {derived_from(workers)}" if memory == derived else "set"
    # the processes both reads scan in (from this many proof_workers, as many as the budget
    # pays hashing processes for): docs/architecture.md, "The accounts level" → "Every core"
    scanning = scan_processes(AccountsLimits(memory=memory, workers=workers))
    return (
        f"accounts proofs within prove_accounts_memory {memory // 1024**2} MiB ({how}), "
        f"proof_workers {workers} ({'the cores' if config.proof_workers is None else 'set'}), "
        f"scan processes {scanning} (used from {SCAN_FROM_WORKERS} proof_workers up)"
    )


def nothing_signed(config: Config) -> str:
    """Why ``config``'s ``attest`` can sign nothing ("" when it can, or signs nothing
    anyway): a statement names the SHA-256 of a whole copy, so only copies the tracker holds
    and checked are signed (docs/http-api.md, "Signed statements"): its disk cache's, its
    bucket's, its local files'. Redirect mode holds none but local files (a head read
    proves a copy's manifest, not its bytes); shown by ``check-config`` and the status
    page."""
    if config.attest is None:
        return ""
    if not config.verify_archives:
        return "nothing can be signed: verify_archives is false, so no copy is checked"
    cached = config.proxy_snapshot_downloads and bool(config.proxy_snapshot_cache_dir)
    local = any(g.local_targets is not None for g in config.target_groups)
    if cached or local:
        return ""
    if config.proxy_snapshot_downloads:
        return (
            "nothing can be signed: proxy mode without proxy_snapshot_cache_dir holds no copy"
            " (only a disk cache's, a bucket's or local_targets' files are signed)"
        )
    return (
        "nothing can be signed: redirect mode holds no copy (a head read proves a copy's"
        " manifest, never its whole bytes); only a disk cache's, a bucket's or"
        " local_targets' files are signed"
    )


#: The kinds whose copies are read over the network (a local target's files are on disk).
_REMOTE_KINDS = tuple(kind for kind in TARGET_KINDS if kind != "local_targets")


def brings_targets(group: TargetGroup, kind: str) -> bool:
    """True when ``group``'s ``kind`` (one of TARGET_KINDS) can bring a target: it is set,
    and a list of targets or paths is not empty (``static_targets: {targets: []}`` brings
    none; a file, Consul or discovery may list some later)."""
    section = getattr(group, kind)
    if section is None:
        return False
    listed = getattr(section, "targets", getattr(section, "paths", None))
    return listed is None or bool(listed)


def _group_warnings(group: TargetGroup, config: Config, looks: PathLooks) -> list[str]:
    found: list[str] = []
    if not any(brings_targets(group, kind) for kind in TARGET_KINDS):
        found.append(": no targets of any kind; the group stays empty")
    rpc = config.group_rpc(group.group)  # its own, else the top-level one
    if group.cluster_discovery is not None and not rpc:
        agreeing = max(MIN_DISCOVERED_AGREEING, group.trust.min_agreeing_sources)
        found.append(
            ".cluster_discovery: no `rpc` to check slots against (max_slot_ahead): discovered"
            f" nodes that agree (at least {agreeing}) can make any slot, however far ahead,"
            " the best; set `rpc`"
        )
    if group.trust.require == Level.CLUSTER and not rpc:
        found.append(
            ".trust.require: cluster needs `rpc` to read the votes (docs/architecture.md,"
            ' "The cluster level"): every archive of the group stays below it; set `rpc`'
        )
    remote = any(getattr(group, kind) is not None for kind in _REMOTE_KINDS)
    cached = config.proxy_snapshot_downloads and bool(config.proxy_snapshot_cache_dir)
    if group.trust.require == Level.ACCOUNTS and remote and not cached:
        # Without a disk cache only head reads prove a copy over the network, and they stop
        # at its manifest (docs/http-api.md, "Proven archives"): no such full reaches it.
        found.append(
            ".trust.require: accounts: without a disk cache a copy over the network is proven"
            " by a head read, to manifest at most: no full of this group's sources will be"
            " handed out (local files, read whole, can reach it); require manifest, or use"
            " proxy mode with proxy_snapshot_cache_dir"
        )
    if group.trust.require == Level.CLUSTER and rpc and len(config.cluster_rpcs(group.group)) == 1:
        # the witnesses of the group's own rpc are its also_rpc, the top-level's are not
        where = "the group's also_rpc" if group.rpc else "cluster_proof.also_rpc"
        found.append(
            ".trust.require: cluster rests on one RPC's word: a lying `rpc` reaches a"
            ' two-thirds majority with a single voter (docs/http-api.md, "The cluster'
            f' level"); name RPCs run by others in {where}'
        )
    relays = config.group_certificates(group.group)
    if group.trust.require == Level.CLUSTER and rpc and len(relays) == 1:
        # the footer's bank hash is the relay's word: a liar lifts a forged archive
        where = "the group's certificates" if group.certificates else "cluster_proof.certificates"
        found.append(
            ".trust.require: cluster after the Alpenglow migration rests on one certificate"
            " relay's word for the bank hash (docs/http-api.md, \"After the migration: finality"
            f' certificates"); name relays run by others in {where}, all of which must agree'
        )
    if group.file_targets is not None:
        path = group.file_targets.path
        found += [
            f".file_targets.path: {line}"
            for line in targets_warning(path, looks.targets(path), looks.bound)
        ]
    for at, directory in enumerate(group.local_targets.paths if group.local_targets else ()):
        found += [
            f".local_targets.paths[{at}]: {line}"
            for line in directory_warning(directory, looks.look(directory).kind, looks.bound)
        ]
    if group.basic_auth is not None and group.bearer_auth is not None:
        found.append(": both basic_auth and bearer_auth set; the bearer token is sent")
    found += _unmatched_known_sources(group, looks) + _shadowed_targets(group)
    return found + _one_machine_targets(group, looks)


def _one_machine_targets(group: TargetGroup, looks: PathLooks) -> list[str]:
    """With ``min_agreeing_sources`` of 2 or more: configured targets of one machine (a
    sidecar and its validator's RPC, one host's ports; an IPv6 /48) count as as many
    targets, so that machine alone meets the agreement (docs/configuration.md, ``trust``)."""
    need = group.trust.min_agreeing_sources
    if need < 2:
        return []
    machines: dict[str, list[str]] = {}
    for target in _configured_targets(group, looks):
        if target.startswith(("http://", "https://")):  # a local target is its own
            machines.setdefault(party_of(voice_of(target)), []).append(target)
    return [
        f".trust.min_agreeing_sources: {need}: {', '.join(repr(redact_text(t)) for t in on)}"
        f" are one machine ({machine}) and count as {len(on)} targets, so it alone meets"
        " the agreement; list one of them, or raise the setting"
        for machine, on in machines.items()
        if len(on) >= 2
    ]


def directory_warning(directory: str, kind: Seen, bound: float) -> list[str]:
    """The warning of a ``local_targets`` directory found ``kind`` at load (looked at
    within ``bound`` seconds), if any. Pure."""
    if kind is Seen.MISSING:  # (a link to nothing: a mount not up yet)
        return [
            f"{directory!r} does not exist yet (listed every scrape: its target shows failing"
            " until it appears)"
        ]
    if kind is Seen.HUNG:  # its listings are bounded at runtime (discovery.local)
        return [
            f"{no_answer(directory, bound)}: not checked; listed every scrape, its target"
            " shows failing until it answers"
        ]
    return []


def targets_warning(path: str, read: TargetsRead, bound: float) -> list[str]:
    """The warning of a ``file_targets`` file found as ``read`` at load (read within
    ``bound`` seconds), if any. Pure."""
    if read.missing:
        return [f"{path!r} does not exist yet (re-read every scrape)"]
    if read.hung:  # as a hung directory's (docs/configuration.md, "Paths on a hung mount")
        return [f"{no_answer(path, bound)}: not checked; re-read every scrape"]
    return []


def _shadowed_targets(group: TargetGroup) -> list[str]:
    """A sidecar and an HTTP target of the same URL are one target in the index: one of
    them would silently shadow the other."""
    if group.static_targets is None or group.http_targets is None:
        return []
    urls = {url: index for index, url in enumerate(group.http_targets.targets)}
    return [
        f".static_targets.targets[{index}]: the sidecar {host!r} has the URL of"
        f" http_targets.targets[{urls[url]}] ({redact_text(url)!r}): one target shadows the"
        " other; keep one of them"
        for index, host in enumerate(group.static_targets.targets)
        if (url := group.sidecar_url(host)) in urls
    ]


def _unmatched_known_sources(group: TargetGroup, looks: PathLooks) -> list[str]:
    """A ``known_sources`` entry that names none of the group's configured targets trusts
    nothing (a typo, or a target since removed)."""
    targets = _configured_targets(group, looks)
    found = []
    found_later = group.consul_sd_config is not None or group.cluster_discovery is not None
    # a file_targets file that did not answer (a hung mount) may list it
    unread = group.file_targets is not None and looks.targets(group.file_targets.path).hung
    for index, entry in enumerate(group.trust.known_sources):
        if any(is_known(target, {entry}) for target in targets):
            continue
        line = (
            f".trust.known_sources[{index}]: {redact_text(entry)!r} matches no configured"
            " target of the group, so it trusts nothing"
        )
        if found_later:
            line += " (unless Consul or cluster discovery finds it)"
        if unread:
            line += " (unless file_targets.path, which did not answer, lists it)"
        found.append(line)
    return found


def _configured_targets(group: TargetGroup, looks: PathLooks) -> list[str]:
    """The target URLs and paths the config names (the targets' keys in the index; a
    ``file_targets`` file's as the load read it)."""
    hosts = list(group.static_targets.targets) if group.static_targets else []
    if group.file_targets is not None:
        hosts += looks.targets(group.file_targets.path).hosts
    targets = [group.sidecar_url(host) for host in hosts]
    if group.http_targets is not None:
        targets += group.http_targets.targets
    if group.local_targets is not None:
        targets += group.local_targets.paths
    return targets


#: Settings read once at start-up: a reload that changes them leaves the old value in force
#: (the listeners stay bound where they are, the descriptor budget is split once, the
#: object-store tier is built once).
RESTART_ONLY = (
    "listen",
    "internal_listen",
    "max_connections",
    "object_store",
    # how the disk cache checks and proves its copies, set when it is first opened
    "verify_archives",
    "prove_accounts",
    "prove_accounts_memory",
    "prove_accounts_max",
    "prove_accounts_temp_dir",
    "proof_workers",
)
#: Of those, the sections shown as changed, not by value (their secrets stay out of logs).
_SECTIONS = ("object_store",)


def restart_needed(old: Config, new: Config) -> list[str]:
    """What a reload from ``old`` to ``new`` changes that takes effect only at the next start,
    one line each. Pure."""
    lines = []
    for key in RESTART_ONLY:
        before, after = getattr(old, key), getattr(new, key)
        if before == after:
            continue
        if key in _SECTIONS:
            lines.append(f"{key}: changed; takes effect at the next restart")
        else:
            lines.append(
                f"{key}: {_shown(before)} -> {_shown(after)} takes effect at the next restart"
            )
    return lines


def _shown(value: object) -> str:
    return "(none)" if value is None or value == "" else str(value)


def in_force(old: Config, new: Config) -> Config:
    """The config a reload from ``old`` to ``new`` applies: ``new`` with the restart-only
    settings still ``old``'s, so that what reads the config in use (the status page, the
    learned state's writes to the bucket) reads what is in force. Pure."""
    return attrs.evolve(new, **{key: getattr(old, key) for key in RESTART_ONLY})


def reload_problems(old: Config, new: Config) -> list[str]:
    """Why a reload from ``old`` to ``new`` is refused: the checks across sections that the
    new file passed, failed by what it would put in force (:func:`in_force`: the
    restart-only settings stay ``old``'s), e.g. a group's ``trust.require: cluster`` with
    ``verify_archives`` false until a restart, which no start would take. Pure."""
    applied = in_force(old, new)
    found = store_problems(applied) + proof_problems(applied)
    kept = [key for key in RESTART_ONLY if getattr(old, key) != getattr(new, key)]
    until = f" (until a restart the config in force keeps its {', '.join(kept)})" if kept else ""
    return [line + until for line in lines(found)]
