"""Whether an answer to a resume request is the rest that was asked for (tracker.proxy.failover's
decision, as a table; resumes over real connections: tests/integration/test_resume.py)."""

from __future__ import annotations

import httpx
import pytest

from tracker.proxy.failover import resume_problem
from tracker.proxy.pumps import FRESH_AFTER, FRESH_SECONDS, fresh_after


@pytest.mark.parametrize(
    ("status", "headers", "problem"),
    [
        (206, {"content-range": "bytes 100-999/1000", "content-length": "900"}, None),
        (206, {"content-range": "bytes  100-999/1000"}, None),
        (200, {"content-length": "1000"}, "answered 200"),
        (206, {"content-range": "bytes 100-999/2000"}, "content-range"),
        (206, {"content-range": "bytes 0-999/1000"}, "content-range"),
        (206, {}, "content-range"),
        (206, {"content-range": "bytes 100-999/1000", "content-length": "10"}, "content-length"),
        # coded bytes are not the file's, whatever range they claim to be
        (206, {"content-range": "bytes 100-999/1000", "content-encoding": "gzip"}, "gzip"),
        (206, {"content-range": "bytes 100-999/1000", "content-encoding": "identity"}, None),
    ],
)
def test_resume_problem(status: int, headers: dict[str, str], problem: str | None) -> None:
    response = httpx.Response(status, headers=headers)
    found = resume_problem(response, 100, 1000)
    if problem is None:
        assert found is None
    else:
        assert found is not None and problem in found


def test_a_coded_piece_fails_its_source() -> None:
    """A piece (206) or a whole file (200) of the multi-source engine sent coded."""
    from tracker.errors import SourceFailed
    from tracker.multisource.sources import Identity, Source, check_range, check_whole

    coded = {"content-encoding": "br"}
    piece = httpx.Response(206, headers={"content-range": "bytes 100-999/1000", **coded})
    whole = httpx.Response(200, headers={"content-length": "1000", **coded})
    with pytest.raises(SourceFailed, match="content-encoding 'br'"):
        check_range(piece, Source("http://s/f", Identity(1000), ranges=True), 100, 1000)
    with pytest.raises(SourceFailed, match="content-encoding 'br'"):
        check_whole(whole, Source("http://s/f", Identity(1000), ranges=False))


@pytest.mark.parametrize(
    ("max_rate", "expected"),
    [
        (0, FRESH_AFTER),  # no cap: a MiB, whatever the pace
        (100 * 1024 * 1024, FRESH_AFTER),  # a cap far above: the same
        # a cap under FRESH_AFTER / FRESH_SECONDS: what it lets through in FRESH_SECONDS
        # (at 20 KiB/s a link breaking every 30 s moved 600 KiB a read, never a MiB)
        (20 * 1024, int(20 * 1024 * FRESH_SECONDS)),
        (1024, int(1024 * FRESH_SECONDS)),
        (256 * 1024, FRESH_AFTER),  # its FRESH_SECONDS move more than a MiB: a MiB
    ],
)
def test_the_bytes_that_earn_a_break_fresh_attempts_follow_our_rate_cap(
    max_rate: int, expected: int
) -> None:
    assert fresh_after(max_rate) == expected


def test_a_link_breaking_every_30_s_earns_fresh_attempts_a_cut_after_4_kib_does_not() -> None:
    for max_rate in (4 * 1024, 20 * 1024, 35 * 1024, 1024 * 1024):
        assert max_rate * 30 >= fresh_after(max_rate)  # 30 s at the cap
        assert fresh_after(max_rate) > 4 * 1024  # a cut after 4 KiB never does
