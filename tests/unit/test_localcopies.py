"""Local files (docs/architecture.md, "Proven archives": "Local files"): which to check,
where each stands in the ranking, the local gate of a group, each file its own copy in the
JSON and in ``/v1/targets``; as tables (no network, no disk)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from tracker.core.digests import Digests, Verified
from tracker.core.snapshots import SnapshotFile, chains_from_files, parse_archive_name
from tracker.ordering.index import Index, TargetKey
from tracker.proof.levels import Level, Proof
from tracker.proof.records.localcopies import (
    NOT_YET,
    Checked,
    FileIdentity,
    LocalCopy,
    Standing,
    admission,
    checks_due,
    gated,
    holder,
    standing,
    still_said,
)
from tracker.web.wire import held_copy, local_files_json

H = "7G3gw9TmwzT24jhJQyrPnH2QaKUZ7MHWGG9KW8XaPbDb"
FULL = f"snapshot-100-{H}.tar.zst"
INC = f"incremental-snapshot-100-160-{H}.tar.zst"
KEY = TargetKey("g", "/ledger")
A, B = LocalCopy(KEY, FULL, f"/ledger/{FULL}"), LocalCopy(KEY, INC, f"/ledger/{INC}")
ONE: FileIdentity = (1, 10, 500, 7)
SHA = "ab" * 32
ACCOUNTS = Proof(Level.ACCOUNTS, H, "FF2m")
MANIFEST = Proof(Level.MANIFEST, H, "FF2m")
T0 = datetime(2026, 11, 25, tzinfo=UTC)
#: A full's proof stopped by the tracker's own shortage (an OOM-killed hashing process).
OWN_SHORT = Proof(
    Level.MANIFEST,
    H,
    "FF2m",
    note=(
        "not proven: the hashing process ended"
        " (killed by SIGKILL: out of memory? (the kernel's OOM killer sends it))"
    ),
    local_cause=True,
)
BOUND = "not proven: 2000 accounts over the bound of 1000"


def passed(proof: Proof = ACCOUNTS, identity: FileIdentity = ONE) -> Checked:
    return Checked(identity, Verified(SHA, proof, 500, 1_000.0))


@pytest.mark.parametrize(
    ("found", "checked", "tried", "due"),
    [
        pytest.param([(A, ONE), (B, ONE)], {}, {}, [A, B], id="new files: each, in order"),
        pytest.param([(A, ONE)], {A.path: passed()}, {}, [], id="checked as it is: not again"),
        pytest.param(
            [(A, (1, 11, 500, 7))], {A.path: passed()}, {}, [A], id="another inode: again"
        ),
        pytest.param([(A, (1, 10, 600, 7))], {A.path: passed()}, {}, [A], id="grown: again"),
        pytest.param([(A, (1, 10, 500, 8))], {A.path: passed()}, {}, [A], id="touched: again"),
        pytest.param(
            [(A, ONE)], {A.path: Checked(ONE, failed="zstd: bad")}, {}, [], id="failed: not again"
        ),
        pytest.param([(A, None)], {}, {}, [], id="gone: nothing to check"),
        pytest.param([(A, ONE), (A, ONE)], {}, {}, [A], id="listed twice: once"),
        pytest.param([(A, ONE)], {}, {A.path: 950.0}, [], id="unreadable lately: waits"),
        pytest.param([(A, ONE)], {}, {A.path: 900.0}, [A], id="unreadable long ago: again"),
        pytest.param(
            [(A, ONE)],
            {A.path: passed(OWN_SHORT)},
            {A.path: 950.0},
            [],
            id="short for the tracker's own cause lately: waits",
        ),
        pytest.param(
            [(A, ONE)],
            {A.path: passed(OWN_SHORT)},
            {A.path: 900.0},
            [A],
            id="short for the tracker's own cause long ago: again, though the same file",
        ),
        pytest.param(
            [(A, ONE)],
            {A.path: passed(Proof(Level.MANIFEST, H, "FF2m", note=BOUND))},
            {},
            [],
            id="short for the archive's own size (the operator's bound): not again",
        ),
    ],
)
def test_which_local_files_are_checked(
    found: list[tuple[LocalCopy, FileIdentity | None]],
    checked: dict[str, Checked],
    tried: dict[str, float],
    due: list[LocalCopy],
) -> None:
    got = checks_due(found, checked, tried, now=1_000.0, retry_after=60.0)
    assert [copy for copy, _identity in got] == due


@pytest.mark.parametrize(
    ("done", "required", "name", "expected"),
    [
        pytest.param(None, None, FULL, Standing(False), id="not checked, no level: ranks"),
        pytest.param(None, Level.MANIFEST, FULL, Standing(False), id="not checked: not proven"),
        pytest.param(
            Checked(ONE, failed="tar: missing version"),
            None,
            FULL,
            Standing(False, "tar: missing version"),
            id="failed, no level: refused all the same (an empty file was the best full)",
        ),
        pytest.param(
            Checked(ONE, failed="tar: missing version"),
            Level.MANIFEST,
            FULL,
            Standing(False, "tar: missing version"),
            id="failed, a level: refused",
        ),
        pytest.param(passed(), None, FULL, Standing(True), id="passed, no level"),
        pytest.param(passed(), Level.ACCOUNTS, FULL, Standing(True), id="full at accounts"),
        pytest.param(
            passed(MANIFEST), Level.MANIFEST, INC, Standing(True), id="incremental at manifest"
        ),
        pytest.param(
            passed(MANIFEST),
            Level.ACCOUNTS,
            INC,
            Standing(True),
            id="accounts means manifest for an incremental",
        ),
        pytest.param(
            passed(MANIFEST),
            Level.ACCOUNTS,
            FULL,
            Standing(False, "proven to manifest, accounts required"),
            id="a full below: refused with the shortfall",
        ),
        pytest.param(
            passed(),
            Level.CLUSTER,
            FULL,
            Standing(False, "proven to accounts, cluster required"),
            id="no votes: below cluster",
        ),
    ],
)
def test_where_a_local_file_stands(
    done: Checked | None, required: Level | None, name: str, expected: Standing
) -> None:
    assert standing(done, required, name) == expected


@pytest.mark.parametrize(
    ("require", "level"),
    [
        (None, None),
        (Level.STRUCTURE, None),
        (Level.MANIFEST, Level.MANIFEST),
        (Level.CLUSTER, Level.CLUSTER),
    ],
)
def test_which_levels_gate_local_files(require: Level | None, level: Level | None) -> None:
    assert gated(require) == level


def local_index(remote: bool, local: bool) -> Index:
    """Target ``r`` (over the network) and the local target hold FULL and INC."""
    index = Index()
    index.rank_proven_only("g", remote, local=local)
    for key, where in ((TargetKey("g", "r"), "url"), (KEY, "path")):
        files = []
        for name in (FULL, INC):
            parsed = parse_archive_name(name)
            assert parsed is not None
            files.append(SnapshotFile(parsed, name, **{where: f"/ledger/{name}"}))
        index.apply(key, chains_from_files(files), T0)
    return index


def ranked(index: Index) -> list[tuple[str, int]]:
    return sorted((s.key.target, s.info.slot) for s in index.sources("g"))


@pytest.mark.parametrize(
    ("remote", "local", "proven", "expected"),
    [
        pytest.param(
            False,
            False,
            (),
            [("/ledger", 100), ("/ledger", 160), ("r", 100), ("r", 160)],
            id="no gate: every copy",
        ),
        pytest.param(
            False, True, (), [("r", 100), ("r", 160)], id="local gate: unproven local files out"
        ),
        pytest.param(
            False,
            True,
            (FULL,),
            [("/ledger", 100), ("r", 100), ("r", 160)],
            id="the full proven ranks; the incremental waits for its own proof",
        ),
        pytest.param(
            True,
            True,
            (FULL, INC),
            [("/ledger", 100), ("/ledger", 160)],
            id="both gates: the proven local chain only",
        ),
        pytest.param(
            True,
            False,
            (),
            [("/ledger", 100), ("/ledger", 160)],
            id="head reads only: local files rank unproven",
        ),
    ],
)
def test_a_group_s_local_gate(
    remote: bool, local: bool, proven: tuple[str, ...], expected: list[tuple[str, int]]
) -> None:
    index = local_index(remote, local)
    for name in proven:
        index.prove(KEY, name)
    assert ranked(index) == expected


def test_an_unproven_local_file_says_why() -> None:
    index = local_index(False, True)
    assert index.disproven()[KEY] == {FULL: NOT_YET, INC: NOT_YET}
    index.rank_proven_only("g", False, local=False)
    assert KEY not in index.disproven()


def test_a_local_file_is_its_own_copy_in_the_json() -> None:
    """A local file shows its own check, never the cache's copy of the same name; a file
    over the network never shows a local file's."""
    digests = Digests()
    mine = Verified(SHA, ACCOUNTS, 500, 1_000.0)
    cached = Verified("cd" * 32, MANIFEST, 400, 900.0)
    digests.hold(holder(A.path), "g", FULL, mine)
    parsed = parse_archive_name(FULL)
    assert parsed is not None
    local = SnapshotFile(parsed, FULL, path=A.path)
    other_local = SnapshotFile(parsed, FULL, path="/other/" + FULL)
    remote = SnapshotFile(parsed, FULL, url="http://x/" + FULL)
    assert held_copy(digests, "g", local) == mine
    assert held_copy(digests, "g", other_local) is None
    assert held_copy(digests, "g", remote) is None
    digests.hold("cache", "g", FULL, cached)
    assert held_copy(digests, "g", remote) == cached
    assert held_copy(digests, "g", local) == mine
    assert digests.get("g", FULL) == SHA  # the .sha256 route: the best proven copy held


def test_a_local_target_s_files_in_v1_targets() -> None:
    checks = [(FULL, passed()), (INC, None), ("x", Checked(ONE, failed="tar: truncated"))]
    assert local_files_json(checks) == [
        {"file_name": FULL, "state": "checked", "sha256": SHA, "proof": ACCOUNTS.to_json()},
        {"file_name": INC, "state": "checking"},
        {"file_name": "x", "state": "failed", "reason": "tar: truncated"},
    ]


OTHER: FileIdentity = (1, 99, 500, 7)


@pytest.mark.parametrize(
    ("done", "opened", "required", "expected"),
    [
        pytest.param(passed(), ONE, None, ("", SHA), id="proven, no level: with its digest"),
        pytest.param(passed(), ONE, Level.ACCOUNTS, ("", SHA), id="proven to the level"),
        pytest.param(None, ONE, None, ("", ""), id="not checked, no level: served bare"),
        pytest.param(None, ONE, Level.MANIFEST, (NOT_YET, ""), id="not checked: refused"),
        pytest.param(passed(), OTHER, Level.ACCOUNTS, (NOT_YET, ""), id="replaced since its check"),
        pytest.param(passed(), OTHER, None, ("", ""), id="replaced, no level: no digest"),
        pytest.param(
            Checked(ONE, failed="tar: truncated"),
            ONE,
            None,
            ("tar: truncated", ""),
            id="failed, no level: refused all the same (it was served bare)",
        ),
        pytest.param(
            Checked(ONE, failed="tar: truncated"),
            ONE,
            Level.MANIFEST,
            ("tar: truncated", ""),
            id="failed, a level: refused",
        ),
        pytest.param(
            Checked(ONE, failed="tar: truncated"),
            OTHER,
            Level.MANIFEST,
            (NOT_YET, ""),
            id="a failed file replaced: the new one waits for its own check",
        ),
        pytest.param(
            passed(MANIFEST),
            ONE,
            Level.ACCOUNTS,
            ("proven to manifest, accounts required", ""),
            id="below the level",
        ),
    ],
)
def test_whether_a_local_file_as_opened_may_be_served(
    done: Checked | None, opened: FileIdentity, required: Level | None, expected: tuple[str, str]
) -> None:
    assert admission(done, opened, required, FULL) == expected


@pytest.mark.parametrize(
    ("tries", "tried", "due"),
    [
        (1, 900.0, [A]),  # one short check 100 s ago: a minute's wait is over
        (2, 870.0, [A]),  # two: two minutes
        (2, 960.0, []),
        (3, 900.0, []),  # three: four minutes
        (3, 700.0, [A]),
        (40, 1_000.0 - 3_599.0, []),  # many: an hour at most
        (40, 1_000.0 - 3_600.0, [A]),
    ],
)
def test_a_file_whose_checks_keep_falling_short_waits_longer_each_time(
    tries: int, tried: float, due: list[LocalCopy]
) -> None:
    checked = {A.path: passed(OWN_SHORT)}
    got = checks_due(
        [(A, ONE)], checked, {A.path: tried}, now=1_000.0, retry_after=60.0, tries={A.path: tries}
    )
    assert [copy for copy, _identity in got] == due


FAILED = Checked(ONE, failed="zstd: stream truncated at byte 9")
OTHER: FileIdentity = (1, 11, 500, 7)
GONE: tuple[LocalCopy | None, FileIdentity | None] = (None, None)


@pytest.mark.parametrize(
    ("listed", "done", "deferred", "unlisted", "stands"),
    [
        pytest.param((A, ONE), passed(), False, False, True, id="the same file"),
        pytest.param((A, ONE), None, False, False, True, id="not checked yet"),
        pytest.param((A, OTHER), passed(), False, False, False, id="replaced"),
        pytest.param((A, OTHER), FAILED, False, False, False, id="a failed file replaced"),
        pytest.param(GONE, passed(), False, False, False, id="gone from a listed directory"),
        pytest.param(GONE, FAILED, False, False, False, id="failed, gone: forgotten"),
        pytest.param(GONE, passed(), True, False, True, id="deferred: everything stands"),
        pytest.param(GONE, FAILED, True, False, True, id="deferred, failed"),
        pytest.param(
            GONE, FAILED, False, True, True, id="unlistable: its refusal stands (it was ranked)"
        ),
        pytest.param(GONE, passed(), False, True, False, id="unlistable: what passed is not"),
        pytest.param(GONE, None, False, True, False, id="unlistable, not checked yet"),
    ],
)
def test_what_stands_of_a_local_file_after_a_listing(
    listed: tuple[LocalCopy | None, FileIdentity | None],
    done: Checked | None,
    deferred: bool,
    unlisted: bool,
    stands: bool,
) -> None:
    assert still_said(A, listed, done, deferred=deferred, unlisted=unlisted) is stands
