"""The memo of archive sizes an HTTP-server probe learns by HEAD, on its own: bounded, and
grown to the targets of a round (the probe against real servers:
tests/integration/test_sources_http.py)."""

from __future__ import annotations

from collections.abc import Mapping

import httpx
import pytest
import trio
import trio.testing

from tracker.core.snapshots import SnapshotFile, SnapshotInfo, chains_from_files, parse_archive_name
from tracker.discovery.http import SizeMemo, _size_of, off_origin


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


NODE = "http://203.0.113.7:8899"
HASH = "DSDfJEwPp5cKu4Mgf2hZkPQ3abRDccBgmvS3CFJXc2Yt"
FULL = f"snapshot-100-{HASH}.tar.zst"
INCR = f"incremental-snapshot-100-150-{HASH}.tar.zst"


def listing(*urls: str) -> list[SnapshotInfo]:
    """What a probe found: archives at ``urls`` (a full, then its incremental)."""
    files = [
        SnapshotFile(name=name, file_name=url, url=url)
        for url in urls
        if (name := parse_archive_name(url.rsplit("/", 1)[-1])) is not None
    ]
    return chains_from_files(files)


AWAY = "not at the node's own address: in redirect mode a discovered node's archives must be"


@pytest.mark.parametrize(
    ("node", "urls", "refused"),
    [
        # agave: Location /{name}, joined to the node's own origin
        (NODE, [f"{NODE}/{FULL}", f"{NODE}/{INCR}"], ""),
        (NODE, [f"{NODE}/snapshots/{FULL}"], ""),  # another path, the same origin
        (f"{NODE}/", [f"HTTP://203.0.113.7:8899/{FULL}"], ""),  # the same, spelled otherwise
        ("http://[2001:db8::7]:8899", [f"http://[2001:db8::7]:8899/{FULL}"], ""),
        ("http://203.0.113.7", [f"http://203.0.113.7:80/{FULL}"], ""),  # the default port
        # a name: each client resolves it itself, maybe inside its own network
        (NODE, [f"http://snapshots.example:8899/{FULL}"], "'http://snapshots.example:8899'"),
        (NODE, [f"{NODE}/{FULL}", f"https://cdn.example/{INCR}"], "'https://cdn.example:443'"),
        # another address, port or scheme is not the node's either
        (NODE, [f"http://203.0.113.8:8899/{FULL}"], "'http://203.0.113.8:8899'"),
        (NODE, [f"http://203.0.113.7:8900/{FULL}"], "'http://203.0.113.7:8900'"),
        (NODE, [f"https://203.0.113.7:8899/{FULL}"], "'https://203.0.113.7:8899'"),
        (NODE, [f"http://[2001:db8::8]:8899/{FULL}"], "'http://[2001:db8::8]:8899'"),
    ],
)
def test_a_discovered_nodes_archives_must_be_at_its_own_origin(
    node: str, urls: list[str], refused: str
) -> None:
    """In redirect mode the tracker hands a node's archive URL to clients, who resolve a
    name in it themselves (DNS rebinding, split horizon): only the address the node was
    found at, which the egress policy checked, is handed out (docs/http-api.md, "Trust")."""
    reason = off_origin(node, listing(*urls))
    if not refused:
        assert reason == ""
    else:
        name = urls[-1].rsplit("/", 1)[-1]
        assert reason.startswith(f"{name}: at {refused}, {AWAY}"), reason
        assert "\n" not in reason
