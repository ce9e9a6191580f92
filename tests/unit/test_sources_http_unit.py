"""The memo of archive sizes an HTTP-server probe learns by HEAD, on its own: bounded, and
grown to the targets of a round (the probe against real servers:
tests/integration/test_sources_http.py)."""

from __future__ import annotations

from collections.abc import Mapping

import httpx
import pytest
import trio
import trio.testing

from tracker.discovery.http import SizeMemo, _size_of


def test_the_size_memo_is_bounded() -> None:
    sizes = SizeMemo(limit=3)
    for n in range(5):
        sizes.put(f"u{n}", n)
    assert [sizes.get(f"u{n}") for n in range(5)] == [None, None, 2, 3, 4]


def test_the_size_memo_grows_with_the_targets_of_a_round() -> None:
    """A round asks every target's URLs in the same order: a memo smaller than that forgets
    each URL just before it is asked again (none would ever be remembered)."""
    sizes = SizeMemo(limit=3)
    sizes.fit(targets=2)  # room for a full and an incremental each, and their successors
    urls = [f"u{n}" for n in range(8)]
    for n, url in enumerate(urls):
        sizes.put(url, n)
    assert [sizes.get(url) for url in urls] == list(range(8))
    sizes.fit(targets=1)  # never shrinks below what it was given
    assert sizes.get("u0") == 0


class _Hanging:
    """A client whose HEAD never answers."""

    async def head(
        self, url: httpx.URL | str, *, headers: Mapping[str, str], follow_redirects: bool
    ) -> httpx.Response:
        await trio.sleep_forever()
        raise AssertionError("unreachable")


async def test_a_size_asked_once_the_probes_time_ran_out_ends_as_a_timeout(
    mock_clock: trio.testing.MockClock,
) -> None:
    """The probe's deadline passed while the loop was busy (no checkpoint told it yet): the
    size's own wait must not be negative (trio refuses one: the probe failed as "not read"
    instead of timing out)."""

    async def probe() -> int:
        with trio.fail_after(1):
            mock_clock.jump(2)  # past the deadline, no checkpoint yet
            return await _size_of(_Hanging(), "http://h/snapshot.tar.zst", {}, SizeMemo())

    with pytest.raises(trio.TooSlowError):
        await probe()
