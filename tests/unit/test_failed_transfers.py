"""What a real transfer from a source says of its throughput, by who ended it and who paced
it, and whether its client stalled (docs/ranking.md, "Failed transfers"):
``measured_transfer``, ``paced_by_client`` and ``ending_of`` as tables;
``failed_to_answer``, which failures to answer at all are the source's."""

from __future__ import annotations

import pytest
import trio

from tracker.errors import (
    ArchiveInvalid,
    CacheError,
    ClientGone,
    SourceBusy,
    SourceFailed,
    SourceGone,
    SourceOverloaded,
    SourceWithdrawn,
    TransportError,
    UpstreamError,
)
from tracker.proxy.failover import failed_to_answer
from tracker.proxy.pumps import ending_of
from tracker.proxy.transfers import (
    CLIENT_STALL,
    MIN_MEASURED_BYTES,
    Ending,
    measured_transfer,
    paced_by_client,
)

KiB, MiB = 1024, 1024 * 1024
TIMEOUT = 60.0  # the proxy's read_timeout


@pytest.mark.parametrize(
    ("moved", "seconds", "ending", "expected"),
    [
        # whole: from 1 MiB on, as it went
        (MIN_MEASURED_BYTES, 0.5, "whole", (MIN_MEASURED_BYTES, 0.5)),
        (MIN_MEASURED_BYTES - 1, 0.5, "whole", None),
        (100 * MiB, 2.0, "whole", (100 * MiB, 2.0)),
        # our side ended it (client gone or stalled, tracker stopping): small ones say nothing
        (100 * KiB, 30.0, "ours", None),
        (4 * MiB, 8.0, "ours", (4 * MiB, 8.0)),
        # the source ended it: measured whatever its size, a stall over its own time
        (100 * KiB, 30.0 + TIMEOUT, "source", (100 * KiB, 30.0 + TIMEOUT)),
        (16 * KiB, TIMEOUT + 0.1, "source", (16 * KiB, TIMEOUT + 0.1)),
        # a cut priced as a stall there: at least the read timeout
        (16 * KiB, 0.01, "source", (16 * KiB, TIMEOUT)),
        (100 * MiB, 1.0, "source", (100 * MiB, TIMEOUT)),
        # a cut after a long transfer: what it moved at its own speed
        (10_000 * MiB, 100.0, "source", (10_000 * MiB, 100.0)),
        # a head, then not a byte: one byte over its time (a liar stalling at once)
        (0, TIMEOUT, "source", (1, TIMEOUT)),
        (0, 0.01, "source", (1, TIMEOUT)),
        # nothing moved, or no time: nothing to measure
        (0, 1.0, "whole", None),
        (MIN_MEASURED_BYTES, 0.0, "whole", None),
        (MIN_MEASURED_BYTES, -1.0, "source", None),
    ],
)
def test_what_a_transfer_says_of_its_source(
    moved: int, seconds: float, ending: Ending, expected: tuple[int, float] | None
) -> None:
    assert measured_transfer(moved, seconds, ending, TIMEOUT) == expected


@pytest.mark.parametrize(
    ("seconds", "client_waited", "expected"),
    [
        (10.0, 0.0, False),  # nobody waited for the client: the source's pace
        (10.0, 5.0, False),  # half the time: not more than half
        (10.0, 5.01, True),  # the client took the bytes slower than the source sent them
        (10.0, 9.9, True),
        (0.0, 0.0, False),  # no time: nothing to tell
        (0.0, 1.0, False),
    ],
)
def test_a_transfer_its_client_paced(seconds: float, client_waited: float, expected: bool) -> None:
    assert paced_by_client(seconds, client_waited) is expected


@pytest.mark.parametrize(
    ("moved", "seconds", "ending", "client_waited", "client_stalled", "expected"),
    [
        # a relay a slow client paced says nothing of its source, whole or left
        (100 * MiB, 10.0, "whole", 9.0, 0.01, None),
        (100 * MiB, 10.0, "ours", 9.0, 0.01, None),
        # one the source paced counts as it went
        (100 * MiB, 10.0, "whole", 1.0, 0.01, (100 * MiB, 10.0)),
        (100 * MiB, 10.0, "ours", 5.0, 0.01, (100 * MiB, 10.0)),
        # a stall of its client says nothing of a transfer the source did not end
        (100 * MiB, 10.0, "whole", 1.0, CLIENT_STALL, (100 * MiB, 10.0)),
        (100 * MiB, 10.0, "ours", 5.0, 2 * CLIENT_STALL, (100 * MiB, 10.0)),
        # one the source ended while its client stalled (took no byte) for CLIENT_STALL:
        # the source gave up on a client that held it (its own send timeout), which says
        # nothing of the source's pace
        (100 * MiB, 100.0, "source", 90.0, 80.0, None),
        (12 * MiB, 0.6, "source", 0.5, CLIENT_STALL, None),
        (100 * MiB, 100.0, "source", 10.0, CLIENT_STALL, None),
        # one the source ended while its client read on, however slowly (it never stalled
        # that long): the cut is the source's own, measured whatever paced the transfer (a
        # liar faster than its clients that cuts every answer after a few MiB)
        (100 * MiB, 100.0, "source", 90.0, 0.01, (100 * MiB, 100.0)),
        (12 * MiB, 0.6, "source", 0.5, 0.01, (12 * MiB, TIMEOUT)),
        (6 * MiB, 1.0, "source", 0.9, CLIENT_STALL - 0.01, (6 * MiB, TIMEOUT)),
        # one the source ended at its own pace counts as the table says: a liar's stall or
        # cut is waited on as the source's, never as the client's (it cannot make our pump
        # wait on the client by stalling or cutting)
        (16 * KiB, 30.0, "source", 0.0, 0.0, (16 * KiB, TIMEOUT)),
        (0, TIMEOUT + 1.0, "source", 0.0, 0.0, (1, TIMEOUT + 1.0)),
        (100 * MiB, 100.0, "source", 50.0, 0.01, (100 * MiB, 100.0)),
        (100 * MiB, 1.0, "source", 0.4, 0.01, (100 * MiB, TIMEOUT)),
    ],
)
def test_what_a_client_paced_transfer_says_of_its_source(
    moved: int,
    seconds: float,
    ending: Ending,
    client_waited: float,
    client_stalled: float,
    expected: tuple[int, float] | None,
) -> None:
    measured = measured_transfer(
        moved,
        seconds,
        ending,
        TIMEOUT,
        client_waited=client_waited,
        client_stalled=client_stalled,
    )
    assert measured == expected


def test_a_failing_source_is_never_measured_faster_by_cutting_than_by_stalling() -> None:
    """Dropping the connection at once must not be the cheaper way to fail."""
    for moved in (1, 16 * KiB, MiB, 50 * MiB):
        cut = measured_transfer(moved, 0.001, "source", TIMEOUT)
        stall = measured_transfer(moved, TIMEOUT, "source", TIMEOUT)
        assert cut is not None and stall is not None
        assert cut[0] / cut[1] <= stall[0] / stall[1]


@pytest.mark.parametrize(
    ("error", "complete", "expected"),
    [
        (None, True, "whole"),
        (None, False, "ours"),  # a body never started, a client gone without an error
        (ArchiveInvalid("bad tar"), False, "whole"),  # every byte came: the check holds it back
        (UpstreamError("upstream ended after 16384 of 2097152 bytes"), False, "source"),
        (SourceFailed("upstream sent nothing for 60 s"), False, "source"),
        (TransportError("read timeout"), False, "source"),
        (ClientGone("client connection closed"), False, "ours"),
        (CacheError("no room"), False, "ours"),
        (OSError("connection reset"), False, "ours"),
        (GeneratorExit(), False, "ours"),
        (RuntimeError("a bug"), False, "ours"),
    ],
)
def test_who_ended_a_transfer(error: BaseException | None, complete: bool, expected: str) -> None:
    assert ending_of(error, complete) == expected


def test_a_cancelled_transfer_is_ours() -> None:
    async def cancelled() -> str:
        with trio.CancelScope() as scope:
            scope.cancel()
            try:
                await trio.sleep(1)
            except trio.Cancelled as exc:
                return ending_of(exc, complete=False)
        return ""

    assert trio.run(cancelled) == "ours"


@pytest.mark.parametrize(
    ("failure", "hedged", "won", "method", "expected"),
    [
        # refused, an error status, a wrong size, no body within the answer timeout
        (SourceFailed("cannot connect: Connection refused"), False, False, "GET", True),
        (SourceFailed("HTTP 500 Internal Server Error"), False, True, "GET", True),
        (SourceFailed("no body within 5s of the answer"), True, True, "GET", True),
        # busy under our own source_limits, or withdrawn by a reload: not the source's
        (SourceBusy("busy", retry_after=3.0), False, True, "GET", False),
        (SourceWithdrawn("the source is no longer listed"), False, True, "GET", False),
        # busy (503, 429): it backs off instead (docs/ranking.md, "Busy answers")
        (SourceOverloaded("HTTP 503 Service Unavailable"), False, True, "GET", False),
        (SourceOverloaded("HTTP 429 Too Many", retry_after=30.0), False, False, "GET", False),
        # a file pruned since the listing was read (404, 410): a stale listing, not a liar
        (SourceGone("HTTP 404 Not Found"), False, True, "GET", False),
        (SourceGone("HTTP 410 Gone"), False, False, "GET", False),
        # silent past first_byte_timeout while another source's answer won
        (None, True, True, "GET", True),
        # beaten while it still had its time (a hedge asked after it, or within its time)
        (None, False, True, "GET", False),
        # the request ended (the client left, the tracker stopped), hedged or not
        (None, True, False, "GET", False),
        (None, False, False, "GET", False),
        # a HEAD moves no body: no transfer's figure
        (SourceFailed("HTTP 503 Service Unavailable"), False, False, "HEAD", False),
        (None, True, True, "HEAD", False),
    ],
)
def test_which_failures_to_answer_are_the_sources(
    failure: SourceFailed | None, hedged: bool, won: bool, method: str, expected: bool
) -> None:
    assert failed_to_answer(failure, hedged, won, method) is expected
