"""The pure decisions of the shared download engine (tracker/multisource/) and of a refresh
from several sources (tracker/proxy/manysources.py, tracker/proxy/piececheck.py), as
tables."""

from __future__ import annotations

import pytest

from tracker.multisource.claims import MIN_STEAL, STEAL_AFTER_SECONDS, Pieces
from tracker.multisource.judging import laggards, slower_than
from tracker.proxy.manysources import lanes_for, piece_size_for, use_many, window_for
from tracker.proxy.piececheck import Verdict, comparers, verdict

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


def test_a_running_answer_extends_its_claim_over_free_pieces_only() -> None:
    pieces = Pieces(4 * MiB, MiB, window=4 * MiB)
    head = pieces.claim(0.0)
    assert head is not None
    assert pieces.extend(head) and head.end == 2 * MiB
    other = pieces.claim(0.0)  # takes 2-3 MiB
    assert other is not None and other.start == 2 * MiB
    assert not pieces.extend(head)  # the next piece is someone else's


@pytest.mark.parametrize(
    ("rates", "live", "expected"),
    [
        ([1.0, 100.0], [True, True], ["slower than 10 bytes/s (1)", ""]),
        ([1.0, 1.0], [True, True], ["slower than 10 bytes/s (1)", ""]),  # the last one stays
        ([1.0, 100.0], [True, False], ["", ""]),
    ],
)
def test_fetch_drops_sources_under_its_speed_floor(
    rates: list[float], live: list[bool], expected: list[str]
) -> None:
    assert slower_than(10, rates, live) == expected


@pytest.mark.parametrize(
    ("rates", "busy", "expected"),
    [
        ([100.0, 100.0, 100.0], [True, True, True], ["", "", ""]),
        ([100.0, 0.0, 50.0], [True, True, True], ["", "stalled", ""]),
        ([100.0, 0.0, 50.0], [True, False, True], ["", "", ""]),  # waited for a piece
        ([100.0, 5.0, 50.0], [True, True, True], ["", "5 bytes/s", ""]),
        ([0.0, 0.0, 0.0], [True, True, True], ["", "", ""]),  # nobody: the timeouts decide
        # The others wait behind the stalled one's claim (the window is full): it goes.
        ([0.0, 0.0, 0.0], [True, False, False], ["stalled", "", ""]),
    ],
)
def test_a_refresh_drops_laggards_relative_to_the_fastest(
    rates: list[float], busy: list[bool], expected: list[str]
) -> None:
    got = laggards(rates, [True] * len(rates), busy)
    assert [
        g.split(":")[0].split(",")[0][: len(e)] for g, e in zip(got, expected, strict=True)
    ] == expected


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
    ("owner", "live", "asked"),
    [(0, [0, 1, 2], [1, 2]), (2, [0, 1, 2], [0, 1]), (1, [0, 1], [0]), (0, [0], [])],
)
def test_each_sources_ranges_are_asked_of_the_next_ones(
    owner: int, live: list[int], asked: list[int]
) -> None:
    assert comparers(owner, live) == asked


def test_the_status_page_shows_each_sources_share_and_rate() -> None:
    from tracker.cache.store import RefreshProgress
    from tracker.web.statusview import source_shares

    progress = RefreshProgress("g", "n", 100, 60, 10.0, sources=(("a", 30), ("b", 10), ("c", 20)))
    assert source_shares(progress, 20.0) == [
        ("a", 50.0, 3.0),
        ("b", 100 / 6, 1.0),
        ("c", 100 / 3, 2.0),
    ]
    assert source_shares(RefreshProgress("g", "n", 0, 0, 10.0), 20.0) == []


def test_a_lanes_failure_becomes_the_refreshs() -> None:
    """A failed write of the temp file is the cache's error; any other first error is
    raised as it is; a group carrying a cancellation (here an interrupt) passes unchanged."""
    import errno

    from tracker.errors import CacheError, UpstreamError
    from tracker.proxy.manysources import _unwrapped

    disk = _unwrapped(ExceptionGroup("", [OSError(errno.ENOSPC, "full")]))
    assert isinstance(disk, CacheError) and "No space left" in str(disk)
    upstream = UpstreamError("gone")
    assert _unwrapped(ExceptionGroup("", [ExceptionGroup("", [upstream])])) is upstream
    stopping = BaseExceptionGroup("", [KeyboardInterrupt(), upstream])
    assert _unwrapped(stopping) is stopping


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
    from tracker.multisource.digestmatch import refusals

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
    from tracker.proxy.manysources import choose

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
    from tracker.proxy.piececheck import two_source_liar

    assert two_source_liar(passed) == liar


@pytest.mark.parametrize(
    ("differing", "honest", "liars"),
    [
        # Two sources: each one's ranges compared with the other's.
        ([(0, 10, 0, 1), (20, 30, 1, 0)], 0, {1: [(0, 10), (20, 30)]}),
        ([(0, 10, 0, 1), (20, 30, 1, 0)], 1, {0: [(0, 10), (20, 30)]}),
        # Adjacent ranges of one liar are merged.
        ([(0, 10, 1, 0), (10, 20, 1, 0)], 0, {1: [(0, 20)]}),
        # A dropped third source's range compared with the first: not the honest one's
        # business when the second is honest; its lie when the first is.
        ([(0, 10, 2, 0)], 1, {}),
        ([(0, 10, 2, 0)], 0, {2: [(0, 10)]}),
    ],
)
def test_once_a_side_passed_the_other_party_of_each_range_lied(
    differing: list[tuple[int, int, int, int]],
    honest: int,
    liars: dict[int, list[tuple[int, int]]],
) -> None:
    from tracker.proxy.piececheck import Difference, blamed

    assert blamed([Difference(*d) for d in differing], honest) == liars
