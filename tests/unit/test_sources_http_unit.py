"""The memo of archive sizes an HTTP-server probe learns by HEAD, on its own: bounded, and
grown to the targets of a round (the probe against real servers:
tests/integration/test_sources_http.py)."""

from __future__ import annotations

from tracker.discovery.http import SizeMemo


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
