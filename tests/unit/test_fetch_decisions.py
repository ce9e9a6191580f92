"""The pure decisions of ``fetch`` about the ledger: whether saved bytes may be resumed (and
why not), whether the archives fit, which local files are suspect, and which sources are
tried alone after a rejected combined copy. No network."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import attrs
import pytest
from names import full_name, incremental_name

from tracker.core.snapshots import SnapshotFile, chains_from_files
from tracker.core.snapshots import parse_archive_name as parse
from tracker.errors import FetchError
from tracker.fetch import space
from tracker.fetch.download import alone, ranged_first
from tracker.fetch.ledger import retired, stale_downloads, suspects, without
from tracker.fetch.listing import RemoteFile, RemoteSnapshot
from tracker.fetch.lock import ledger_lock, lock_path
from tracker.fetch.settings import FetchSettings
from tracker.fetch.sourcechecks import Source, not_renewed
from tracker.fetch.state import Identity, State, one_source_reason, restart_reason
from tracker.fetch.trust import TrustPolicy
from tracker.fetch.vouching import mixing_problem
from tracker.proof.accounts.budget import AccountsLimits

DATE = "Tue, 01 Jul 2025 10:00:00 GMT"
LATER = "Wed, 02 Jul 2025 10:00:00 GMT"
SAVED = State("x", Identity(100, '"e1"', DATE), ((0, 50),))


@pytest.mark.parametrize(
    ("saved", "offered", "ranges", "reason"),
    [
        (None, Identity(100, '"e1"', DATE), True, ""),
        (State("x", Identity(100, '"e1"', DATE)), Identity(100), True, ""),  # nothing saved
        (SAVED, Identity(100, '"e1"', DATE), True, ""),
        (SAVED, Identity(100, '"e1"'), True, ""),  # the strong ETag proves it
        (SAVED, Identity(120, '"e1"', DATE), True, "size changed (100 bytes, now 120)"),
        (SAVED, Identity(100, '"e1"', DATE), False, "does not take Range requests"),
        (SAVED, Identity(100), True, "the source sent no validator"),
        (State("x", Identity(100), ((0, 50),)), Identity(100), True, "sent no validator"),
        (SAVED, Identity(100, '"e2"', DATE), True, "etag '\"e2\"'"),
        (
            State("x", Identity(100, "", DATE), ((0, 50),)),
            Identity(100, "", LATER),
            True,
            "last-modified",
        ),
    ],
)
def test_why_a_resume_starts_over(
    saved: State | None, offered: Identity, ranges: bool, reason: str
) -> None:
    found = restart_reason(saved, offered, ranges)
    assert (reason in found) if reason else found == ""
    # Resumed exactly when the state's own rule says it is the same file.
    if saved is not None and saved.done and ranges:
        assert (found == "") == saved.identity.same_file(offered)


A, B = "http://a/x", "http://b/x"


@pytest.mark.parametrize(
    ("saved", "url", "reason"),
    [
        (None, A, ""),
        (State("x", Identity(100, '"e1"', DATE)), A, ""),  # nothing saved
        (attrs.evolve(SAVED, writers=(A,)), A, ""),  # its own bytes
        (attrs.evolve(SAVED, writers=(B,)), A, "came from http://b/x"),  # another's
        (attrs.evolve(SAVED, writers=(A, B)), A, "came from http://a/x, http://b/x"),
        (SAVED, A, "sources not recorded"),  # an older state: who wrote them is unknown
    ],
)
def test_whose_bytes_a_copy_of_one_source_resumes(
    saved: State | None, url: str, reason: str
) -> None:
    """A copy that must be one source's resumes only the bytes that source wrote: the same
    size and validators do not make another source's bytes its own."""
    found = one_source_reason(saved, url)
    assert (reason in found) if reason else found == ""


@pytest.mark.parametrize(
    ("needed", "held", "free", "missing"),
    [
        (100, 0, 100, 0),
        (100, 0, 99, 1),
        (100, 40, 60, 0),  # a resumable temp file already holds 40
        (100, 40, 59, 1),
        (100, 150, 0, 0),  # a preallocated temp file holds it all
        (0, 0, 0, 0),
        (110 * 2**30, 0, 100 * 2**30, 10 * 2**30),
    ],
)
def test_shortfall(needed: int, held: int, free: int, missing: int) -> None:
    assert space.shortfall(needed, held, free) == missing
    reason = space.no_room_reason("a.tar.zst", "/l", needed, held, free)
    assert bool(reason) == bool(missing)
    if missing:
        assert f"{needed - held} bytes needed, {free} free" in reason


@pytest.mark.parametrize("code", [errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL])
def test_no_preallocation_falls_back_quietly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int
) -> None:
    def unsupported(fd: int, size: int) -> None:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(space, "fallocate", unsupported)
    path = tmp_path / "f"
    with path.open("wb") as f:
        space.preallocate(f.fileno(), 12345)
    assert path.stat().st_size == 12345


def test_a_full_disk_while_preallocating_is_raised(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(fd: int, size: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(space, "fallocate", full)
    with (tmp_path / "f").open("wb") as f, pytest.raises(OSError, match="No space"):
        space.preallocate(f.fileno(), 12345)


def test_fallocate_allocates_without_writing(tmp_path: Path) -> None:
    """fallocate(2) itself: the blocks are allocated, the file stays zeros of its length
    unset (the length is preallocate's ftruncate)."""
    path = tmp_path / "f"
    with path.open("wb") as f:
        try:
            space.fallocate(f.fileno(), 4 * 1024 * 1024)
        except OSError as exc:
            if exc.errno not in space.NO_PREALLOCATION:
                raise
            pytest.skip(f"this file system has no preallocation ({exc.strerror})")
    assert path.stat().st_blocks * 512 >= 4 * 1024 * 1024


def local_file(name: str, size: int) -> SnapshotFile:
    parsed = parse(name)
    assert parsed is not None
    return SnapshotFile(name=parsed, file_name=name, size=size, path=f"/l/{name}")


def remote(name: str, size: int) -> RemoteFile:
    parsed = parse(name)
    assert parsed is not None
    return RemoteFile(parsed, size, (f"http://t/{name}",))


def test_suspects_are_files_of_another_size_than_listed() -> None:
    full, incr, other = full_name(100), incremental_name(100, 150), full_name(50)
    local = chains_from_files([local_file(incr, 7), local_file(full, 500), local_file(other, 3)])
    offered = [RemoteSnapshot(remote(full, 1000), remote(incr, 7))]
    from tracker.fetch.ledger import listed_sizes

    for checked in (True, False):
        found = suspects(local, listed_sizes(offered), checked=checked)
        assert [f.file_name for f in found] == [full]
    left = {f.file_name for info in without(local, found) for f in info.files}
    assert left == {incr, other}
    # A size not listed (0: ``--source``): the check decides, so each file of an offered
    # name is a suspect when checked; unchecked, its name is all there is to go by.
    unsized = listed_sizes([RemoteSnapshot(remote(full, 0), remote(incr, 0))])
    assert sorted(f.file_name for f in suspects(local, unsized, checked=True)) == sorted(
        [full, incr]
    )
    assert suspects(local, unsized, checked=False) == []


def source(url: str, sent: int) -> Source:
    return Source(url, Identity(10), ranges=True, sent=sent, dropped="slow", failures=2)


def test_alone_tries_each_source_fresh_in_ranking_order() -> None:
    a, b, c = source("a", 5), source("b", 0), source("c", 7)
    tries = alone([c, a, b], [a, b, c])
    assert [[s.url for s in pool] for pool in tries] == [["a"], ["b"], ["c"]]
    assert all(s.sent == 0 and not s.dropped and not s.failures for [s] in tries)


@pytest.mark.parametrize(
    ("ranges", "order"),
    [
        ({"a": True, "b": True}, ["a", "b"]),
        ({"a": False, "b": True}, ["b", "a"]),  # agave's RPC first: the sidecar leads
        ({"a": False, "b": True, "c": False, "d": True}, ["b", "d", "a", "c"]),
        ({"a": False, "b": False}, ["a", "b"]),  # none takes ranges: as ranked
        ({}, []),
    ],
)
def test_sources_that_take_ranges_come_first(ranges: dict[str, bool], order: list[str]) -> None:
    sources = [Source(url, Identity(10), ranges=takes) for url, takes in ranges.items()]
    assert [s.url for s in ranged_first(sources)] == order


def test_alone_leaves_out_the_one_source_that_sent_the_bad_copy() -> None:
    a, b = source("a", 10), source("b", 0)
    assert [[s.url for s in pool] for pool in alone([a, b], [a, b])] == [["b"]]


def test_the_ledger_lock_admits_one_fetch(tmp_path: Path) -> None:
    with ledger_lock(str(tmp_path)):
        assert os.path.exists(lock_path(str(tmp_path)))
        with (
            pytest.raises(FetchError, match="another fetch is running"),
            ledger_lock(str(tmp_path)),
        ):
            pass
    assert not os.path.exists(lock_path(str(tmp_path)))  # removed: the ledger is clean
    with ledger_lock(str(tmp_path)):  # and taken again
        pass


F1, F2, F3 = full_name(20_000), full_name(20_400), full_name(19_000)
I1, I2 = incremental_name(20_000, 20_800), incremental_name(20_400, 20_900)


@pytest.mark.parametrize(
    ("names", "keep", "fresh", "gone"),
    [
        # the keep newest of each kind stay
        ([F1, F2, F3], 1, set(), [F1, F3]),
        ([F1, F2, F3, I1, I2], 2, set(), [F3]),
        ([F1, F2], 0, set(), []),  # 0: keep everything
        # what was just put in place stays, whatever its age
        ([F1, F2, F3], 1, {F3}, [F1]),
        # the pair handed out sits on an older full the ledger held: the fetched
        # incremental's base stays (it was removed: the incremental had nothing to load on)
        ([F1, F2, I1], 1, {I1}, []),
        ([F1, F2, F3, I1, I2], 1, {I1}, [F3]),
        ([F1, F2, F3, I1, I2], 1, {I2}, [F1, F3, I1]),
        # names that are no archives are never touched
        ([F1, F2, "notes.txt", ".fetch.lock"], 1, set(), [F1]),
    ],
)
def test_retired(names: list[str], keep: int, fresh: set[str], gone: list[str]) -> None:
    assert sorted(retired(names, keep, fresh)) == sorted(gone)


@pytest.mark.parametrize(
    ("names", "planned", "stale"),
    [
        # an earlier run's download of a full no longer planned: its temp file and state
        ([f".tmp-{F3}", f".tmp-{F3}.state", F1], {F1}, [F3]),
        ([f".tmp-{F3}.state.new"], {F1}, [F3]),  # a state being replaced when it stopped
        # what is planned now resumes
        ([f".tmp-{F1}", f".tmp-{F1}.state", f".tmp-{I1}"], {F1, I1}, []),
        # the offer moved on to a newer incremental: the older one's download goes
        ([f".tmp-{I1}", f".tmp-{I1}.state"], {F1, I2}, [I1]),
        ([f".tmp-{F1}", f".tmp-{I1}"], set(), [F1, I1]),  # nothing to do: all of them
        # names that are no downloads of archives are never touched
        ([".tmp-notes", ".tmp-", ".fetch.lock", F3, f"tmp-{F3}"], {F1}, []),
    ],
)
def test_stale_downloads(names: list[str], planned: set[str], stale: list[str]) -> None:
    assert stale_downloads(names, planned) == sorted(stale)


@pytest.mark.parametrize(
    ("name", "listed", "keys", "verify", "accounts", "one_source"),
    [
        # something checks every byte of a copy of several sources: pooled
        (full_name(100), "ab" * 32, False, True, False, False),  # the tracker's sha256
        (incremental_name(100, 150), "", True, True, False, False),  # --trust-key
        (full_name(100), "", False, True, True, False),  # a full's accounts proof
        (full_name(100), "", False, False, False, False),  # --verify false: nothing checked
        # nothing does: one source's copy
        (incremental_name(100, 150), "", False, True, True, True),
        (full_name(100), "", False, True, False, True),  # --prove-accounts false
    ],
)
def test_what_lets_a_copy_be_made_of_several_sources(
    name: str, listed: str, keys: bool, verify: bool, accounts: bool, one_source: bool
) -> None:
    parsed = parse(name)
    assert parsed is not None
    file = RemoteFile(parsed, 10, (f"http://t/{name}",), sha256=frozenset({listed} - {""}))
    settings = FetchSettings(
        verify=verify,
        trust=TrustPolicy(frozenset({"k"}) if keys else frozenset()),
        prove_accounts=AccountsLimits() if accounts else None,
    )
    assert bool(mixing_problem(file, settings)) is one_source


def test_a_saved_state_names_its_writers_without_their_credentials(tmp_path: Path) -> None:
    # docs/fetch.md: credentials in a --source URL (http://user:pw@host) go as Basic
    # credentials to that origin; the state (written 0644 into the ledger) named the writers
    # by that URL, the password with it.
    from tracker.fetch.state import load_state, save_state, state_path, temp_path

    secret = "http://user:hunter2@a/x?token=s3cr3t"
    (tmp_path / os.path.basename(temp_path(str(tmp_path), "x"))).write_bytes(b"y" * 100)
    save_state(str(tmp_path), attrs.evolve(SAVED, done=((0, 100),), writers=(secret,)))
    text = Path(state_path(str(tmp_path), "x")).read_text()
    assert "hunter2" not in text and "s3cr3t" not in text, text
    loaded = load_state(str(tmp_path), "x")
    assert loaded is not None and one_source_reason(loaded, secret) == ""  # still its own


@pytest.mark.parametrize(
    ("written", "earlier", "earlier_writers", "dropped", "asks"),
    [
        # the second source's bytes in the head: asked of the first; its own are its word
        ({"a": [(0, 8)], "b": [(8, 40)]}, [], (), "", [(8, 20, 1, 0)]),
        ({"a": [(0, 25)], "b": [(25, 40)]}, [], (), "", []),
        # an earlier run's bytes: the state names its sources, not their ranges
        ({"a": [(10, 40)]}, [(0, 10)], ("http://c/f",), "", [(0, 10, -1, 0)]),
        ({"a": [(10, 40)]}, [(0, 10)], ("http://a/f", "http://b/f"), "", [(0, 10, -1, 0)]),
        ({"b": [(10, 40)]}, [(0, 10)], ("http://a/f",), "", [(10, 20, 1, 0)]),  # the first's
        ({"a": [(0, 40)]}, [(30, 40)], ("http://b/f",), "", []),  # none in the head
        # the first dropped: another voice than the writer's must send the same bytes
        ({"a": [(0, 4)], "b": [(4, 40)]}, [], (), "a", [(4, 20, 1, 2)]),
    ],
)
def test_which_bytes_no_level_binds_of_a_pooled_copy_are_asked_again(
    written: dict[str, list[tuple[int, int]]],
    earlier: list[tuple[int, int]],
    earlier_writers: tuple[str, ...],
    dropped: str,
    asks: list[tuple[int, int, int, int]],
) -> None:
    from tracker.fetch.unbound import unbound_plan
    from tracker.multisource.piececheck import UnboundAsk

    pool = [Source(f"http://{n}/f", Identity(40), ranges=True) for n in "abc"]
    pool = [attrs.evolve(s, dropped="slow") if s.url[7] == dropped else s for s in pool]
    by = {s: written.get(s.url[7], []) for s in pool}
    got = unbound_plan([(0, 20)], pool, by, earlier, earlier_writers)
    assert got == [UnboundAsk(*a) for a in asks]


@pytest.mark.parametrize(
    ("written", "earlier", "dropped"),
    [
        # the writer alone is left to ask
        ({"a": [(0, 4)], "b": [(4, 40)]}, [], "ac"),
        # an earlier run's bytes, and the first cannot be asked: no other may vouch for them
        ({"b": [(10, 40)]}, [(0, 10)], "a"),
    ],
)
def test_bytes_no_level_binds_of_a_pooled_copy_no_one_can_vouch_for(
    written: dict[str, list[tuple[int, int]]], earlier: list[tuple[int, int]], dropped: str
) -> None:
    from tracker.fetch.unbound import unbound_plan

    pool = [Source(f"http://{n}/f", Identity(40), ranges=True) for n in "abc"]
    pool = [attrs.evolve(s, dropped="slow") if s.url[7] in dropped else s for s in pool]
    by = {s: written.get(s.url[7], []) for s in pool}
    reason = unbound_plan([(0, 20)], pool, by, earlier, ("http://b/f",))
    assert isinstance(reason, str) and "which no level binds" in reason, reason


@pytest.mark.parametrize(
    ("now", "renewed"),
    [
        ("https://bucket:9000/g/name?X-Amz-Signature=2", True),  # a new signature
        ("https://BUCKET:9000/g/name", True),  # the same origin, written otherwise
        ("https://bucket:9000/g/other?X-Amz-Signature=2", False),  # another path
        ("https://other:9000/g/name?X-Amz-Signature=2", False),  # another host
        ("http://bucket:9000/g/name?X-Amz-Signature=2", False),  # another scheme
        ("https://bucket:9001/g/name?X-Amz-Signature=2", False),  # another port
        ("https://bucket:65536/g/name", False),  # a port no origin has
    ],
)
def test_a_renewed_link_is_the_same_url_but_its_query(now: str, renewed: bool) -> None:
    before = "https://bucket:9000/g/name?X-Amz-Signature=1"
    assert (not_renewed(before, now) == "") is renewed
