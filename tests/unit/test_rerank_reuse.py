"""A re-rank weighs again only the targets whose listing or figure changed: the trust screen's
tallies (:class:`tracker.ordering.screens.Agreement`) and a time-ranked group's archive prices
(:class:`tracker.ordering.pricing.ArchivePrices`) are kept between re-rankings, and what
they answer is what a fresh computation answers (bench/README.md, "The re-rank with speeds
measured")."""

from __future__ import annotations

import gc
import sys
import tracemalloc
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import base58
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from tracker.config.schema import Ranking
from tracker.core.hosts import machine_voices, voice_of
from tracker.core.snapshots import (
    SnapshotFile,
    SnapshotInfo,
    SnapshotSource,
    TargetKey,
    chains_from_files,
    parse_archive_name,
)
from tracker.ordering import screens
from tracker.ordering.index import Index
from tracker.ordering.predict import priced_throughput
from tracker.ordering.pricing import ArchivePrices, priced_sizes
from tracker.ordering.ranking import Built, Entry, RankedPairs, first, rank_pairs
from tracker.ordering.screens import Agreement, SourceTrust, screen

T0 = datetime(2026, 11, 21, 10, 0, tzinfo=UTC)
HASHES = [base58.b58encode(bytes([n]) * 32).decode() for n in (1, 2, 3)]
#: (full?, base slot, slot): two fulls, incrementals on each, a full and an incremental
#: ending at one slot.
ARCHIVES = [
    (True, 0, 100),
    (True, 0, 200),
    (False, 100, 150),
    (False, 100, 200),
    (False, 200, 250),
    (False, 200, 260),
]
#: Configured targets and discovered nodes on shared hosts (a sidecar beside its node's RPC,
#: two ports of one machine, two addresses of one IPv6 /64, another /64 of that /48) and on
#: hosts of their own.
TARGETS = [
    TargetKey("g", "http://10.0.0.1:8899", discovered=True),
    TargetKey("g", "http://10.0.0.1:9000", discovered=True),
    TargetKey("g", "http://10.0.0.1:80"),
    TargetKey("g", "http://10.0.0.1:81"),
    TargetKey("g", "http://10.0.0.2:8899", discovered=True),
    TargetKey("g", "http://[2001:db8::1]:8899", discovered=True),
    TargetKey("g", "http://[2001:db8::2]:8899", discovered=True),
    TargetKey("g", "http://[2001:db8::1]:80"),
    TargetKey("g", "http://10.0.0.3:8899"),
    TargetKey("g", "http://10.0.0.4:8899", discovered=True),
    TargetKey("g", "http://[2001:db8:0:1::1]:8899", discovered=True),
]
#: What a target lists: (archive, hash, size in MB; 0: not given, extension).
listings = st.lists(
    st.tuples(
        st.integers(0, len(ARCHIVES) - 1),
        st.integers(0, len(HASHES) - 1),
        st.sampled_from([0, 5, 7, 100, 1000]),
        st.sampled_from([".tar.zst", ".tar.bz2"]),
    ),
    max_size=5,
)
target = st.integers(0, len(TARGETS) - 1)


def infos_of(listed: list[tuple[int, int, int, str]]) -> tuple[SnapshotInfo, ...]:
    files = []
    for archive, hash_, size, ext in listed:
        full, base, slot = ARCHIVES[archive]
        name = (
            f"snapshot-{slot}-{HASHES[hash_]}{ext}"
            if full
            else f"incremental-snapshot-{base}-{slot}-{HASHES[hash_]}{ext}"
        )
        parsed = parse_archive_name(name)
        assert parsed is not None
        url = f"http://x/{name}"
        files.append(SnapshotFile(parsed, parsed.file_name, size=size * 1_000_000, url=url))
    return tuple(dict.fromkeys(chains_from_files(files)))


# -- the trust screen's tallies --------------------------------------------------------------

#: A trust policy: the known sources (a configured target, a host:port of the shared
#: machine) and the agreement needed; the cluster's slot (None: unknown).
policies = st.tuples(
    st.sampled_from([frozenset(), frozenset({"http://10.0.0.3:8899"}), frozenset({"10.0.0.1:80"})]),
    st.integers(1, 3),
    st.sampled_from([None, 100, 195, 250]),
)
screen_operations = st.lists(
    st.one_of(
        st.tuples(st.just("apply"), target, listings),
        st.tuples(st.just("drop"), target, st.just([])),
        st.tuples(st.just("policy"), st.just(0), policies),
    ),
    max_size=30,
)


@settings(max_examples=400)
@given(screen_operations)
# a discovered node's voice is the first configured target's on its host: another once
# that one went (one voice, its state no longer agreed by two)
@example(
    [
        ("policy", 0, (frozenset(), 2, None)),
        ("apply", 3, []),
        ("apply", 2, [(0, 0, 0, ".tar.zst")]),
        ("apply", 0, [(0, 0, 0, ".tar.zst")]),
        ("drop", 3, []),
    ]
)
def test_the_kept_tallies_screen_as_a_fresh_screen(ops: list[tuple[str, int, Any]]) -> None:
    """After any changes (listings, targets gone and back, the policy, the cluster's slot),
    the tallies kept between re-rankings screen what :func:`screen` made afresh screens:
    the same infos kept, the same targets marked, with the same slot named."""
    agreement = Agreement()
    entries: dict[TargetKey, Entry] = {}
    policy, slot = SourceTrust(max_slot_ahead=10), None
    for op, n, what in ops:
        if op == "apply":
            entries[TARGETS[n]] = Entry(infos_of(what), T0)
        elif op == "drop":
            entries.pop(TARGETS[n], None)
        else:
            known, agreeing, slot = what
            policy = SourceTrust(known, agreeing, max_slot_ahead=10)
        agreement.update(entries, policy)
        fresh = screen({key: entry.infos for key, entry in entries.items()}, policy, slot)
        assert agreement.screened(slot) == fresh


def _calls(monkeypatch: pytest.MonkeyPatch, module: object, name: str) -> list[tuple[Any, ...]]:
    """The calls of ``module``'s ``name`` from here on (it is still called)."""
    calls: list[tuple[Any, ...]] = []
    called = getattr(module, name)

    def counted(*args: Any) -> Any:
        calls.append(args)
        return called(*args)

    monkeypatch.setattr(module, name, counted)
    return calls


def _cluster(count: int, ranking: Ranking | None) -> tuple[Index, list[TargetKey]]:
    """An index of ``count`` discovered nodes, each listing a full and an incremental."""
    index = Index(clock=lambda: 1_000_000.0)
    index.set_ranking("g", ranking)
    keys = [TargetKey("g", f"http://10.1.{n // 256}.{n % 256}:8899", True) for n in range(count)]
    index.apply_many([(key, _full_and_incremental(150), T0, 0.01) for key in keys])
    index.sources("g")
    return index, keys


def _full_and_incremental(slot: int) -> tuple[SnapshotInfo, ...]:
    return infos_of([(0, 0, 100, ".tar.zst"), (2 if slot == 150 else 3, 0, 5, ".tar.zst")])


def test_a_batch_of_a_round_screens_only_its_targets_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each re-rank looked at every discovered node's listing in the trust screen: half of
    a re-rank at 3,000 nodes. A batch of a round's results is tallied alone."""
    index, keys = _cluster(200, None)
    known = _calls(monkeypatch, screens, "is_known")  # once per target tallied
    newer = _full_and_incremental(200)
    index.apply_many([(key, newer, T0, 0.01) for key in keys[:10]])
    assert {s.info.slot for s in index.sources("g")[:10]} == {200}
    assert len(known) == 10
    index.apply_many([(key, newer, T0, 0.01) for key in keys[:10]])  # the same answers again
    index.record_transfer(keys[20], 10_000_000, 1.0)
    index.sources("g")
    assert len(known) == 10


def test_the_same_answer_again_is_compared_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """A round hands most nodes' answers over again unchanged, as new objects: each one was
    compared with the listing tallied at every re-rank after (6 ms at 3,000 nodes), not
    once."""
    index, keys = _cluster(50, None)
    index.apply_many([(key, _full_and_incremental(150), T0, 0.01) for key in keys])
    compared = _calls(monkeypatch, SnapshotInfo, "__eq__")
    index.sources("g")
    assert len(compared) == 50 * 2  # each answer's two snapshots, by value: the same
    index.record_transfer(keys[0], 10_000_000, 1.0)
    index.sources("g")
    assert len(compared) == 50 * 2


# -- the archives' prices ----------------------------------------------------------------------

pricing_operations = st.lists(
    st.one_of(
        st.tuples(st.just("apply"), target, listings),
        st.tuples(st.just("drop"), target, st.just(0.0)),
        st.tuples(st.just("price"), target, st.sampled_from([0.0, 1e6, 5e7, 2e8])),
    ),
    max_size=30,
)
RANKINGS = [
    Ranking(),
    Ranking(replay_slots_per_second=2.0),  # every pair infinite: one cost, all tied
    Ranking(assumed_throughput=1e6, switch_margin=0.0),
]


def _group(built: dict[TargetKey, Built]) -> tuple[list[SnapshotSource], list[SnapshotSource]]:
    """The group's sources and fulls, best first, as the index ranks them."""
    sources = sorted((p for b in built.values() for p in b.sources), key=first, reverse=True)
    fulls = sorted((p for b in built.values() for p in b.fulls), key=first, reverse=True)
    return [s for _key, s in sources], [s for _key, s in fulls]


def _same(kept: RankedPairs, fresh: RankedPairs) -> bool:
    return (
        [id(s) for s in kept.sources] == [id(s) for s in fresh.sources]
        and kept.predicted == fresh.predicted
        and (kept.chosen, kept.full, kept.incremental)
        == (fresh.chosen, fresh.full, fresh.incremental)
    )


def _sizes_and_speeds(
    sources: list[SnapshotSource], ranking: Ranking
) -> tuple[dict[str, int], dict[str, float]]:
    """Each archive's priced size and fastest throughput, weighed from every source (one
    host one voice: :func:`tracker.core.hosts.machine_voices`)."""
    hosts = [voice_of(s.key.target) for s in sources]
    discovered = {n for n, s in enumerate(sources) if s.key.discovered}
    listed, speeds = [], {}
    for s, voice in zip(sources, machine_voices(hosts, discovered), strict=True):
        for f in s.info.files:
            listed.append((f.bare_name, f.name.is_full, f.size, voice))
            speed = priced_throughput(s.throughput, ranking)
            speeds[f.bare_name] = max(speeds.get(f.bare_name, 0.0), speed)
    return priced_sizes(listed), speeds


@settings(max_examples=300)
@given(pricing_operations, st.sampled_from(RANKINGS))
# a configured target on a discovered IPv6 node's host, listed after it: that node is its
# host's voice, no longer its /64's (its size no longer the /64's other node's)
@example(
    [
        ("apply", 5, [(0, 0, 5, ".tar.zst")]),
        ("apply", 6, [(0, 0, 100, ".tar.zst")]),
        ("apply", 9, [(0, 0, 100, ".tar.zst")]),
        ("apply", 7, [(0, 0, 5, ".tar.zst")]),
    ],
    Ranking(),
)
# two discovered nodes of one IPv6 /48, on two /64s: one voice, the /48's (the kept parts
# counted each /64 apart, two voices where trust and the fresh prices count one)
@example(
    [
        ("apply", 5, [(0, 0, 5, ".tar.zst")]),
        ("apply", 10, [(0, 0, 100, ".tar.zst")]),
        ("apply", 9, [(0, 0, 100, ".tar.zst")]),
    ],
    Ranking(),
)
def test_the_kept_prices_rank_the_pairs_as_fresh_ones(
    ops: list[tuple[str, int, Any]], ranking: Ranking
) -> None:
    """After any changes (listings, figures, targets gone and back), the prices kept
    between re-rankings rank the pairs as prices made afresh: the same order, predictions,
    pair handed out, full and incremental; and every archive is priced at the lower median
    of its voices' sizes and at its fastest source."""
    prices = ArchivePrices()
    built: dict[TargetKey, Built] = {}
    held = None
    for op, n, what in ops:
        key = TARGETS[n]
        if op == "apply":
            speed = built[key].speed if key in built else 0.0
            listed = infos_of(what)
            built[key] = Built.of(key, Entry(listed, T0, 0.01 * n), speed, speed or 5e7, listed)
        elif op == "drop":
            built.pop(key, None)
        elif key in built:
            built[key] = built[key].priced(what, what or 5e7)
        sources, fulls = _group(built)
        tip = sources[0].info.slot if sources else 0
        prices.update(built, ranking)
        kept = rank_pairs(sources, fulls, tip, ranking, held, prices)
        assert _same(kept, rank_pairs(sources, fulls, tip, ranking, held))
        sizes, speeds = _sizes_and_speeds(sources, ranking)
        assert prices.sizes == sizes
        assert {name: prices.speed(name) for name in speeds} == speeds
        held = kept.chosen or held


def _priced_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, ...]]:
    """The throughputs the ranking's modules price from here on: one per source weighed
    (where :mod:`tracker.ordering.predict`'s rule is imported; not in its own arithmetic)."""
    calls: list[tuple[Any, ...]] = []
    modules = [
        module
        for name, module in sys.modules.items()
        if name.startswith("tracker.ordering.")
        and getattr(module, "priced_throughput", priced_throughput) is priced_throughput
        and name != priced_throughput.__module__
        and hasattr(module, "priced_throughput")
    ]
    for module in modules:
        price: Callable[..., float] = module.priced_throughput

        def counted(*args: Any, price: Callable[..., float] = price) -> float:
            calls.append(args)
            return price(*args)

        monkeypatch.setattr(module, "priced_throughput", counted)
    return calls


def test_a_change_prices_only_the_sources_of_the_targets_it_changed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A group ranked by time to running weighed every source's listing again at every
    change (74-80 ms at 3,000 targets, on the event loop): now only the changed targets'."""
    index, keys = _cluster(200, Ranking())
    priced = _priced_calls(monkeypatch)
    newer = _full_and_incremental(200)
    index.apply_many([(key, newer, T0, 0.01) for key in keys[:10]])
    best = index.best_incremental("g")
    assert best is not None and best.info.slot == 200
    assert len(priced) == 10 * 2  # a full and an incremental each
    index.record_transfer(keys[20], 10_000_000, 1.0)  # its figure: its two sources again
    slow = [s for s in index.sources("g") if s.key == keys[20]]
    assert [s.throughput for s in slow] == [10_000_000] * 2
    assert len(priced) == 11 * 2


def _sized(incremental: int) -> tuple[SnapshotInfo, ...]:
    """A full of 1 GB and an incremental on it of ``incremental`` bytes, under fixed names."""
    files = []
    for name, size in (
        (f"snapshot-100-{HASHES[0]}.tar.zst", 10**9),
        (f"incremental-snapshot-100-150-{HASHES[0]}.tar.zst", incremental),
    ):
        parsed = parse_archive_name(name)
        assert parsed is not None
        files.append(SnapshotFile(parsed, parsed.file_name, size=size, url=f"http://x/{name}"))
    return tuple(chains_from_files(files))


def test_the_sizes_no_voice_says_any_more_are_not_kept() -> None:
    """Each voice's typical size of a kind moves with every archive it lists (a new
    incremental a minute from each of thousands of nodes): the kept prices kept every
    typical size ever said, at a count of 0, and copied and sorted them all at each move
    (measured: 3.6 MB more after 5,000 changes of three nodes; millions of sizes a day)."""
    prices = ArchivePrices()
    keys = [TargetKey("g", f"http://10.0.0.{n}:8899", discovered=True) for n in range(3)]
    built: dict[TargetKey, Built] = {}

    def changes(steps: range) -> None:
        for step in steps:
            for n, key in enumerate(keys):
                listed = _sized(1_000_000 + 1_000 * step + n)
                built[key] = Built.of(key, Entry(listed, T0), 0.0, 5e7, listed)
            prices.update(built, Ranking())

    changes(range(100))
    gc.collect()  # what is still held, not the garbage not yet collected
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        changes(range(100, 2_100))
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown < 64 * 1024, grown
    assert prices.sizes[f"incremental-snapshot-100-150-{HASHES[0]}.tar.zst"] == 3_099_001
