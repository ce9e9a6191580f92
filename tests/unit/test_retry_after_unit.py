"""What a client turned away with 503 is told (``Retry-After``, docs/http-api.md "Errors"):
the header value, and when a running transfer should end, as tables (no network)."""

from __future__ import annotations

import math
import types
from pathlib import Path

import httpx
import pytest
import trio
import trio.testing
from names import full_name

from tracker.proxy.failover import expected_end
from tracker.serving.httpanswer import MAX_RETRY_AFTER, RETRY_AFTER, retry_after, text_answer

MiB = 1024 * 1024


@pytest.mark.parametrize(
    ("seconds", "value"),
    [
        (None, str(RETRY_AFTER)),  # unknown: the default
        (math.nan, str(RETRY_AFTER)),
        (0.0, "1"),  # never 0: a client would retry at once
        (-3.0, "1"),  # a transfer past its expected end
        (1.2, "2"),  # whole seconds, rounded up
        (42.0, "42"),
        (1e9, str(MAX_RETRY_AFTER)),  # capped
        (math.inf, str(MAX_RETRY_AFTER)),
    ],
)
def test_retry_after_is_whole_seconds_within_bounds(seconds: float | None, value: str) -> None:
    assert retry_after(seconds) == value


def test_only_a_503_text_answer_carries_retry_after() -> None:
    assert text_answer(503, "busy").headers["retry-after"] == str(RETRY_AFTER)
    assert text_answer(503, "busy", retry=7.5).headers["retry-after"] == "8"
    assert "retry-after" not in text_answer(502, "no source").headers


@pytest.mark.parametrize(
    ("length", "measured", "cap", "seconds"),
    [
        (str(8 * MiB), 2 * MiB, 0, 4.0),  # at the measured speed
        (str(8 * MiB), 2 * MiB, MiB, 8.0),  # at most the source's max_rate
        (str(8 * MiB), 0.0, MiB, 8.0),  # unmeasured, capped: at the cap
        (str(8 * MiB), 0.0, 0, None),  # neither: unknown
        (None, 2 * MiB, 0, None),  # no length: unknown
        ("12x", 2 * MiB, 0, None),  # not a number
        ("1" * 40, 2 * MiB, 0, None),  # too long to be one
        ("\u00b2", 2 * MiB, 0, None),  # a digit to str.isdigit, but not ASCII
    ],
)
async def test_a_transfer_ends_at_its_length_over_its_speed(
    autojump_clock: trio.testing.MockClock,
    length: str | None,
    measured: float,
    cap: int,
    seconds: float | None,
) -> None:
    # As it came off the wire (bytes: httpx reads a value that is not ASCII as Latin-1).
    headers = [] if length is None else [(b"content-length", length.encode("latin-1"))]
    response = httpx.Response(200, headers=headers)
    ends = expected_end(response, measured, cap)
    if seconds is None:
        assert ends is None
    else:
        assert ends == pytest.approx(trio.current_time() + seconds)


class _Clocks:
    """A wall clock that can step and a monotonic clock that only runs (seconds)."""

    def __init__(self) -> None:
        self.wall = 1.7e9
        self.mono = 1000.0

    def time(self) -> float:
        return self.wall

    def monotonic(self) -> float:
        return self.mono


@pytest.mark.parametrize("step", [3600.0, -3600.0])
async def test_a_wall_clock_step_moves_neither_retry_after_nor_a_refreshs_rate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, step: float
) -> None:
    """The 503 "being fetched and checked" tells the refresh's remaining bytes at its rate
    so far (docs/http-api.md, "Archive answers"), and the status page shows that rate: both
    over monotonic seconds, so an NTP step of the wall clock (an hour either way here)
    changes neither (it made ``retry-after`` 300 forward, 6 backward)."""
    import time

    import tracker.cache.refresh
    from tracker.cache.store import Cache
    from tracker.proxy.streamer import Route
    from tracker.web.statusview import refresh_rate

    clocks = _Clocks()
    monkeypatch.setattr(time, "time", clocks.time)  # every reader of the wall clock
    monkeypatch.setattr(tracker.cache.refresh, "time", clocks)  # and the refresh's monotonic
    cache = Cache(str(tmp_path / "cache"))
    refresh = cache.begin_refresh("g", full_name(100))
    assert refresh is not None and await refresh.open(100 * MiB)
    await refresh.write(bytes(10 * MiB))
    await refresh.flush()
    clocks.mono += 10.0  # 10 MiB in 10 s: 1 MiB/s, 90 MiB (90 s) to go
    clocks.wall += 10.0 + step
    route = Route(
        run=types.SimpleNamespace(on_interest=None),
        ask=None,
        group=None,
        archive=None,
        found=(),
        cache=cache,
        mode=None,
        shared=refresh,
    )
    assert route.checking().headers["retry-after"] == "95"  # 5 s more than the 90 s
    [progress] = cache.refreshes()
    assert refresh_rate(progress) == pytest.approx(MiB)
    assert progress.started_at == 1.7e9  # shown as "started ... ago": the wall clock's
    refresh.abort()
