"""A group that ranks proven copies only (redirect mode with ``trust.require`` set,
docs/http-api.md "Proven archives"): what it ranks, lists and says, and where its head reads
start, as tables over the index."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import base58
import pytest
from helpers_config import load

from tracker.core.snapshots import SnapshotFile, SnapshotInfo, chains_from_files, parse_archive_name
from tracker.ordering.index import Index, TargetKey
from tracker.ordering.screens import NOT_YET
from tracker.proof.background.heads import proven_only

T0 = datetime(2026, 11, 25, 9, 0, tzinfo=UTC)
H = base58.b58encode(bytes(range(32))).decode()
FULL = f"snapshot-200-{H}.tar"
INC = f"incremental-snapshot-200-250-{H}.tar"
OLD = f"snapshot-100-{H}.tar"
A, B, C, L = (TargetKey("g", t) for t in ("a", "b", "c", "ledger"))


def infos(*names: str, local: bool = False) -> list[SnapshotInfo]:
    files = []
    for n in names:
        parsed = parse_archive_name(n)
        assert parsed is not None
        where = {"path": f"/ledger/{n}"} if local else {"url": f"http://x/{n}"}
        files.append(SnapshotFile(parsed, parsed.file_name, **where))
    return chains_from_files(files)


def gated(*proven: tuple[TargetKey, str]) -> Index:
    """Targets a (newest scrape), b and c hold FULL and INC, a also OLD; the local target
    holds OLD; the group ranks proven copies only; ``proven`` are proven."""
    index = Index()
    index.rank_proven_only("g", True)
    index.apply(A, infos(OLD, FULL, INC), T0 + timedelta(seconds=2))
    index.apply(B, infos(FULL, INC), T0 + timedelta(seconds=1))
    index.apply(C, infos(FULL, INC), T0)
    index.apply(L, infos(OLD, local=True), T0)
    for key, name in proven:
        index.prove(key, name)
    return index


def ranked(index: Index) -> list[tuple[str, int]]:
    return sorted((s.key.target, s.info.slot) for s in index.sources("g"))


@pytest.mark.parametrize(
    ("proven", "expected"),
    [
        pytest.param((), [("ledger", 100)], id="nothing proven: only the local file ranks"),
        pytest.param(((A, FULL),), [("a", 200), ("ledger", 100)], id="a proven full ranks"),
        pytest.param(
            ((A, INC),), [("ledger", 100)], id="an incremental without its full proven does not"
        ),
        pytest.param(
            ((A, INC), (A, FULL)),
            [("a", 200), ("a", 250), ("ledger", 100)],
            id="with its target's full proven it does",
        ),
        pytest.param(
            ((A, INC), (B, FULL)),
            [("b", 200), ("ledger", 100)],
            id="another target's full does not make a chain",
        ),
    ],
)
def test_a_group_that_requires_a_level_ranks_proven_copies_only(
    proven: tuple[tuple[TargetKey, str], ...], expected: list[tuple[str, int]]
) -> None:
    assert ranked(gated(*proven)) == expected


def test_an_unproven_copy_says_why_and_a_refusal_says_more() -> None:
    index = gated((A, FULL))
    out = index.disproven()
    assert out[B] == {FULL: NOT_YET, INC: NOT_YET}
    assert A in out and out[A] == {OLD: NOT_YET, INC: NOT_YET}
    assert L not in out  # a local file is not held back
    index.disprove(B, FULL, "manifest: bank hash X, its fields give Y")
    # the refusal comes last: /v1/targets shows it (tracker.web.wire.disproven_errors)
    assert list(index.disproven()[B].items())[-1] == (
        FULL,
        "manifest: bank hash X, its fields give Y",
    )


def test_the_best_redirect_never_points_at_an_unproven_copy() -> None:
    index = gated()
    best = index.best_full("g")
    assert best is not None and best.key == L  # the older, local full: nothing else proven
    assert index.best_incremental("g") is None
    assert index.find_file("g", FULL) == []
    index.prove(B, FULL)
    best = index.best_full("g")
    assert best is not None and best.key == B and best.info.slot == 200
    index.prove(B, FULL, proven=False)  # forgotten: out again
    best = index.best_full("g")
    assert best is not None and best.key == L


def test_head_reads_start_from_what_would_rank_were_every_copy_proven() -> None:
    index = gated()
    full, inc = index.unproven_best("g")
    assert [s.key.target for s in full] == ["a", "b", "c"]  # the most recently scraped first
    assert {s.info.files[0].bare_name for s in full} == {FULL}
    assert [s.key.target for s in inc] == ["a", "b", "c"]
    assert {s.info.files[0].bare_name for s in inc} == {INC}
    index.disprove(A, FULL, "manifest: bank hash X, its fields give Y")
    full, inc = index.unproven_best("g")  # a refused copy is no candidate, nor its chain
    assert [s.key.target for s in full] == ["b", "c"]
    assert [s.key.target for s in inc] == ["b", "c"]


def test_turning_it_off_ranks_every_copy_again_and_costs_nothing_else() -> None:
    index = gated()
    index.rank_proven_only("g", False)
    assert ranked(index) == [
        *[("a", 100), ("a", 200), ("a", 250)],
        *[("b", 200), ("b", 250), ("c", 200), ("c", 250), ("ledger", 100)],
    ]
    assert index.disproven() == {} and index.unproven_best("g") == []


def test_a_proof_of_a_group_that_ranks_every_copy_changes_nothing() -> None:
    index = Index()
    index.apply(A, infos(FULL), T0)
    before = index.generation
    index.prove(A, FULL)
    assert index.generation == before  # not re-ranked: the mark does not matter there


@pytest.mark.parametrize(
    ("settings", "trust", "expected"),
    [
        pytest.param("", "", False, id="nothing set: every copy ranks, as the Go tracker"),
        pytest.param("", "trust: {require: structure}", False, id="structure: no head read"),
        pytest.param("", "trust: {require: manifest}", True, id="manifest: proven only"),
        pytest.param("", "trust: {require: cluster}", True, id="cluster: proven only"),
        pytest.param(
            "proxy_snapshot_downloads: true\nproxy_snapshot_cache_dir: CACHE\n",
            "trust: {require: manifest}",
            False,
            id="proxy mode with a cache: the cache's check, not head reads",
        ),
        pytest.param(
            "proxy_snapshot_downloads: true\n",
            "trust: {require: manifest}",
            True,
            id="proxy mode uncached: every answer a relay, so head reads",
        ),
    ],
)
def test_which_groups_rank_proven_copies_only(
    tmp_path: Path, settings: str, trust: str, expected: bool
) -> None:
    settings = settings.replace("CACHE", str(tmp_path / "cache"))
    config = load(tmp_path, f"{settings}target_groups: [{{group: g, {trust}}}]\n")
    assert proven_only(config, config.target_groups[0]) is expected
