"""The index: replace-per-target, drop, ranking and the best full/incremental rule."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import base58
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tracker.config.schema import Ranking
from tracker.core.snapshots import (
    SnapshotFile,
    SnapshotInfo,
    chains_from_files,
    is_known,
    parse_archive_name,
)
from tracker.ordering.index import Index, TargetKey
from tracker.ordering.ranking import Built
from tracker.ordering.screens import Screened, SourceTrust, screen
from tracker.ordering.sourcehistory import Rejections
from tracker.web.listings import ListingCache

T0 = datetime(2026, 11, 21, 10, 0, tzinfo=UTC)
H = base58.b58encode(bytes(range(32))).decode()


def infos(*names: str) -> list[SnapshotInfo]:
    files = []
    for n in names:
        parsed = parse_archive_name(n.replace("H", H))
        assert parsed is not None
        files.append(SnapshotFile(parsed, parsed.file_name, url=f"http://x/{parsed.file_name}"))
    return chains_from_files(files)


def test_apply_replaces_and_drop_forgets() -> None:
    index = Index()
    a = TargetKey("g", "a")
    index.apply(a, infos("snapshot-100-H.tar"), T0)
    index.apply(a, infos("snapshot-200-H.tar"), T0)
    assert [s.info.slot for s in index.sources("g")] == [200]
    index.drop(a)
    assert index.sources("g") == [] and index.best_full("g") is None


def test_an_entry_a_target_lists_twice_is_one_snapshot() -> None:
    # A sidecar repeating an entry showed it as many times in the group's listing.
    index = Index()
    a = TargetKey("g", "a")
    index.apply(a, infos("snapshot-100-H.tar") * 3 + infos("snapshot-200-H.tar"), T0)
    assert sorted(s.info.slot for s in index.sources("g")) == [100, 200]
    assert index.count(a) == 2


def test_best_incremental_must_sit_on_best_full() -> None:
    index = Index()
    index.apply(TargetKey("g", "a"), infos("snapshot-100-H.tar", "snapshot-200-H.tar"), T0)
    # A newer incremental on an older full is useless with the best full: not chosen.
    index.apply(TargetKey("g", "b"), infos("incremental-snapshot-100-300-H.tar"), T0)
    assert index.best_incremental("g") is None
    index.apply(TargetKey("g", "c"), infos("incremental-snapshot-200-250-H.tar"), T0)
    best = index.best_incremental("g")
    assert best is not None and best.info.slot == 250 and best.key.target == "c"
    full = index.best_full("g")
    assert full is not None and full.info.slot == 200


def test_one_liars_hash_at_a_slot_loses_to_the_majority_without_any_policy() -> None:
    # With the default trust, no rpc and no discovered node nothing was screened: a liar
    # listing slot 100 under a hash that sorts above the honest one's became the best full,
    # while the best incremental sat on the honest full (a pair no validator can load).
    liar = base58.b58encode(bytes([255] * 32)).decode()
    index = Index()
    for n in range(2):
        index.apply(
            TargetKey("g", f"honest{n}"),
            infos("snapshot-100-H.tar", "incremental-snapshot-100-150-H.tar"),
            T0,
        )
    index.apply(TargetKey("g", "liar"), infos(f"snapshot-100-{liar}.tar"), T0)
    full, incremental = index.best_full("g"), index.best_incremental("g")
    assert full is not None and full.info.hash == H and full.key.target.startswith("honest")
    assert incremental is not None and incremental.info.files[-1].name.hash == H
    assert dict(index.mismatches()) == {TargetKey("g", "liar"): "hash mismatch at slot 100"}


def test_a_full_and_an_incremental_of_one_slot_may_carry_two_hashes() -> None:
    # Before SIMD-0220 an incremental was named by the accounts changed since its base: a
    # full and an incremental of one slot, two hashes, is no disagreement (it screened a
    # fleet of 500 targets whose fulls and incrementals met at slots: a tie each, both out)
    other = base58.b58encode(bytes([255] * 32)).decode()
    full, liar = TargetKey("g", "full"), TargetKey("g", "liar")
    incremental = tuple(infos(f"incremental-snapshot-50-100-{other}.tar"))
    listed = {full: tuple(infos("snapshot-100-H.tar")), liar: incremental}
    assert screen(listed, SourceTrust()) == Screened({}, {})
    listed[liar] = tuple(infos(f"snapshot-100-{other}.tar"))  # two fulls: a tie, both out
    tie = "hash mismatch at slot 100"
    assert screen(listed, SourceTrust()) == Screened({full: (), liar: ()}, {full: tie, liar: tie})


def test_screening_compares_fulls_with_fulls_and_incrementals_with_incrementals() -> None:
    # With screening on (a trust policy), two targets' full of slot 100 outvoted a third's
    # incremental ending at slot 100 under its own hash (names before SIMD-0220): the
    # incremental's holder was marked "hash mismatch" and its incremental dropped.
    other = base58.b58encode(bytes([255] * 32)).decode()
    index = Index()
    index.set_policy("g", SourceTrust(max_slot_ahead=50))
    for n in range(2):
        index.apply(TargetKey("g", f"full{n}"), infos("snapshot-100-H.tar"), T0)
    index.apply(
        TargetKey("g", "incremental"),
        infos("snapshot-50-H.tar", f"incremental-snapshot-50-100-{other}.tar"),
        T0,
    )
    assert dict(index.mismatches()) == {}
    assert any(not s.info.is_full for s in index.sources("g"))
    # Two incrementals of one slot under two hashes still compete.
    index.apply(
        TargetKey("g", "liar"), infos("snapshot-50-H.tar", "incremental-snapshot-50-100-H.tar"), T0
    )
    index.apply(
        TargetKey("g", "incremental2"),
        infos("snapshot-50-H.tar", f"incremental-snapshot-50-100-{other}.tar"),
        T0,
    )
    assert dict(index.mismatches()) == {TargetKey("g", "liar"): "hash mismatch at slot 100"}


def test_a_full_and_an_incremental_of_one_slot_and_hash_agree() -> None:
    # After SIMD-0220 a full and an incremental ending at one slot carry the state's one
    # hash: one target listing the full, another the incremental, are two agreeing on it
    # (keyed by kind, each had one holder and both were dropped under 2 agreeing).
    index = Index()
    index.set_policy("g", SourceTrust(min_agreeing_sources=2))
    index.apply(TargetKey("g", "a"), infos("snapshot-50-H.tar", "snapshot-100-H.tar"), T0)
    index.apply(
        TargetKey("g", "b"), infos("snapshot-50-H.tar", "incremental-snapshot-50-100-H.tar"), T0
    )
    ranked = {(s.info.is_full, s.info.slot) for s in index.sources("g")}
    assert (True, 100) in ranked and (False, 100) in ranked


@pytest.mark.parametrize("configured_incrementals", [0, 1])
@pytest.mark.parametrize("policy", [SourceTrust(), SourceTrust(min_agreeing_sources=2)])
def test_a_state_the_other_kind_vouches_for_ranks_no_one_nodes_full_of_it(
    configured_incrementals: int, policy: SourceTrust
) -> None:
    """Honest nodes list the full at 50 and the incremental 50-100-H; one discovered node
    lists a full snapshot-100-H (the same state, which a full and an incremental ending at
    one slot share): the state's voices made that full, which it alone holds at a size it
    alone states, the group's newest. An archive only discovered nodes hold needs as many
    of them as a state; two holding it rank it."""
    index = Index()
    index.set_policy("g", policy)
    honest = ("snapshot-50-H.tar", "incremental-snapshot-50-100-H.tar")
    for n in range(configured_incrementals):
        index.apply(TargetKey("g", f"http://c{n}"), infos(*honest), T0)
    for n in range(3):
        index.apply(
            TargetKey("g", f"http://198.51.100.{n}:8899", discovered=True), infos(*honest), T0
        )
    liar = TargetKey("g", "http://203.0.113.6:8899", discovered=True)
    index.apply(liar, infos("snapshot-100-H.tar"), T0)
    best = index.best_full("g")
    assert best is not None and best.info.slot == 50
    assert all(s.key != liar for s in index.sources("g"))
    index.apply(
        TargetKey("g", "http://203.0.113.9:8899", discovered=True), infos("snapshot-100-H.tar"), T0
    )
    best = index.best_full("g")
    assert best is not None and best.info.slot == 100  # two machines hold it: ranked


def sized(*pairs: tuple[str, int]) -> list[SnapshotInfo]:
    """:func:`infos` of (name, size) pairs."""
    files = []
    for n, size in pairs:
        parsed = parse_archive_name(n.replace("H", H))
        assert parsed is not None
        files.append(SnapshotFile(parsed, parsed.file_name, size=size, url=f"http://x/{n}"))
    return chains_from_files(files)


@pytest.mark.parametrize("ranking", [None, Ranking()], ids=["by slot", "by time"])
def test_a_vouched_archive_under_a_name_one_node_alone_lists_ranks_no_one(
    ranking: Ranking | None,
) -> None:
    """Three nodes list the full at 1000 and an older one at 900, 100 GB each; one
    discovered node lists the older state under another extension, at 1 KB: its state was
    vouched for, and its size the only one of that name, so it was the fastest to a running
    node and the group's best (or, by slot, its newest full under another name tied the
    honest ones). A name only discovered nodes list needs as many of them as a state; two
    listing it rank it."""
    gb = 10**9
    index = Index()
    index.set_ranking("g", ranking)
    honest = sized(("snapshot-1000-H.tar.zst", 100 * gb), ("snapshot-900-H.tar.zst", 100 * gb))
    for n in range(3):
        index.apply(TargetKey("g", f"http://198.51.100.{n}:8899", discovered=True), honest, T0)
    lie = sized(("snapshot-900-H.tar.bz2", 1000), ("snapshot-1000-H.tar.bz2", 1000))
    liar = TargetKey("g", "http://203.0.113.6:8899", discovered=True)
    index.apply(liar, lie, T0)
    best = index.best_full("g")
    assert best is not None and best.info.slot == 1000 and best.key != liar
    assert all(s.key != liar for s in index.sources("g"))
    second = TargetKey("g", "http://203.0.113.9:8899", discovered=True)
    index.apply(second, lie, T0)
    assert {s.key for s in index.sources("g")} >= {liar, second}  # two machines list them


@pytest.mark.parametrize(
    "gossiped",
    [
        "198.51.100.5",  # its plain address: one voice already
        "[2002:c633:6405::1]",  # its 6to4 form
        "[64:ff9b::c633:6405]",  # its NAT64 form
    ],
)
def test_a_configured_target_gossiping_another_form_of_its_address_is_one_voice(
    gossiped: str,
) -> None:
    """``min_agreeing_sources: 2``: a configured target lists a slot alone; its machine,
    discovered under its address's 6to4 form, counted as a second voice (matched to the
    target by its exact host only), and made its slot the group's newest."""
    index = Index()
    index.set_policy("g", SourceTrust(min_agreeing_sources=2))
    for n in (6, 7):
        index.apply(TargetKey("g", f"http://203.0.113.{n}:8080"), infos("snapshot-1000-H.tar"), T0)
    index.apply(TargetKey("g", "http://198.51.100.5:8080"), infos("snapshot-1050-H.tar"), T0)
    index.apply(
        TargetKey("g", f"http://{gossiped}:8899", discovered=True), infos("snapshot-1050-H.tar"), T0
    )
    best = index.best_full("g")
    assert best is not None and best.info.slot == 1000


def test_a_configured_ipv6_target_and_a_node_of_its_site_are_one_voice() -> None:
    """As above, the node on another address of the target's /48 (its site: discovered
    nodes there count as one)."""
    index = Index()
    index.set_policy("g", SourceTrust(min_agreeing_sources=2))
    for n in (6, 7):
        index.apply(TargetKey("g", f"http://203.0.113.{n}:8080"), infos("snapshot-1000-H.tar"), T0)
    index.apply(TargetKey("g", "http://[2001:db8:1::5]:8080"), infos("snapshot-1050-H.tar"), T0)
    node = TargetKey("g", "http://[2001:db8:1::6]:8899", discovered=True)
    index.apply(node, infos("snapshot-1050-H.tar"), T0)
    best = index.best_full("g")
    assert best is not None and best.info.slot == 1000


def test_ties_prefer_most_recent_successful_scrape_then_name() -> None:
    index = Index()
    index.apply(TargetKey("g", "old"), infos("snapshot-100-H.tar"), T0)
    index.apply(TargetKey("g", "new"), infos("snapshot-100-H.tar"), T0 + timedelta(seconds=5))
    index.apply(TargetKey("g", "b-same"), infos("snapshot-100-H.tar"), T0)
    assert [s.key.target for s in index.sources("g")] == ["new", "b-same", "old"]
    found = index.find_file("g", f"snapshot-100-{H}.tar")
    assert [s.key.target for _, s in found] == ["new", "b-same", "old"]


def test_groups_are_separate_and_listed_by_name() -> None:
    index = Index()
    index.apply(TargetKey("z", "a"), infos("snapshot-300-H.tar"), T0)
    index.apply(TargetKey("a", "a"), infos("snapshot-100-H.tar"), T0)
    assert [s.key.group for s in index.sources()] == ["a", "z"]
    assert index.best_full("a").info.slot == 100  # type: ignore[union-attr]


slot_pairs = st.lists(
    st.tuples(st.integers(1, 50), st.integers(0, 50), st.integers(0, 3)), min_size=1, max_size=30
)


@given(slot_pairs)
def test_best_rule_matches_reference(entries: list[tuple[int, int, int]]) -> None:
    index = Index()
    names = []
    for slot, base, target in entries:
        name = (
            f"snapshot-{slot}-H.tar"
            if base == 0 or base >= slot
            else (f"incremental-snapshot-{base}-{slot}-H.tar")
        )
        names.append((name, target))
    for t in range(4):
        mine = [n for n, tt in names if tt == t]
        if mine:
            index.apply(TargetKey("g", str(t)), infos(*mine), T0)
    all_infos = [s.info for s in index.sources("g")]
    fulls = [i.slot for i in all_infos if i.is_full]
    full = index.best_full("g")
    assert (full.info.slot if full else None) == (max(fulls) if fulls else None)
    incr = index.best_incremental("g")
    expected = [i.slot for i in all_infos if not i.is_full and fulls and i.base_slot == max(fulls)]
    assert (incr.info.slot if incr else None) == (max(expected) if expected else None)
    keys = [s.rank_key() for s in index.sources("g")]
    assert keys == sorted(keys, reverse=True)


def test_every_change_bumps_the_generation_and_the_ranking_across_groups() -> None:
    index = Index()
    before = index.generation
    index.apply(TargetKey("b", "x"), infos("snapshot-100-H.tar"), T0)
    index.apply(TargetKey("a", "y"), infos("snapshot-300-H.tar", "snapshot-200-H.tar"), T0)
    assert index.generation == before + 2
    assert [(s.key.group, s.info.slot) for s in index.ranked()] == [
        ("a", 300),
        ("a", 200),
        ("b", 100),
    ]
    expected = sorted(index.sources(), key=lambda s: s.rank_key(), reverse=True)
    assert index.ranked() == expected
    index.drop(TargetKey("a", "y"))
    assert index.generation == before + 3
    assert [s.info.slot for s in index.ranked()] == [100]
    index.drop(TargetKey("a", "y"))  # nothing to forget: no change
    assert index.generation == before + 3


def test_listings_are_rendered_once_per_generation() -> None:
    index = Index()
    cache = ListingCache(index, max_entries=2)
    rendered: list[str] = []

    def render(text: str) -> bytes:
        rendered.append(text)
        return text.encode()

    assert cache.get("a", lambda: render("a1")) == b"a1"
    assert cache.get("a", lambda: render("a2")) == b"a1"  # kept
    index.apply(TargetKey("g", "t"), infos("snapshot-100-H.tar"), T0)
    assert cache.get("a", lambda: render("a3")) == b"a3"  # the index changed
    cache.get("b", lambda: render("b"))
    cache.get("c", lambda: render("c"))  # over the size: the least recently used goes
    assert cache.get("a", lambda: render("a4")) == b"a4"
    assert rendered == ["a1", "a3", "b", "c", "a4"]


# -- the reuse of unchanged targets' parts between re-rankings --------------------------------

NAMES = [
    "snapshot-100-H.tar",
    "snapshot-200-H.tar",
    "incremental-snapshot-100-150-H.tar",
    "incremental-snapshot-200-250-H.tar",
    f"snapshot-200-{base58.b58encode(bytes(range(1, 33))).decode()}.tar",  # another hash
]
operations = st.lists(
    st.one_of(
        st.tuples(st.just("apply"), st.integers(0, 5), st.sets(st.integers(0, len(NAMES) - 1))),
        st.tuples(st.just("drop"), st.integers(0, 5), st.just(frozenset())),
        st.tuples(st.just("slot"), st.integers(0, 400), st.just(frozenset())),
    ),
    max_size=25,
)


def _listing(index: Index) -> list[tuple[object, ...]]:
    return [(s.key, s.info, s.updated_at, s.expected) for s in index.sources("g")]


@given(operations)
def test_reuse_ranks_as_a_fresh_index(ops: list[tuple[str, int, set[int]]]) -> None:
    """A re-rank reuses each unchanged target's sources, keys and fulls: after any sequence
    of changes (ranked after each one) the answers equal those of an index built afresh."""
    index = Index()
    index.set_policy("g", SourceTrust(min_agreeing_sources=2))
    applied: dict[TargetKey, tuple[list[SnapshotInfo], datetime]] = {}
    slot: int | None = None
    for n, (op, arg, chosen) in enumerate(ops):
        key = TargetKey("g", f"t{arg}", discovered=arg % 2 == 1)
        if op == "apply":
            names = [NAMES[i] for i in sorted(chosen)]
            applied[key] = (infos(*names), T0 + timedelta(seconds=n))
            index.apply(key, *applied[key])
        elif op == "drop":
            applied.pop(key, None)
            index.drop(key)
        else:
            slot = arg
            index.set_cluster_slots({"g": slot})
        index.sources("g")  # ranked after each change: the next one reuses what it can
    fresh = Index()
    fresh.set_policy("g", SourceTrust(min_agreeing_sources=2))
    fresh.set_cluster_slots({"g": slot})
    for key, (its_infos, at) in applied.items():
        fresh.apply(key, its_infos, at)
    assert _listing(index) == _listing(fresh)
    assert index.ranked() == fresh.ranked()
    assert index.best_full("g") == fresh.best_full("g")
    assert index.best_incremental("g") == fresh.best_incremental("g")
    assert dict(index.mismatches()) == dict(fresh.mismatches())


def _built_of_calls(monkeypatch: pytest.MonkeyPatch) -> list[TargetKey]:
    """The targets :meth:`Built.of` builds from here on (their sources made from their infos)."""
    calls: list[TargetKey] = []
    build = Built.of

    def counted(key: TargetKey, *args: Any) -> Built:
        calls.append(key)
        return build(key, *args)

    monkeypatch.setattr(Built, "of", counted)
    return calls


@pytest.mark.parametrize("ranking", [None, Ranking()], ids=["by slot", "by time"])
def test_a_rerank_rebuilds_only_what_changed_while_speeds_are_measured(
    monkeypatch: pytest.MonkeyPatch, ranking: Ranking | None
) -> None:
    """A round hands results over several times a second. With throughputs measured, each
    re-rank built every target of the group again (every figure aged to the instant, and an
    unmeasured target priced at the measured ones' median, which moved with them): 150-230
    ms of CPU at 3,000 targets, on the event loop. Within one step of the aging grid only
    what changed is built again, and a new measurement builds nothing from its infos again
    (docs/ranking.md, "Probed and achieved")."""
    now = [1_000_000.0]
    index = Index(clock=lambda: now[0])
    index.set_ranking("g", ranking)
    keys = [TargetKey("g", f"http://10.0.0.{n}:8899", discovered=True) for n in range(1, 41)]
    listed = infos("snapshot-100-H.tar", "incremental-snapshot-100-150-H.tar")
    index.apply_many([(key, listed, T0, 0.01) for key in keys])
    for n, key in enumerate(keys[::2]):  # half of them measured, a few minutes ago or less
        index.restore_throughput(key, (200 - n) * 1e6, now[0] - 10 * n, "probed")

    def order() -> list[TargetKey]:
        return [s.key for s in index.sources("g") if s.info.slot == 150]

    assert order()[0] == keys[0]  # the fastest
    calls = _built_of_calls(monkeypatch)
    before = index.sources("g")
    now[0] += 1.5  # the round's next batch: two nodes list a newer incremental
    newer = infos("snapshot-100-H.tar", "incremental-snapshot-100-160-H.tar")
    index.apply_many([(keys[3], newer, T0, 0.01), (keys[5], newer, T0, 0.01)])
    assert {s.key for s in index.sources("g")[:2]} == {keys[3], keys[5]}
    assert calls == [keys[3], keys[5]]
    # the others' sources are those made before: neither made nor priced again
    unchanged = [s for s in index.sources("g") if s.key not in (keys[3], keys[5])]
    assert {id(s) for s in unchanged} <= {id(s) for s in before}
    now[0] += 1.5
    index.record_transfer(keys[0], 10_000_000, 1.0)  # one measured transfer ended: slow
    assert order().index(keys[0]) > max(order().index(key) for key in keys[2::2])
    assert calls == [keys[3], keys[5]]  # its sources, and the others', priced anew only


def _priced(index: Index) -> list[tuple[object, ...]]:
    return [(*s.rank_key(), s.throughput) for s in index.sources("g")]


#: Changes of a group whose targets are measured: apply, drop, a speed test, time passing.
measured_operations = st.lists(
    st.one_of(
        st.tuples(st.just("apply"), st.integers(0, 5), st.sets(st.integers(0, len(NAMES) - 1))),
        st.tuples(st.just("drop"), st.integers(0, 5), st.just(0)),
        st.tuples(st.just("probe"), st.integers(0, 5), st.integers(1, 1000)),
        st.tuples(st.just("wait"), st.integers(0, 5), st.integers(0, 700)),
    ),
    max_size=25,
)


@given(measured_operations, st.booleans())
def test_reuse_with_speeds_measured_ranks_as_a_fresh_index(
    ops: list[tuple[str, int, Any]], timed: bool
) -> None:
    """Reused parts of measured targets, or of unmeasured ones priced at the measured
    ones' median (by slot), rank as an index built afresh at the same time would: same
    order, same figures."""
    now = [5000.0]
    index = Index(clock=lambda: now[0])
    index.set_ranking("g", Ranking() if timed else None)
    applied: dict[TargetKey, list[SnapshotInfo]] = {}
    for op, arg, what in ops:
        # a discovered node dropped and back takes up its machine's measurements again
        key = TargetKey("g", f"http://10.0.0.{arg}:8899", discovered=arg % 2 == 1)
        if op == "apply":
            applied[key] = infos(*(NAMES[i] for i in sorted(what)))
            index.apply(key, applied[key], T0)
        elif op == "drop":
            applied.pop(key, None)
            index.drop(key)
        elif op == "probe":
            index.record_transfer(key, what * 1_000_000, 1.0, kind="probed")
        else:
            now[0] += what / 7  # not on the grid's steps
        index.sources("g")
    fresh = Index(clock=lambda: now[0])
    fresh.set_ranking("g", Ranking() if timed else None)
    for key, its_infos in applied.items():
        fresh.apply(key, its_infos, T0)
    for key, (rate, at) in index.speeds.measurements("probed").items():
        fresh.restore_throughput(key, rate, at, "probed")
    index.apply(TargetKey("g", "http://10.0.0.9:8899"), [], T0)  # a change: ranked now
    fresh.apply(TargetKey("g", "http://10.0.0.9:8899"), [], T0)
    assert _priced(index) == _priced(fresh)
    assert index.best_full("g") == fresh.best_full("g")
    assert index.best_incremental("g") == fresh.best_incremental("g")


# -- trust: what discovered nodes alone advertise ------------------------------------------------

FULL = "snapshot-100-H.tar.zst"
BOGUS = "snapshot-18446744073709551615-H.tar.zst"


@pytest.mark.parametrize(
    ("holders", "policy", "ranked"),
    [
        # (configured, discovered) targets advertising the bogus full; is it ranked?
        ((0, 1), SourceTrust(), False),  # one discovered node alone never wins
        ((0, 2), SourceTrust(), True),
        ((1, 0), SourceTrust(), True),  # the operator's own target: as configured (1)
        ((1, 1), SourceTrust(), True),
        ((0, 2), SourceTrust(min_agreeing_sources=3), False),
        ((0, 3), SourceTrust(min_agreeing_sources=3), True),
        ((1, 0), SourceTrust(min_agreeing_sources=2), False),
        ((0, 1), SourceTrust(known_sources=frozenset({"http://d0"})), True),  # trusted
    ],
)
def test_discovered_nodes_alone_need_two_agreeing(
    holders: tuple[int, int], policy: SourceTrust, ranked: bool
) -> None:
    """Beside them, three discovered nodes advertise slot 100; the group's best full is the
    bogus slot only when its holders pass the trust rules."""
    index = Index()
    index.set_policy("g", policy)
    configured, discovered = holders
    for n in range(configured):
        index.apply(TargetKey("g", f"http://c{n}"), infos(BOGUS), T0)
    for n in range(discovered):
        index.apply(TargetKey("g", f"http://d{n}", discovered=True), infos(BOGUS), T0)
    for n in range(3):
        index.apply(TargetKey("g", f"http://e{n}", discovered=True), infos(FULL), T0)
    best = index.best_full("g")
    assert best is not None
    assert best.info.slot == (2**64 - 1 if ranked else 100)


@pytest.mark.parametrize(
    ("bogus", "ranked"),
    [
        # one machine under two gossip identities (its RPC spelled two ways, or two
        # ports): one voice, which alone never wins
        (["http://203.0.113.6:8899", "http://[::ffff:203.0.113.6]:8899"], False),
        (["http://203.0.113.6:8899", "http://203.0.113.6:8900"], False),
        (["http://203.0.113.6:8899", "http://203.0.113.7:8899"], True),  # two machines
        # one machine given a /64, as hosts routinely are, under two of its addresses: one
        # voice (it counted two, and one machine met the agreement alone)
        (["http://[2001:db8:1:2::6]:8899", "http://[2001:db8:1:2:ffff::7]:8899"], False),
        # two /64s of one /48, the block one site is given (a tunnel broker's free one is
        # 65,536 /64s): one voice (it counted two)
        (["http://[2001:db8:1:2::6]:8899", "http://[2001:db8:1:3::6]:8899"], False),
        (["http://[2001:db8:1:2::6]:8899", "http://[2001:db8:2:3::6]:8899"], True),  # two /48s
        # three identities of one machine against two honest machines: no majority of
        # hosts, the honest hash is not beaten at its slot
        (["http://203.0.113.6:1", "http://203.0.113.6:2", "http://203.0.113.6:3"], False),
        # one IPv4 machine under its 6to4 and NAT64 forms: one voice (it counted three)
        (
            [
                "http://203.0.113.6:8899",
                "http://[2002:cb00:7106::1]:8899",
                "http://[64:ff9b::cb00:7106]:8899",
            ],
            False,
        ),
        (["http://[2002:cb00:7106::1]:8899", "http://[2002:cb00:7107::1]:8899"], True),
    ],
)
def test_discovered_nodes_agree_as_hosts(bogus: list[str], ranked: bool) -> None:
    """Beside them, discovered nodes on three hosts advertise slot 100."""
    index = Index()
    index.set_policy("g", SourceTrust())
    for url in bogus:
        index.apply(TargetKey("g", url, discovered=True), infos(BOGUS), T0)
    for n in range(3):
        index.apply(TargetKey("g", f"http://198.51.100.{n}:8899", discovered=True), infos(FULL), T0)
    best = index.best_full("g")
    assert best is not None
    assert best.info.slot == (2**64 - 1 if ranked else 100)


@pytest.mark.parametrize(
    ("holders", "winner"),
    [
        # a slot's hash by the majority of hosts: one machine's three identities are one
        ((["10.0.0.1:1", "10.0.0.1:2", "10.0.0.1:3"], ["10.0.0.2:1", "10.0.0.3:1"]), "B"),
        ((["10.0.0.1:1", "10.0.0.4:1", "10.0.0.5:1"], ["10.0.0.2:1", "10.0.0.3:1"]), "A"),
        ((["10.0.0.1:1", "10.0.0.1:2"], ["10.0.0.2:1"]), None),  # one host each: a tie
        # three addresses of one /64 are one machine's, outvoted by two others
        (
            (
                ["[2001:db8::1]:1", "[2001:db8::2]:1", "[2001:db8::3]:1"],
                ["10.0.0.2:1", "10.0.0.3:1"],
            ),
            "B",
        ),
        # four /64s of one /48 are one site's: they flipped the honest hash at its slot
        (
            (
                ["[2001:db8:0:1::1]:1", "[2001:db8:0:2::1]:1", "[2001:db8:0:3::1]:1"],
                ["10.0.0.2:1", "10.0.0.3:1"],
            ),
            "B",
        ),
    ],
)
def test_a_slot_s_hash_is_the_majority_of_discovered_hosts(
    holders: tuple[list[str], list[str]], winner: str | None
) -> None:
    a_nodes, b_nodes = holders
    other = base58.b58encode(bytes([8]) * 32).decode()  # no "H": infos() keeps it
    advertised = {}
    for hash_, nodes in (("H", a_nodes), (other, b_nodes)):
        for node in nodes:
            key = TargetKey("g", f"http://{node}", discovered=True)
            advertised[key] = tuple(infos(f"snapshot-100-{hash_}.tar.zst"))
    screened = screen(advertised, SourceTrust())
    lost = {k.target for k in screened.mismatches}
    held = {"A": {f"http://{n}" for n in a_nodes}, "B": {f"http://{n}" for n in b_nodes}}
    if winner is None:
        assert lost == held["A"] | held["B"]
    else:
        assert lost == held["B" if winner == "A" else "A"]


@pytest.mark.parametrize(
    ("target", "known", "result"),
    [
        ("http://10.0.0.1:13080", "http://10.0.0.1:13080", True),
        ("http://10.0.0.1:13080", "10.0.0.1:13080", True),  # host:port: any target there
        ("https://10.0.0.1:13080/api", "10.0.0.1:13080", True),
        ("http://u:p@10.0.0.1:13080", "10.0.0.1:13080", True),
        ("http://[::1]:80", "[::1]:80", True),
        ("http://10.0.0.1:13080", "10.0.0.1:1308", False),
        ("http://10.0.0.1:13080", "10.0.0.1", False),
        ("/srv/ledger", "/srv/ledger", True),
        ("/srv/ledger", "/srv", False),
        # one host however either spells it (core.hosts.canonical_host)
        ("http://[2001:0db8::6]:8899", "[2001:db8::6]:8899", True),
        ("http://[2001:db8::6]:8899", "http://[2001:db8:0:0::6]:8899", True),
        ("http://[::ffff:10.0.0.6]:8899", "10.0.0.6:8899", True),
        ("HTTP://Node.Example:8899", "http://node.example:8899", True),
        ("http://[2001:db8::6]:8899", "[2001:db8::7]:8899", False),
        ("/SRV/ledger", "/srv/ledger", False),  # a path as it is
    ],
)
def test_a_known_source_names_a_target_or_its_address(
    target: str, known: str, result: bool
) -> None:
    assert is_known(target, {known}) is result


def test_a_known_host_port_decides_the_hash() -> None:
    """A sidecar at a known host:port wins its slot's hash against two other targets."""
    other = "snapshot-100-" + base58.b58encode(bytes(32)).decode() + ".tar.zst"
    index = Index()
    index.set_policy("g", SourceTrust(known_sources=frozenset({"10.0.0.1:13080"})))
    index.apply(TargetKey("g", "http://10.0.0.1:13080"), infos(FULL), T0)
    index.apply(TargetKey("g", "http://10.0.0.2:13080"), infos(other), T0)
    index.apply(TargetKey("g", "http://10.0.0.3:13080"), infos(other), T0)
    best = index.best_full("g")
    assert best is not None and best.key.target == "http://10.0.0.1:13080"


def test_a_disproven_copy_is_not_ranked_and_its_chain_goes_with_it() -> None:
    index = Index()
    a, b = TargetKey("g", "a"), TargetKey("g", "b")
    chain = ("snapshot-200-H.tar", "incremental-snapshot-200-250-H.tar")
    index.apply(a, infos(*chain), T0 + timedelta(seconds=5))
    index.apply(b, infos(*chain), T0)
    full = f"snapshot-200-{H}.tar"
    index.disprove(a, full, "manifest: name hash X, lattice hash gives Y")
    # a's full is out, and so is a's incremental, whose chain needs it; b's copies stay.
    assert {(s.key.target, s.info.slot) for s in index.sources("g")} == {("b", 250), ("b", 200)}
    assert [s.key.target for _f, s in index.find_file("g", full)] == ["b"]
    assert index.disproven() == {a: {full: "manifest: name hash X, lattice hash gives Y"}}
    index.disprove(a, full, None)
    assert [s.key.target for _f, s in index.find_file("g", full)] == ["a", "b"]
    assert index.disproven() == {}


def test_disproving_screens_alongside_the_trust_policy() -> None:
    index = Index()
    index.set_policy("g", SourceTrust(min_agreeing_sources=2))
    a, b, c = TargetKey("g", "a"), TargetKey("g", "b"), TargetKey("g", "c")
    for key in (a, b, c):
        index.apply(key, infos("snapshot-100-H.tar"), T0)
    index.disprove(c, f"snapshot-100-{H}.tar", "manifest: bank hash differs")
    assert sorted(s.key.target for s in index.sources("g")) == ["a", "b"]


def test_what_the_tracker_holds_changes_listings_not_the_ranking() -> None:
    index = Index()
    index.apply(TargetKey("g", "a"), infos("snapshot-100-H.tar"), T0)
    ranked, generation = index.ranked(), index.generation
    name = f"snapshot-90-{H}.tar"
    index.hold("cache", "g", [(name, 10, 1.0)])
    assert index.generation == generation + 1  # listings are made again
    assert index.ranked() is ranked  # the ranking is not: holdings are not in it
    assert [s.info.files[0].bare_name for s in index.held("g")] == [name]
    assert [f.bare_name for f, _source in index.find_file("g", name)] == [name]
    assert index.served_fulls("g") == {100, 90}
    index.hold("cache", "g", [(name, 10, 1.0)])  # the same: nothing changed
    assert index.generation == generation + 1


def test_a_configured_machines_gossip_rpc_is_not_a_second_voice() -> None:
    """The operator's sidecar on a machine and that machine's RPC found by discovery made
    two voices: with two needed to agree, that machine alone ranked its slot over two other
    machines'."""
    index = Index()
    index.set_policy("g", SourceTrust(min_agreeing_sources=2))
    index.apply(TargetKey("g", "http://10.0.0.5:9000"), infos("snapshot-900-H.tar.zst"), T0)
    gossip = TargetKey("g", "http://10.0.0.5:8899", discovered=True)
    index.apply(gossip, infos("snapshot-900-H.tar.zst"), T0)
    for n in (1, 2):
        index.apply(TargetKey("g", f"http://10.0.0.{n}:9000"), infos("snapshot-100-H.tar.zst"), T0)
    best = index.best_full("g")
    assert best is not None and best.info.slot == 100


def test_a_hash_that_could_never_be_ranked_does_not_tie_a_slot() -> None:
    """A lone discovered node (never ranked alone) listing a configured target's slot under
    another hash made a one-to-one tie: nothing at that slot was ranked, and a node listing
    every slot so left the group nothing to hand out. It is marked, the slot ranked."""
    other = base58.b58encode(bytes([8]) * 32).decode()
    index = Index()
    index.set_policy("g", SourceTrust())
    own = TargetKey("g", "http://10.0.0.1:9000")
    index.apply(own, infos("snapshot-100-H.tar.zst", "snapshot-200-H.tar.zst"), T0)
    liar = TargetKey("g", "http://203.0.113.9:8899", discovered=True)
    index.apply(liar, infos(f"snapshot-200-{other}.tar.zst"), T0)
    best = index.best_full("g")
    assert best is not None and best.info.slot == 200
    assert index.mismatches() == {liar: "hash mismatch at slot 200"}


def test_a_copy_that_failed_its_check_is_not_ranked_while_it_is_held_back() -> None:
    """A source whose newest full failed its check stayed the best full: every node's short
    redirect led to a 502 for ``reject_for``, while another source held an older good one.
    Held back, it is not ranked (nor its incrementals); a request for it still finds it
    (the answer names the failure); once the rejection runs out it is ranked again."""
    now = [1000.0]
    index = Index(clock=lambda: now[0])
    rejections = Rejections()
    index.hold_back(rejections)
    liar, honest = TargetKey("g", "http://10.0.0.9:9000"), TargetKey("g", "http://10.0.0.1:9000")
    newest = "snapshot-200-H.tar.zst"
    index.apply(liar, infos(newest, "incremental-snapshot-200-250-H.tar.zst"), T0)
    index.apply(honest, infos("snapshot-100-H.tar.zst"), T0)
    assert index.best_full("g").info.slot == 200  # type: ignore[union-attr]
    newest = newest.replace("H", H)  # the name as listed
    rejections.reject(liar, newest, "bad", now=now[0], hold=600)
    assert index.best_full("g").info.slot == 100  # type: ignore[union-attr]
    assert index.best_incremental("g") is None
    assert [s.key for _f, s in index.find_file("g", newest)] == [liar]
    incremental = "incremental-snapshot-200-250-H.tar.zst".replace("H", H)
    assert [s.key for _f, s in index.find_file("g", incremental)] == [liar]
    # the tracker's own good copy of it is listed meanwhile: no ranked source lists it
    index.hold("cache", "g", [(newest, 4096, 0.0)])
    assert [s.info.files[0].bare_name for s in index.held("g")] == [newest]
    now[0] += 600
    assert index.best_full("g").info.slot == 200  # type: ignore[union-attr]
