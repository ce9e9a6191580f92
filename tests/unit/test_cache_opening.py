"""The disk cache's directory on a hung mount at start-up and at a reload: its look (its real
path) and its listing wait in a trio task for a thread of their own, never in one of trio's
shared worker threads, which file answers and parsers use (docs/configuration.md, "Paths on
a hung mount"). Each hang is the test's, at the call it holds, released at the end however
the test ends; the cache directory is real."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
from names import full_name

from tracker.cache.store import Cache
from tracker.config.schema import Config, StaticTargets, TargetGroup
from tracker.ordering.index import Index
from tracker.proxy.streamer import ProxyStreamer
from tracker.proxy.transfers import Transfers

#: How long a held call waits for its release at most: far beyond every bound here.
HELD = 30.0


class Held:
    """Calls on one path held as a hung mount holds them: :attr:`asked` (a trio event) set
    once one is held, each released by :meth:`release`."""

    def __init__(self) -> None:
        self.asked = trio.Event()
        self._token = trio.lowlevel.current_trio_token()
        self._answers = threading.Event()

    def holding(self, real: Callable[..., Any], held: Callable[..., bool]) -> Callable[..., Any]:
        """``real``, held on the arguments ``held`` says."""

        def call(*args: Any, **kwargs: Any) -> Any:
            if held(*args):
                trio.from_thread.run_sync(self.asked.set, trio_token=self._token)
                self._answers.wait(HELD)
            return real(*args, **kwargs)

        return call

    def release(self) -> None:
        self._answers.set()


@contextmanager
def held() -> Iterator[Held]:
    hang = Held()
    try:
        yield hang
    finally:
        hang.release()  # the thread a held call holds is let go, however the test ends


def cache_config(cache: Path) -> Config:
    group = TargetGroup(group="g", static_targets=StaticTargets(targets=["127.0.0.1:9"]))
    return Config(
        proxy_snapshot_downloads=True,
        proxy_snapshot_cache_dir=str(cache),
        target_groups=[group],
    )


def shared_threads_busy() -> int:
    """How many of trio's shared worker threads are taken now."""
    return int(trio.to_thread.current_default_thread_limiter().borrowed_tokens)


async def test_the_look_at_a_hung_cache_directory_holds_no_shared_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cache directory's real path (the start's and a reload's look, bounded) was taken
    by a call that waited in one of trio's shared threads for the thread doing the look:
    a hung mount held that shared thread for the whole bound, at each start and reload."""
    cache = tmp_path / "mount" / "cache"
    cache.mkdir(parents=True)
    config = cache_config(cache)
    streamer = ProxyStreamer(lambda: config, Index(clock=lambda: 0.0), Transfers())
    with held() as hang:
        real = os.path.realpath
        look = hang.holding(real, lambda at, *_: os.fspath(at) == str(cache))
        monkeypatch.setattr(os.path, "realpath", look)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(streamer.directories.look_at_cache, config)
            await hang.asked.wait()
            assert shared_threads_busy() == 0  # the look waits in a thread of its own
            hang.release()
    await streamer.aclose()


async def test_the_listing_of_a_hung_cache_directory_holds_no_shared_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reload ends by listing the cache (the archives of the groups it names, the
    directories of those it no longer names), within its bound: that listing waited in one
    of trio's shared threads for the thread doing it, for the whole bound on a hung mount."""
    cache = tmp_path / "cache"
    config = cache_config(cache)
    streamer = ProxyStreamer(lambda: config, Index(clock=lambda: 0.0), Transfers())
    assert streamer.cache() is not None  # made, locked and cleaned (a test's direct call)
    with held() as hang:
        real = Cache.orphans_and_files
        listing = hang.holding(real, lambda _cache: True)
        monkeypatch.setattr(Cache, "orphans_and_files", listing)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(streamer.directories.report_orphaned)
            await hang.asked.wait()
            assert shared_threads_busy() == 0  # the listing waits in a thread of its own
            hang.release()
    await streamer.aclose()


async def test_a_reload_s_listing_that_answers_late_is_never_told_over_a_promotion(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reload's listing begun before a promotion and answering after the promotion's own
    was told is not told over it: the index would list the evicted archive, not the
    promoted one, until the next change."""
    cache_dir = tmp_path / "cache"
    config = cache_config(cache_dir)
    streamer = ProxyStreamer(lambda: config, Index(clock=lambda: 0.0), Transfers())
    cache = streamer.cache()
    assert cache is not None
    told: list[list[str]] = []
    tell_index = cache.on_files

    def on_files(files: Any) -> None:
        told.append([f.name for f in files])
        if tell_index is not None:
            tell_index(files)

    cache.on_files = on_files

    async def promote(name: str) -> None:
        refresh = cache.begin_refresh("g", name)
        assert refresh is not None
        assert await refresh.open(3)
        await refresh.write(b"abc")
        await refresh.commit()

    older, newer = full_name(100), full_name(200)
    await promote(older)
    with held() as hang:
        real = Cache.orphans_and_files
        answers_late = hang.holding(lambda files: files, lambda _files: True)
        monkeypatch.setattr(Cache, "orphans_and_files", lambda c: answers_late(real(c)))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(streamer.directories.report_orphaned)
            await hang.asked.wait()  # listed (the older archive), answers once released
            await promote(newer)  # evicts the older; its listing told
            assert told[-1] == [newer]
            hang.release()
    assert told[-1] == [newer]
    await streamer.aclose()
