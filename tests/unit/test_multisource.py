"""The pure decisions of the shared download engine (tracker/multisource/) and of a refresh
from several sources (tracker/proxy/cachefill.py, tracker/multisource/piececheck.py), as
tables."""

from __future__ import annotations

import errno
import itertools

import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from tracker.errors import SourceBusy
from tracker.multisource.claims import MIN_STEAL, STEAL_AFTER_SECONDS, Pieces
from tracker.multisource.judging import laggards, slower_than
from tracker.multisource.piececheck import Verdict, comparers, verdict, voices
from tracker.multisource.sources import Identity, Source
from tracker.proxy.cachefill import (
    SPEED_WINDOW,
    lagging,
    lanes_for,
    part_of,
    piece_size_for,
    use_many,
    window_for,
)
from tracker.proxy.copyrepair import SLOT_WAIT

MiB = 1024 * 1024


def test_a_window_hands_out_pieces_only_near_the_gapless_prefix() -> None:
    pieces = Pieces(10 * MiB, MiB, window=3 * MiB)
    claims = [pieces.claim(0.0) for _ in range(3)]
    assert [(c.start, c.end) for c in claims if c is not None] == [
        (0, MiB),
        (MiB, 2 * MiB),
        (2 * MiB, 3 * MiB),
    ]
    # The fourth piece starts 3 MiB past a prefix of 0: not yet (nothing worth stealing).
    assert pieces.claim(0.0) is None
    pieces.advance(claims[0], MiB)  # type: ignore[arg-type]
    pieces.finish(claims[0])  # type: ignore[arg-type]
    got = pieces.claim(0.0)
    assert got is not None and (got.start, got.end) == (3 * MiB, 4 * MiB)


def test_without_a_window_pieces_go_in_order_anywhere() -> None:
    pieces = Pieces(10 * MiB, MiB)
    starts = [c.start for c in iter(lambda: pieces.claim(0.0), None)]
    assert starts == [i * MiB for i in range(10)]


@pytest.mark.parametrize(
    ("sent", "now", "stolen_from"),
    [
        # The head claim is slow (half a MiB in 2 s): its back half is stolen, not the
        # later claim that needs longer.
        ((MiB // 2, MiB // 8), 2.0, 0),
        # The head has not been asked long enough: its turn comes later; the next one.
        ((0, MiB // 8), STEAL_AFTER_SECONDS / 2, None),
    ],
)
def test_a_window_steals_from_the_head(
    sent: tuple[int, int], now: float, stolen_from: int | None
) -> None:
    pieces = Pieces(2 * 4 * MIN_STEAL, 4 * MIN_STEAL, window=8 * MIN_STEAL)
    claims = [pieces.claim(0.0), pieces.claim(0.0)]
    for claim, count in zip(claims, sent, strict=True):
        assert claim is not None
        pieces.advance(claim, count)
    stolen = pieces.claim(now)
    if stolen_from is None:
        assert stolen is None
    else:
        victim = claims[stolen_from]
        assert victim is not None and stolen is not None
        assert stolen.end == 4 * MIN_STEAL and victim.end == stolen.start


@pytest.mark.parametrize("left", [1, 4096, MIN_STEAL, 2 * MIN_STEAL - 1])
def test_the_claim_that_blocks_the_prefix_is_stolen_whatever_its_size(left: int) -> None:
    """A source answered its 206 and drips: its claim at the gapless prefix, however little
    is left of it, goes whole to an idle connection once its owner would need longer than
    STEAL_AFTER_SECONDS; a later claim that small stays its owner's."""
    # four pieces: the head, the later one and two more (a file of 4 MiB in pieces of 11
    # bytes would be 381,000 claims for the same question)
    pieces = Pieces(min(4 * MIN_STEAL, 4 * (left + 10)), left + 10, window=8 * MIN_STEAL)
    head = pieces.claim(0.0)
    assert head is not None
    pieces.advance(head, 10)  # ten bytes in 10 s: a byte a second
    later = pieces.claim(0.0)
    assert later is not None and later.left < 2 * MIN_STEAL
    while (rest := pieces.claim(0.0)) is not None:  # every other piece is taken
        pieces.advance(rest, rest.left)
        pieces.finish(rest)
    stolen = pieces.claim(10.0)
    assert stolen is not None and (stolen.start, stolen.end) == (10, left + 10)
    assert head.end == 10 and head.left == 0
    assert pieces.claim(10.0) is None  # the later claim is small and not at the prefix


def test_a_piece_given_back_keeps_the_pieces_in_order() -> None:
    """A probe or a failed request gives its claim back: a whole-file answer still runs on
    over the next pieces in order (it cannot skip one)."""
    pieces = Pieces(4 * MiB, MiB, window=4 * MiB)
    head, second, third = (pieces.claim(0.0) for _ in range(3))
    assert head is not None and second is not None and third is not None
    pieces.finish(second)
    pieces.finish(third)
    assert pieces.extend(head) and head.end == 2 * MiB
    assert pieces.extend(head) and head.end == 3 * MiB


def test_a_running_answer_extends_its_claim_over_free_pieces_only() -> None:
    pieces = Pieces(4 * MiB, MiB, window=4 * MiB)
    head = pieces.claim(0.0)
    assert head is not None
    assert pieces.extend(head) and head.end == 2 * MiB
    other = pieces.claim(0.0)  # takes 2-3 MiB
    assert other is not None and other.start == 2 * MiB
    assert not pieces.extend(head)  # the next piece is someone else's


@pytest.mark.parametrize(
    ("rates", "live", "busy", "expected"),
    [
        ([1.0, 100.0], [True, True], [True, True], ["slower than 10 bytes/s (1)", ""]),
        # the last one stays
        ([1.0, 1.0], [True, True], [True, True], ["slower than 10 bytes/s (1)", ""]),
        ([1.0, 100.0], [True, False], [True, True], ["", ""]),
        # not asked all the window (more sources than connections, the download's end): it
        # sent nothing by right, and stays for when the others fail
        ([0.0, 0.0, 100.0], [True] * 3, [False, False, True], ["", "", ""]),
        ([0.0, 100.0], [True, True], [True, False], ["slower than 10 bytes/s (0)", ""]),
    ],
)
def test_fetch_drops_sources_under_its_speed_floor(
    rates: list[float], live: list[bool], busy: list[bool], expected: list[str]
) -> None:
    assert slower_than(10, rates, live, busy) == expected


async def test_a_source_waiting_for_a_transfer_slot_is_not_dropped_as_stalled(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A source whose origin has no free transfer slot waits for one (``SLOT_WAIT``), gets
    SourceBusy, pauses and asks again: not its fault, and it sent nothing by right. It was
    counted busy all along (its request open while it waited and paused) and dropped as
    stalled for the rest of the refresh, though its slot would free a moment later."""
    from tracker.multisource.crew import Crew, lane, watch_speed
    from tracker.multisource.sources import Identity, Source

    class Tunables:
        read_timeout, write_size, write_delay, max_failures = 30.0, 2 * MiB, 0.05, 3

    fast = Source("http://a/f", Identity(64 * MiB), ranges=True)
    waiting = Source("http://b/f", Identity(64 * MiB), ranges=True)

    async def fetch(crew: Crew, source: Source, claim: object, first: object) -> None:
        if source is waiting:
            await trio.sleep(SLOT_WAIT)  # queued for a slot of its origin: none came
            raise SourceBusy("no free transfer slot")
        await trio.sleep(0.1)
        source.sent += MiB

    crew = Crew(Tunables(), Pieces(64 * MiB, MiB), -1, open=None, fetch_claim=fetch)  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        for source in (fast, waiting):
            nursery.start_soon(lane, crew, source)
        nursery.start_soon(watch_speed, [fast, waiting], SPEED_WINDOW, laggards)
        await trio.sleep(10 * SPEED_WINDOW)
        nursery.cancel_scope.cancel()
    assert waiting.live and fast.live, waiting.dropped
    assert waiting.slot_waits > 0


K = 1024.0


@pytest.mark.parametrize(
    ("rates", "busy", "expected"),
    [
        ([100 * K, 100 * K, 100 * K], [True, True, True], ["", "", ""]),
        ([100 * K, 0.0, 500 * K], [True, True, True], ["", "stalled", ""]),
        ([100 * K, 0.0, 500 * K], [True, False, True], ["", "", ""]),  # waited for a piece
        ([9000 * K, 800 * K, 5000 * K], [True, True, True], ["", "819200 bytes/s", ""]),
        ([0.0, 0.0, 0.0], [True, True, True], ["", "", ""]),  # nobody: the timeouts decide
        # The others wait behind the stalled one's claim (the window is full): it goes.
        ([0.0, 0.0, 0.0], [True, False, False], ["stalled", "", ""]),
        # Under the floor while another source can take its pieces, whatever the others do.
        ([1.0, 50 * K, 0.0], [True, True, False], ["1 bytes/s", "51200 bytes/s", ""]),
        # Two under the floor and nobody else: the last one stays.
        ([1.0, 2.0], [True, True], ["1 bytes/s", ""]),
    ],
)
def test_a_refresh_drops_laggards_relative_to_the_others(
    rates: list[float], busy: list[bool], expected: list[str]
) -> None:
    got = laggards(rates, [True] * len(rates), busy)
    assert [
        g.split(":")[0].split(",")[0][: len(e)] for g, e in zip(got, expected, strict=True)
    ] == expected


def test_a_busy_source_is_judged_against_the_others_rate_over_the_refresh() -> None:
    """A source that drips while the others, their pieces done, idle behind its claim: over
    the last window they sent nothing, but over the refresh MiBs a second; and a slow one
    above the floor against a fast one now idle."""
    idle = [False, False]
    drip = laggards([2.0, 0.0, 0.0], [True] * 3, [True, *idle], [2.0, 3e6, 3e6])
    assert drip[0].startswith("2 bytes/s, under the floor") and drip[1:] == ["", ""]
    slow = laggards([100 * K, 0.0], [True, True], [True, False], [100 * K, 5e6])
    assert slow[0].startswith("102400 bytes/s, under 10% of another source's") and not slow[1]
    # What the others sent over the refresh is only their best, not a floor of its own.
    assert laggards([100 * K, 0.0], [True, True], [True, False], [100 * K, 500 * K]) == ["", ""]


@pytest.mark.parametrize(("max_transfers", "lanes"), [(0, 2), (1, 1), (2, 2), (8, 2)])
def test_lanes_never_exceed_max_transfers(max_transfers: int, lanes: int) -> None:
    assert lanes_for(max_transfers) == lanes


@pytest.mark.parametrize(
    ("size", "lanes", "piece"),
    [(12 * MiB, 3, MiB), (256 * MiB, 6, 256 * MiB // 48 + 1), (100 << 30, 8, 16 * MiB)],
)
def test_pieces_are_between_1_and_16_mib(size: int, lanes: int, piece: int) -> None:
    assert piece_size_for(size, lanes) == piece
    assert window_for(piece, lanes) == max(4, 2 * lanes) * piece


@pytest.mark.parametrize(
    ("size", "others", "many"), [(MiB, 2, False), (4 * MiB, 0, False), (4 * MiB, 1, True)]
)
def test_small_files_come_from_one_source(size: int, others: int, many: bool) -> None:
    assert use_many(size, [object()] * others) is many  # type: ignore[list-item]


@pytest.mark.parametrize(
    ("on_disk", "comparer", "third", "expected"),
    [
        (b"bad", b"good", b"good", Verdict.OWNER_LIED),
        (b"good", b"bad", b"good", Verdict.COMPARER_LIED),
        (b"one", b"two", b"three", Verdict.UNKNOWN),
        (b"bad", b"good", None, Verdict.OWNER_LIED),  # provisionally: the check decides
    ],
)
def test_two_of_three_sources_decide_who_lied(
    on_disk: bytes, comparer: bytes, third: bytes | None, expected: Verdict
) -> None:
    assert verdict(on_disk, comparer, third) is expected


@pytest.mark.parametrize(
    ("owner", "live", "hosts", "asked"),
    [
        # one host: each source its own voice
        (0, [0, 1, 2], "aaa", [1, 2]),
        (2, [0, 1, 2], "aaa", [0, 1]),
        (1, [0, 1], "aa", [0]),
        (0, [0], "a", []),
        # hosts: the comparer of another host, the tie-breaker of a third
        (0, [0, 1, 2, 3], "abbc", [1, 3]),
        (0, [0, 1, 2], "abb", [1]),  # two ports of b are one voice: no tie-breaker
        (1, [0, 1, 2], "abb", [0]),  # b's ranges asked of a, not of b's other port
        (0, [0, 1, 2], "aab", [2]),
        # only b is live: no other voice to ask, its ports count as before
        (3, [1, 2], "abbc", [1, 2]),
        (1, [1, 2], "abbc", [2]),
    ],
)
def test_each_sources_ranges_are_asked_of_the_next_voices(
    owner: int, live: list[int], hosts: str, asked: list[int]
) -> None:
    sources = [_source(f"http://{host}.example:{8000 + n}/x") for n, host in enumerate(hosts)]
    assert comparers(owner, live, voices(sources, live)) == asked


def _source(url: str) -> Source:
    return Source(url, Identity(1), ranges=True)


def test_a_hosts_ports_speak_as_one_where_there_are_two_hosts() -> None:
    sources = [_source(u) for u in ("http://A.x:1/f", "http://a.x:2/f", "http://b.x/f")]
    assert voices(sources, [0, 1, 2]) == ["a.x", "a.x", "b.x"]
    # one host among those that can be asked: each source its own (b.x dropped)
    assert voices(sources, [0, 1]) == ["a.x#0", "a.x#1", "b.x#2"]


def test_a_discovered_ipv6_machine_speaks_once_however_many_addresses() -> None:
    """Two discovered sources on two addresses of one /48 (of one /64 or two) are one site
    (as trust counts them): not each other's comparer nor tie-breaker, where another can be
    asked."""
    urls = ["http://[2001:db8::1]:1/f", "http://[2001:db8:0:2::1]:1/f", "http://[2001:db8:1::1]/f"]
    sources = [_source(u) for u in urls]
    voice = voices(sources, [0, 1, 2], discovered={0, 1, 2})
    assert voice == ["2001:db8::/48", "2001:db8::/48", "2001:db8:1::/48"]
    assert comparers(0, [0, 1, 2], voice) == [2]
    # configured sources: each its own host, as the operator listed it
    assert voices(sources, [0, 1, 2]) == ["2001:db8::1", "2001:db8:0:2::1", "2001:db8:1::1"]


@pytest.mark.parametrize(
    ("written", "live", "voice", "asks"),
    [
        # the first source's own ranges are its word; another's are asked of the first,
        # cut at the end of the bytes no level binds
        ([[(0, 10)], [(10, 30)]], [0, 1], "ab", [(10, 20, 1, 0)]),
        ([[(0, 25)], [(25, 40)]], [0, 1], "ab", []),
        ([[(0, 5), (15, 20)], [(5, 15)], [(20, 40)]], [0, 1, 2], "abc", [(5, 15, 1, 0)]),
        # the first cannot be asked (dropped, or ignores Range): a source of another voice
        # than the writer's, so that two sources send the same bytes
        ([[(0, 5)], [(5, 10)], [(10, 40)]], [1, 2], "abc", [(5, 10, 1, 2), (10, 20, 2, 1)]),
    ],
)
def test_bytes_no_level_binds_are_the_first_sources_or_two_sources(
    written: list[list[tuple[int, int]]],
    live: list[int],
    voice: str,
    asks: list[tuple[int, int, int, int]],
) -> None:
    from tracker.multisource.piececheck import UnboundAsk, unbound_asks

    assert unbound_asks([(0, 20)], written, live, list(voice)) == [UnboundAsk(*a) for a in asks]


@pytest.mark.parametrize(
    ("unbound", "written", "asks"),
    [
        # a head and a tail (Firedancer's status cache last): each cut to them
        ([(0, 20), (70, 100)], [[(0, 10), (50, 60)], [(10, 50), (60, 100)]], [(10, 20), (70, 100)]),
        ([(0, 20), (70, 100)], [[(0, 30), (80, 100)], [(30, 80)]], [(70, 80)]),
        # one range of another source's over both
        ([(0, 20), (70, 100)], [[(0, 5)], [(5, 100)]], [(5, 20), (70, 100)]),
        ([(0, 20), (70, 100)], [[(0, 20), (70, 100)], [(20, 70)]], []),
    ],
)
def test_bytes_no_level_binds_in_a_head_and_a_tail_are_asked_where_another_wrote_them(
    unbound: list[tuple[int, int]],
    written: list[list[tuple[int, int]]],
    asks: list[tuple[int, int]],
) -> None:
    from tracker.multisource.piececheck import UnboundAsk, unbound_asks

    wanted = [UnboundAsk(start, end, 1, 0) for start, end in asks]
    assert unbound_asks(unbound, written, [0, 1], ["a", "b"]) == wanted


@pytest.mark.parametrize(
    ("written", "asked", "spans"),
    [
        # what another source wrote past the bytes no level binds, asked of the first too
        ([[(0, 10)], [(10, 40)]], [(10, 20)], [(20, 40)]),
        # several others' ranges, adjacent ones as one; the first's own never
        (
            [[(0, 5), (15, 20)], [(5, 15)], [(20, 30), (35, 40)]],
            [(5, 10)],
            [(10, 15), (20, 30), (35, 40)],
        ),
        # a head and a tail asked already: what lies between them
        ([[(0, 5)], [(5, 100)]], [(5, 20), (70, 100)], [(20, 70)]),
        # everything asked already, or no other source wrote a byte
        ([[(0, 10)], [(10, 40)]], [(10, 40)], []),
        ([[(0, 40)], []], [], []),
        # bytes two sources wrote (a steal): another's, so the first's again
        ([[(0, 12)], [(10, 20)]], [], [(10, 20)]),
    ],
)
def test_a_copy_is_made_the_first_sources_alone_from_what_others_wrote_and_was_not_asked(
    written: list[list[tuple[int, int]]],
    asked: list[tuple[int, int]],
    spans: list[tuple[int, int]],
) -> None:
    from tracker.multisource.piececheck import first_alone_spans

    assert first_alone_spans(written, asked) == spans


@pytest.mark.parametrize(
    ("written", "live", "voice"),
    [
        ([[(0, 5)], [(5, 40)]], [1], "ab"),  # the writer alone is left to ask
        ([[(0, 5)], [(5, 10)], [(10, 40)]], [1, 2], "abb"),  # one host's two ports
    ],
)
def test_bytes_no_level_binds_of_one_source_alone_are_not_vouched_for(
    written: list[list[tuple[int, int]]], live: list[int], voice: str
) -> None:
    from tracker.multisource.piececheck import unbound_asks

    reason = unbound_asks([(0, 20)], written, live, list(voice))
    assert isinstance(reason, str) and "which no level binds" in reason, reason


@pytest.mark.parametrize(
    ("differing", "holders", "live", "wanted"),
    [
        # a's range held by a: sent again by b's party (2, not b's first port 1)
        ([(0, 10, 0, 2)], {(0, 10): 0}, {0, 1, 2}, {2: [(0, 10)]}),
        # held by a side's own source already: nothing to send
        ([(0, 10, 0, 2)], {(0, 10): 2}, {0, 1, 2}, {}),
        # a range between a and c (dropped): b took no part, its first live source sends it
        ([(0, 10, 3, 0)], {(0, 10): 3}, {0, 1, 2}, {1: [(0, 10)]}),
        # b's party (2) cannot be asked any more: b's first live source sends it instead
        ([(0, 10, 0, 2)], {(0, 10): 0}, {0, 1}, {1: [(0, 10)]}),
    ],
)
def test_each_sides_bytes_come_from_its_party(
    differing: list[tuple[int, int, int, int]],
    holders: dict[tuple[int, int], int],
    live: set[int],
    wanted: dict[int, list[tuple[int, int]]],
) -> None:
    from tracker.multisource.piececheck import Difference, side_spans

    voice = ["a", "b", "b", "c"]
    spans = side_spans([Difference(*d) for d in differing], holders, "b", voice, live)
    assert spans == wanted


def test_the_status_page_shows_each_sources_share_and_rate() -> None:
    from tracker.cache.store import RefreshProgress
    from tracker.web.statusview import source_shares

    sources = (("a", 30), ("b", 10), ("c", 20))
    progress = RefreshProgress("g", "n", 100, 60, 10.0, sources=sources, elapsed=10.0)
    assert source_shares(progress) == [
        ("a", 50.0, 3.0),
        ("b", 100 / 6, 1.0),
        ("c", 100 / 3, 2.0),
    ]
    assert source_shares(RefreshProgress("g", "n", 0, 0, 10.0, elapsed=10.0)) == []


def test_a_lanes_failure_becomes_the_refreshs() -> None:
    """A failed write of the temp file is the cache's error; any other first error is
    raised as it is; a group carrying a cancellation (here an interrupt) passes unchanged."""
    import errno

    from tracker.errors import CacheError, UpstreamError
    from tracker.proxy.cachefill import _unwrapped

    disk = _unwrapped(ExceptionGroup("", [OSError(errno.ENOSPC, "full")]))
    assert isinstance(disk, CacheError) and "No space left" in str(disk)
    upstream = UpstreamError("gone")
    assert _unwrapped(ExceptionGroup("", [ExceptionGroup("", [upstream])])) is upstream
    stopping = BaseExceptionGroup("", [KeyboardInterrupt(), upstream])
    assert _unwrapped(stopping) is stopping


@pytest.mark.parametrize(
    ("code", "recorded"), [(errno.ENOSPC, True), (errno.EDQUOT, True), (errno.EIO, False)]
)
def test_a_lanes_full_disk_is_kept_as_the_groups_reason(code: int, recorded: bool) -> None:
    """A refresh from several sources whose temp file's write fails with ENOSPC or EDQUOT
    records the full disk as its group's reason (the status page, ``/v1/targets``), as a
    refresh from one source does; an I/O error is no want of room."""
    import os

    from tracker.cache.disk import DiskOps
    from tracker.cache.refresh import Refresh
    from tracker.errors import CacheError
    from tracker.proxy.cachefill import _unwrapped

    rooms: list[tuple[str, str]] = []

    class Registry:
        def room(self, group: str, reason: str) -> None:
            rooms.append((group, reason))

    refresh = Refresh(Registry(), DiskOps(), "g", "n.tar.zst", "/nowhere/n.tar.zst")
    failed = _unwrapped(ExceptionGroup("", [OSError(code, "x")]), refresh)
    why = os.strerror(code)
    assert isinstance(failed, CacheError) and str(failed) == f"cache write failed: {why}"
    expected = (
        f"n.tar.zst not cached: the cache's disk ran out of room while it was written ({why})"
    )
    assert rooms == ([("g", expected)] if recorded else [])


async def test_a_whole_file_answer_takes_the_next_piece_only_once_its_own_is_used_up() -> None:
    """The refresh's first answer runs on over free pieces, one at a time and only when its
    claim is used up: never a whole window ahead of the other sources' lanes."""
    from tracker.multisource.crew import ClaimWriter, Crew
    from tracker.multisource.sources import Identity, Source

    class Tunables:
        read_timeout, write_size, write_delay, max_failures = 30.0, 2 * MiB, 0.05, 3

    pieces = Pieces(8 * MiB, MiB, window=6 * MiB)
    head = pieces.claim(0.0)
    assert head is not None
    crew = Crew(Tunables(), pieces, -1, open=None)  # type: ignore[arg-type]
    source = Source("http://s/x", Identity(8 * MiB), ranges=True)
    writer = ClaimWriter(crew, source, head, continuous=True)
    assert writer.take(16 * MiB) == MiB  # its own piece only, not the window
    assert head.end == MiB
    writer.moved(MiB, MiB)
    assert writer.take(16 * MiB) > 0 and head.end == 2 * MiB  # then the next one
    other = pieces.claim(0.0)
    assert other is not None and other.start == 2 * MiB  # the rest is the others'


A, B, C = "a" * 64, "b" * 64, "c" * 64


@pytest.mark.parametrize(
    ("published", "refused"),
    [
        # Nobody publishes one: nobody is refused by it (the whole-file checks judge).
        (["", "", ""], [False, False, False]),
        # The first source's digest counts; a source publishing none is kept.
        ([A, A, "", B], [False, False, False, True]),
        # The first publishes none: the best-ranked one that does sets the digest.
        (["", B, A, B], [False, False, True, False]),
        (["", "", C, A, C], [False, False, False, True, False]),
        # The first source is never refused (it is the one already answering).
        ([A, B, B, B], [False, True, True, True]),
    ],
)
def test_sources_publishing_another_sha256_are_refused(
    published: list[str], refused: list[bool]
) -> None:
    from tracker.multisource.samefile import refusals

    reasons = refusals(published)
    assert [bool(r) for r in reasons] == refused
    for digest, reason in zip(published, reasons, strict=True):
        if reason:
            assert reason.startswith(f"publishes sha256 {digest}, the other sources ")
            assert "\n" not in reason


@pytest.mark.parametrize(
    ("first", "others", "kept", "refused"),
    [
        ("", [("b", A), ("c", ""), ("d", B)], ["b", "c"], ["d"]),
        (B, [("b", A), ("c", ""), ("d", B)], ["c", "d"], ["b"]),
        # A refused source leaves its place to the next (at most 4 sources in all).
        (A, [("b", B), ("c", A), ("d", A), ("e", ""), ("f", A)], ["c", "d", "e"], ["b"]),
    ],
)
def test_a_refresh_chooses_its_sources_by_size_and_published_sha256(
    first: str, others: list[tuple[str, str]], kept: list[str], refused: list[str]
) -> None:
    from tracker.core.snapshots import SnapshotFile, parse_archive_name
    from tracker.ordering.index import TargetKey
    from tracker.proxy.cachefill import choose

    name = parse_archive_name(f"snapshot-100-{'1' * 32}.tar.zst")
    assert name is not None

    class Held:
        def __init__(self, target: str) -> None:
            self.key = TargetKey("g", target)

    def entry(target: str, digest: str) -> tuple[SnapshotFile, Held]:
        url = f"http://{target}/f"
        return SnapshotFile(name, url, 10, url=url, sha256=digest), Held(target)

    found = [entry("a", first), *(entry(t, d) for t, d in others)]
    got, gone = choose(TargetKey("g", "a"), 10, found, first_digest=first)  # type: ignore[arg-type]
    assert [s.key.target for _f, s in got] == kept
    assert [key.target for key, _url, _reason in gone] == refused


@pytest.mark.parametrize(
    ("passed", "liar"),
    [
        ([True], 1),  # the first side's bytes pass: the second lied
        ([False, True], 0),
        ([None, True], 0),  # the first could not send its bytes; the second's pass
        ([False, False], None),  # neither passes: no one is named, the copy is refused
        ([False, None], None),
        ([None, None], None),
        ([], None),
    ],
)
def test_two_sources_the_whole_file_check_judges(passed: list[bool | None], liar: int) -> None:
    from tracker.multisource.piececheck import two_source_liar

    assert two_source_liar(passed) == liar


@pytest.mark.parametrize(
    ("differing", "honest", "liars"),
    [
        # Two sources: each one's ranges compared with the other's.
        ([(0, 10, 0, 1), (20, 30, 1, 0)], {0}, {1: [(0, 10), (20, 30)]}),
        ([(0, 10, 0, 1), (20, 30, 1, 0)], {1}, {0: [(0, 10), (20, 30)]}),
        # Adjacent ranges of one liar are merged.
        ([(0, 10, 1, 0), (10, 20, 1, 0)], {0}, {1: [(0, 20)]}),
        # A dropped third source's range compared with the first: not the honest one's
        # business when the second is honest; its lie when the first is.
        ([(0, 10, 2, 0)], {1}, {}),
        ([(0, 10, 2, 0)], {0}, {2: [(0, 10)]}),
        # A side of two ports (1 and 2 on one host): each of its ports' ranges blamed
        ([(0, 10, 1, 0), (20, 30, 2, 0)], {0}, {1: [(0, 10)], 2: [(20, 30)]}),
        ([(0, 10, 1, 0), (20, 30, 2, 0)], {1, 2}, {0: [(0, 10), (20, 30)]}),
    ],
)
def test_once_a_side_passed_the_other_party_of_each_range_lied(
    differing: list[tuple[int, int, int, int]],
    honest: set[int],
    liars: dict[int, list[tuple[int, int]]],
) -> None:
    from tracker.multisource.piececheck import Difference, blamed

    assert blamed([Difference(*d) for d in differing], honest) == liars


@pytest.mark.parametrize(
    ("given", "used"),
    [
        # (sent, honours Range, dropped, left out)
        ([(5, True, "", ""), (7, True, "", "")], [("parallel", ""), ("parallel", "")]),
        (
            [(9, False, "", ""), (0, False, "", "ignores Range"), (0, True, "slow", "")],
            [("alone", "one stream"), ("left out", "ignores Range"), ("dropped", "slow")],
        ),
        (
            [(3, False, "", ""), (6, True, "", "")],
            [("parallel", "one stream"), ("parallel", "")],
        ),
    ],
)
def test_a_refresh_says_how_it_used_each_source(
    given: list[tuple[int, bool, str, str]], used: list[tuple[str, str]]
) -> None:
    from tracker.multisource.sources import Identity, Source, uses_of

    sources = [
        Source(f"http://s{i}/f", Identity(10), ranges, sent=sent, dropped=dropped, left_out=out)
        for i, (sent, ranges, dropped, out) in enumerate(given)
    ]
    got = uses_of(sources)
    assert [how for how, _reason in got] == [how for how, _r in used]
    assert all(r in reason for (_h, reason), (_u, r) in zip(got, used, strict=True))


@pytest.mark.parametrize(
    ("liars", "agreed", "undecided", "differing", "refuted", "held"),
    [
        # Liars found: they alone carry it, never a source whose bytes were confirmed.
        ({2}, {0: 10, 1: 10}, 0, False, False, [2]),
        # Taken for a liar without a third source, and the check then failed: not proven;
        # the sources no other confirmed carry it.
        ({-2}, {0: 10}, 10, True, False, [1, 2]),
        ({2}, {}, 4, True, False, [2]),
        # Nothing differs and everything was compared: the archive itself is bad.
        (set(), {0: 10, 1: 10, 2: 10}, 0, False, False, [0, 1, 2]),
        # Undecided: the sources another one confirmed whole are cleared.
        (set(), {0: 10, 1: 4}, 6, True, False, [1, 2]),
        # Two liars sending the same bytes outvoted the honest 0 (2 confirmed by 1), and
        # the copy with their bytes failed again: 0 is cleared, the vote proved nothing.
        ({0}, {2: 10}, 0, False, True, [1]),
        # One outvoted, every other byte confirmed, the copy still failing: no one.
        ({2}, {0: 10, 1: 10}, 0, False, True, []),
    ],
)
def test_an_honest_source_never_carries_a_liars_error(
    liars: set[int],
    agreed: dict[int, int],
    undecided: int,
    differing: bool,
    refuted: bool,
    held: list[int],
) -> None:
    from tracker.multisource.piececheck import Difference, Findings, held_back
    from tracker.multisource.sources import Identity, Source

    sources = [Source(f"http://s{i}/f", Identity(30), True) for i in range(3)]
    written = {s: [(i * 10, i * 10 + 10)] for i, s in enumerate(sources)}
    found = Findings(
        liars={sources[abs(i)]: [(0, 1)] for i in liars},
        provisional={sources[-i] for i in liars if i < 0},
        undecided=undecided,
        differing=[Difference(20, 21, 2, 0)] if differing else [],
        agreed={sources[i]: count for i, count in agreed.items()},
    )
    assert held_back(sources, written, found, refuted=refuted) == [sources[i] for i in held]


_RANGE = st.tuples(st.integers(0, 40), st.integers(0, 40)).map(sorted).map(tuple)


@given(
    written=st.lists(st.lists(_RANGE, max_size=5), min_size=1, max_size=4),
    asked=st.lists(_RANGE, max_size=5),
)
def test_first_alone_spans_are_every_byte_another_source_wrote_and_nobody_asked(
    written: list[list[tuple[int, int]]], asked: list[tuple[int, int]]
) -> None:
    """Against a byte map: overlapping, adjacent and empty ranges, asked ranges covering
    parts of others' or several at once."""
    from tracker.multisource.piececheck import first_alone_spans

    others = {b for ranges in written[1:] for a, z in ranges for b in range(a, z)}
    done = {b for a, z in asked for b in range(a, z)}
    spans = first_alone_spans(written, asked)
    assert {b for a, z in spans for b in range(a, z)} == others - done
    # sorted, none empty, none touching the next: one request per gap
    assert all(a < z for a, z in spans)
    assert all(z < a2 for (_a, z), (a2, _z) in itertools.pairwise(spans))


async def test_only_a_laggard_over_the_floor_is_priced_at_its_rate() -> None:
    """Of the sources a refresh drops, a laggard (sending, under a tenth of another's rate)
    is ended by our side, its seconds until then kept; one that stalled or drips under the
    floor failed (docs/ranking.md, "Failed transfers")."""
    fast, laggard, stalled, dripping = (
        Source(f"http://{n}/f", Identity(64 * MiB), ranges=True) for n in "abcd"
    )
    pool = [fast, laggard, stalled, dripping]
    lagged: dict[Source, float] = {}
    started = trio.current_time() - 2.0
    rates = [10 * MiB, 512 * 1024, 0.0, 1024.0]
    reasons = lagging(pool, lagged, started, rates, [True] * 4, [True] * 4, rates)
    assert [bool(r) for r in reasons] == [False, True, True, True]
    assert list(lagged) == [laggard] and lagged[laggard] >= 2.0


@pytest.mark.parametrize(
    ("seconds", "lagged", "dropped", "expected"),
    [
        # never dropped: it took part until the pieces ended
        (30.0, None, None, (30.0, "whole")),
        # a laggard: our side ended its part when it dropped it, sending
        (30.0, 4.0, None, (4.0, "whole")),
        # failed (its answers broke, it stalled or dripped): its own part ended then, not
        # when the others' pieces did (priced over the whole refresh, harsher than a laggard)
        (30.0, None, 2.0, (2.0, "source")),
        (30.0, None, 0.0, (0.0, "source")),
        # never past the refresh's own seconds
        (30.0, None, 31.0, (30.0, "source")),
    ],
)
def test_a_sources_part_of_a_refresh_ends_when_it_was_dropped(
    seconds: float, lagged: float | None, dropped: float | None, expected: tuple[float, str]
) -> None:
    assert part_of(seconds, lagged, dropped) == expected


async def test_a_source_dropped_knows_when() -> None:
    source = Source("http://a/f", Identity(64 * MiB), ranges=True)
    assert source.dropped_at is None
    before = trio.current_time()
    source.drop("failed three times")
    at = source.dropped_at
    assert at is not None and before <= at <= trio.current_time()
    source.drop("again")  # the first drop's time stays
    assert source.dropped_at == at


@pytest.mark.parametrize(
    ("live", "agreed", "taken", "word"),
    [
        # The one source asked: the other's bytes all confirmed by it, or all rewritten
        # with its own, or some of each: the copy is its word alone.
        ([0], {1: 10}, {}, 0),
        ([0], {}, {1: 10}, 0),
        ([0], {1: 4}, {1: 6}, 0),
        # A byte of the other's neither confirmed nor rewritten (its comparison timed out):
        # not its word alone.
        ([0], {1: 4}, {1: 5}, None),
        ([1], {0: 10}, {}, 1),
        # Two could be asked: the comparison judged between them, not one word.
        ([0, 1], {0: 10, 1: 10}, {}, None),
        ([], {}, {}, None),
    ],
)
def test_a_copy_is_one_sources_word_once_every_other_byte_was_compared_with_its(
    live: list[int], agreed: dict[int, int], taken: dict[int, int], word: int | None
) -> None:
    from tracker.multisource.piececheck import Findings, sole_word
    from tracker.multisource.sources import Identity, Source

    sources = [Source(f"http://s{i}/f", Identity(20), True) for i in range(2)]
    written = {s: [(i * 10, i * 10 + 10)] for i, s in enumerate(sources)}
    found = Findings(
        liars={sources[i]: [(i * 10, i * 10 + n)] for i, n in taken.items()},
        agreed={sources[i]: count for i, count in agreed.items()},
        undecided=10,
    )
    assert sole_word(sources, written, live, found) == word
