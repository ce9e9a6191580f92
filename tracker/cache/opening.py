"""The disk cache's directories and their life cycle: each directory's cache, its opening at
start-up and at each reload, off the event loop and bounded, and which one is the configured
cache (docs/configuration.md, ``proxy_snapshot_cache_dir`` and "Paths on a hung mount").

A directory is looked at (its real path) before a config naming it is put in force, then
opened (made, locked, cleaned and listed) in a thread of its own, and made the configured
cache when that answers: requests stream uncached meanwhile. A reload back to a directory
used before lists it again the same way, its cache used meanwhile. Each reload ends by
listing the cache (:meth:`CacheDirectories.report_orphaned`). A look or a listing waits in a
trio task for a thread of its own (:class:`tracker.serving.threads.DirectoryThreads`), never
in one of trio's shared threads: a hung mount holds one thread, not the pool file answers
and parsers use.

Which cache a request uses is the proxy's (:meth:`tracker.proxy.streamer.ProxyStreamer.cache`,
reading what :class:`CacheDirectories` keeps), as is what a cache is told of the tracker when
it is made (its maker): what a request runs stays in the rooms of its path
(docs/architecture.md, "Following one relay").
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from functools import partial

import attrs
import outcome
import trio

from tracker.cache.store import Cache, CacheContents, CachedFile, hold_cached
from tracker.config.bounded import LOOK_BOUND, no_answer
from tracker.config.schema import Config
from tracker.core.digests import CACHE, Digests
from tracker.errors import ConfigNotReady
from tracker.observability.logs import log_event
from tracker.observability.metrics import Metrics
from tracker.ordering.index import Index
from tracker.proof.accounts.budget import AccountsLimits
from tracker.serving.threads import Background, DirectoryThreads

log = logging.getLogger("tracker.cache")

#: How long the start or a reload waits for a cache directory's opening (its lock, its
#: leftovers, the digests beside its archives, its listing: a second or so for a large cache
#: on a busy NFS server) before it goes on without it: one that takes longer (a mount that
#: hung after its look) becomes the configured cache when it answers, every request
#: streaming uncached meanwhile (docs/configuration.md, "Paths on a hung mount").
OPEN_WAIT = 10.0

#: Makes the cache of a directory (its real path) for a config, with its accounts proofs'
#: limits, leaving the temp files in flight elsewhere; with its own digests. Blocking.
Maker = Callable[
    [str, Config, AccountsLimits | None, Callable[[], frozenset[str]]], tuple[Cache, Digests]
]


@attrs.frozen
class _Opened:
    """What the opening of a cache directory found (:meth:`CacheDirectories.begin_opening`):
    the cache made (None: one made before, listed again), its digests, what it holds (None:
    nothing of it may be told)."""

    cache: Cache | None
    digests: Digests | None
    contents: CacheContents | None


class CacheDirectories:
    """The cache of each directory this process used, by real path, and which one is the
    configured cache: only it tells the index and the digests what it holds.

    ``config`` returns the live config; ``index`` and ``digests`` are the tracker's, told
    what the configured cache holds and checked; ``metrics`` (optional) its size. ``made``
    makes a directory's cache and its own digests (:data:`Maker`: the proxy's wiring), with
    ``limits(root)`` when ``prove_accounts`` is on; ``in_force`` is the proxy's look-up of
    the configured cache, asked once an opening answered (its room kept, its unchecked
    files checked).
    """

    def __init__(
        self,
        config: Callable[[], Config],
        index: Index,
        digests: Digests,
        *,
        made: Maker,
        limits: Callable[[str], AccountsLimits],
        in_force: Callable[[], Cache | None],
        metrics: Metrics | None = None,
    ) -> None:
        self._config = config
        self._index = index
        self._digests = digests
        self._made = made
        self._limits = limits
        self._in_force = in_force
        self._metrics = metrics
        #: The cache of each directory, by real path, kept (locked) for a reload back to it.
        self.caches: dict[str, Cache] = {}
        #: Each directory's own digests, by the directory's real path.
        self.digests_of: dict[str, Digests] = {}
        #: The real path of the cache directory configured, and of the one a reload is about
        #: to configure (:meth:`look_at_cache`), each resolved once.
        self.resolved: dict[str, str] = {}
        #: The openings of cache directories running in a thread, by real path
        #: (:meth:`begin_opening`): one at most per directory, however many reloads ask.
        self.opening: dict[str, Background[_Opened]] = {}
        #: The same for a directory used before, listed again (its cache is used meanwhile).
        self._listing: dict[str, Background[_Opened]] = {}
        #: Each such listing's ticket (:meth:`Cache.listing_begun`): never told over a
        #: newer listing of the same cache (a refresh's, promoted meanwhile).
        self._listing_begun: dict[str, int] = {}
        #: The directory (its real path) of the one cache that tells the index what it holds
        #: and the digests what it checked; None: none yet, or none configured now. Set by
        #: :meth:`switch`.
        self.current: str | None = None
        #: Cache roots whose start-up check of unverified files has not been started yet
        #: (the proxy starts it, in its transfers).
        self.rechecking: set[str] = set()
        #: The threads the looks and the listings run in, one per directory at most: a
        #: directory on a hung mount holds one, never one of trio's shared threads.
        self._looks = DirectoryThreads()
        self._listings = DirectoryThreads()

    async def look_at_cache(self, config: Config) -> None:
        """Take the real path of the cache directory ``config`` names, at start-up and at a
        reload before ``config`` is in force, in a thread of its own within the config's
        bound on a look (:data:`~tracker.config.bounded.LOOK_BOUND`): on the event loop, the
        ``realpath`` of a directory on a hung mount froze every request. Raises
        :class:`~tracker.errors.ConfigNotReady` naming the key when it does not answer (the
        start exits 75; a reload is refused, the config in force kept: docs/configuration.md,
        "Paths on a hung mount"); a look that still hangs from an earlier ask answers at
        once, never a second thread. The directory in force is not looked at again."""
        configured = config.proxy_snapshot_cache_dir
        if not (config.proxy_snapshot_downloads and configured):
            return
        if configured in self.resolved and configured == self._config().proxy_snapshot_cache_dir:
            return
        look = partial(os.path.realpath, configured)
        try:
            real = await self._looks.run(configured, look, LOOK_BOUND)
        except (trio.TooSlowError, RuntimeError):  # RuntimeError: no thread to be had
            problem = f"proxy_snapshot_cache_dir: {no_answer(configured, LOOK_BOUND)}"
            raise ConfigNotReady([problem]) from None
        self.resolved[configured] = real

    def real_path(self, configured: str) -> str:
        """The real path of the cache directory ``configured``, resolved once per configured
        value (a reload that changes it resolves it again, off the event loop:
        :meth:`look_at_cache`): the proxy looks the cache up for every request, and the
        resolution is a system call per component of the path."""
        real = self.resolved.get(configured)
        if real is None:  # not looked at by the service (a test's direct call)
            real = self.resolved[configured] = os.path.realpath(configured)
        return real

    async def open_cache(self, wait: float = OPEN_WAIT) -> None:
        """:meth:`begin_opening`, then :meth:`opened_within` ``wait`` seconds (at start-up)."""
        await self.opened_within(self.begin_opening(), wait)

    def begin_opening(self) -> Background[_Opened] | None:
        """Begin opening the configured cache directory (its real path taken by
        :meth:`look_at_cache`), at start-up and as a reload puts its config in force: a
        directory this process has no cache of is made, locked, cleaned and listed in a
        worker thread (:meth:`Cache.open_blocking`: on the event loop, a directory on a hung
        mount froze every request), and made the configured one when it answers, requests
        streaming uncached meanwhile; a directory used before is listed again the same way
        (used meanwhile). One thread at most per directory, however many reloads ask (a
        mount that hangs). Returns the opening (None: nothing to wait for)."""
        config = self._config()
        configured = config.proxy_snapshot_cache_dir
        self.resolved = {path: real for path, real in self.resolved.items() if path == configured}
        if not (config.proxy_snapshot_downloads and configured):
            self._in_force()
            return None
        root = self.real_path(configured)
        opening = self.opening.get(root)
        cache = self.caches.get(root)
        if opening is None and cache is not None and not (cache.in_use and root != self.current):
            if root != self.current:  # a reload back to a directory used before
                self.switch(root)
                if not cache.in_use:  # listed in a thread, told if it is still the one
                    opening = self._listing.get(root)
                    if opening is None:
                        self._listing_begun[root] = cache.listing_begun()
                        opening = self._in_thread(root, None, cache.measure)
                        self._listing[root] = opening
            self._in_force()
            return opening
        if self.current is not None:  # the one before holds nothing now, this one not yet
            self.switch(None)
        if opening is None:
            limits = self._limits(root) if config.prove_accounts else None
            live = self.temp_files_in_flight()  # read here: trio's thread changes them
            made = partial(self._made, root, config, limits, lambda: live)
            opening = self.opening[root] = self._in_thread(root, made, None)
        return opening

    async def opened_within(self, opening: Background[_Opened] | None, wait: float) -> None:
        """Wait at most ``wait`` seconds for ``opening`` (:meth:`begin_opening`) to answer;
        one that has not is said once (it goes on, and is used when it answers)."""
        if opening is None:
            return
        with trio.move_on_after(wait):
            await opening.wait()
        if not opening.done():
            log_event(
                log, "warning", "cache_opening_late", error=f"not opened within {wait:g}s (a"
                " hung mount?): requests stream uncached until it answers",
            )  # fmt: skip

    def made_here(self, root: str, config: Config) -> Cache:
        """The cache of ``root`` made now, blocking, cleaned and made the configured one: a
        directory the service did not open first (a test's direct call)."""
        limits = self._limits(root) if config.prove_accounts else None
        cache, digests = self._made(root, config, limits, self.temp_files_in_flight)
        self.caches[root], self.digests_of[root] = cache, digests
        self.switch(root)
        cache.startup_cleanup()  # tells what it holds and checked (nothing when in use)
        self.rechecking.add(root)
        return cache

    def _in_thread(
        self,
        root: str,
        made: Callable[[], tuple[Cache, Digests]] | None,
        measure: Callable[[], CacheContents] | None,
    ) -> Background[_Opened]:
        """The opening of ``root`` in a worker thread: a cache ``made`` and opened, or one
        there listed again (``measure``); kept by :meth:`_opened` when it answers."""

        def run() -> _Opened:
            if made is not None:
                cache, digests = made()
                return _Opened(cache, digests, cache.open_blocking())
            assert measure is not None
            return _Opened(None, None, measure())

        return Background(run, on_done=partial(self._opened, root), name=f"cache opening {root}")

    def _opened(self, root: str, result: outcome.Outcome[_Opened]) -> None:
        """In trio's thread, once the opening of ``root`` ended: its cache kept, made the
        configured one if it still is, and what it holds told."""
        self.opening.pop(root, None)
        self._listing.pop(root, None)
        begun = self._listing_begun.pop(root, None)
        try:
            opened = result.unwrap()
        except Exception as exc:  # its own failure, never the process's
            log_event(log, "error", "cache_opening_failed", root=root, exc_info=exc)
            return
        if opened.cache is not None and opened.digests is not None:
            self.caches[root], self.digests_of[root] = opened.cache, opened.digests
            self.rechecking.add(root)
        config = self._config()
        configured = config.proxy_snapshot_cache_dir
        if not config.proxy_snapshot_downloads or self.resolved.get(configured) != root:
            return  # a reload moved on meanwhile: kept (locked) for a reload back to it
        if opened.cache is not None:
            self.switch(root)
        if opened.contents is not None and root == self.current:
            self.caches[root].tell(opened.contents, begun)
        self._in_force()  # its room kept and its unchecked files checked

    def temp_files_in_flight(self) -> frozenset[str]:
        """The temp files of every refresh in flight in any cache of this process: a cache
        made by a reload to a directory nested in another's (or holding it) removes no
        leftover that is one of them."""
        return frozenset(path for cache in self.caches.values() for path in cache.temp_files())

    async def report_orphaned(self) -> None:
        """Name in the log the cache's directories of groups no longer configured
        (:meth:`Cache.report_orphaned`) and list the archives of those configured in the
        index; after a reload. Listed in a thread of its own within :data:`OPEN_WAIT` (a
        directory on a hung mount held the reload's end, and every reload after it: one at
        a time); one that does not answer is said once, its listing not started again while
        it hangs."""
        cache = self._in_force()
        if cache is None or cache.in_use:  # another tracker's: nothing of it is this one's
            return
        wait = OPEN_WAIT
        try:
            # the index lists the configured groups' archives only: a dropped group's go,
            # a group configured again lists its archives again
            begun = cache.listing_begun()  # never told over a listing begun later
            files = await self._listings.run(cache.root, cache.orphans_and_files, wait)
        except (trio.TooSlowError, RuntimeError):  # RuntimeError: no thread to be had
            late = f"not listed within {wait:g}s (a hung mount?)"
            log_event(log, "warning", "cache_listing_late", root=cache.root, error=late)
            return
        cache.tell(CacheContents(None, files), begun)  # told while it is the configured one

    async def listed(self, cache: Cache) -> list[CachedFile] | None:
        """``cache``'s files, its directory checked first, for the status page: listed in a
        thread of its own within :data:`~tracker.config.bounded.LOOK_BOUND` (the reload's
        listings' threads: one at most per directory, so a page asked while the directory
        hangs answers at once); None when it did not answer."""
        try:
            return await self._listings.run(cache.root, partial(_listed, cache), LOOK_BOUND)
        except (trio.TooSlowError, RuntimeError):  # RuntimeError: no thread to be had
            return None

    def switch(self, root: str | None) -> None:
        """The cache at ``root`` (None: none) is the configured one from now on: only it
        tells the index and the digests what it holds (its files are told next), so an older
        directory's refresh that ends there later changes neither (docs/configuration.md,
        ``proxy_snapshot_cache_dir``). The digests of the disk cache's copies become its own:
        a digest is its copy's, and another directory's copies are not served
        (docs/http-api.md, "Verified archives")."""
        self.current = root
        hold_cached(self._index, [])
        if root is None and self._metrics is not None:
            self._metrics.set_cache_size(0)
        for group, name, holder, _value in self._digests.held():
            if holder == CACHE:
                self._digests.drop(CACHE, group, name)
        own = self.digests_of.get(root) if root is not None else None
        for group, name, holder, value in own.held() if own is not None else []:
            self._digests.hold(holder, group, name, value)


def _listed(cache: Cache) -> list[CachedFile]:
    """The cache's files, its directory checked first (blocking: in a thread)."""
    cache.check_directory()
    return cache.files()
