"""Prefetch (``cache_prefetch``): refresh a group's new best archives before anyone asks.

After each scrape round :meth:`Prefetcher.check` looks at every group's best full and best
incremental; a file it has not seen yet gets a background task that waits for a slot (at
most ``cache_prefetch_concurrency`` prefetches at once) and then asks the streamer to refresh
it (:meth:`tracker.proxy.streamer.ProxyStreamer.prefetch`: nothing happens when the file is cached,
being refreshed, no longer the best, or local). Each file is tried once while it stays a best
file: a prefetch that fails leaves the refresh to the next client. One that stops being a
best file before its end is stopped (its refresh too, unless clients read it) when it is
still listed but outranked, or once a newer file of its kind is the best
(:func:`tracker.proxy.decisions.prefetch_stopped`: a file unlisted for a round, its only
source's scrape failed, goes on and is not started twice), unless it is
an incremental the cache would keep (:meth:`tracker.ordering.index.Index.worth_keeping`): it ran
to its end to be thrown away, while the new best waited for its slot. Fulls and
incrementals wait for slots of their own, so that a new incremental (a minute or two
apart) never waits behind a full (a 100 GB one: 20 minutes). :meth:`Prefetcher.wanted`
starts the same background refresh for one file on demand (a ``Range`` request showed
interest in it, whatever ``cache_prefetch`` says). The tasks run in the
transfers' background nursery and end, with their refresh unless clients read it, when the
service stops.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

import attrs
import trio

from tracker.config.schema import Config
from tracker.core.snapshots import parse_archive_name
from tracker.observability.logs import log_event
from tracker.ordering.index import Index
from tracker.proxy.decisions import prefetch_stopped
from tracker.proxy.transfers import Transfers

log = logging.getLogger("tracker.prefetch")

#: A prefetched file: cache root, group, file name.
FileKey = tuple[str, str, str]
T = TypeVar("T")


#: What the prefetcher drives (:meth:`tracker.proxy.streamer.ProxyStreamer.prefetch`):
#: refresh ``name`` of ``group`` into the cache; True when it was promoted.
Refresher = Callable[[str, str], Awaitable[bool]]


@attrs.define(eq=False)
class Prefetcher:
    """Starts background refreshes of new best files, a bounded number at a time."""

    _config: Callable[[], Config]
    _index: Index
    _refresh: Refresher
    _transfers: Transfers
    _seen: set[FileKey] = attrs.field(init=False, factory=set)
    _wanted: set[FileKey] = attrs.field(init=False, factory=set)
    #: The prefetches :meth:`check` started that run or wait now: stopped when their file
    #: stops being a best one.
    _running: dict[FileKey, trio.CancelScope] = attrs.field(init=False, factory=dict)
    #: The slots of fulls and of incrementals: one kind never waits behind the other.
    _limiters: dict[bool, trio.CapacityLimiter] = attrs.field(
        init=False, factory=lambda: {True: trio.CapacityLimiter(1), False: trio.CapacityLimiter(1)}
    )

    def statistics(self) -> tuple[int, int]:
        """(prefetches running, prefetches waiting for a slot) right now."""
        stats = [limiter.statistics() for limiter in self._limiters.values()]
        return sum(s.borrowed_tokens for s in stats), sum(s.tasks_waiting for s in stats)

    def after(self, hook: Callable[[T], None]) -> Callable[[T], None]:
        """A round hook that calls ``hook`` (the existing one), then :meth:`check`."""

        def round_done(scraper: T) -> None:
            hook(scraper)
            self.check()

        return round_done

    def check(self) -> int:
        """Start a prefetch for each best file not seen yet; return how many were started.

        Synchronous and cheap (index lookups); does nothing unless proxy mode, a cache
        directory and ``cache_prefetch`` are configured.
        """
        config = self._config()
        root = config.proxy_snapshot_cache_dir
        if not (config.cache_prefetch and config.proxy_snapshot_downloads and root):
            return 0
        for limiter in self._limiters.values():
            limiter.total_tokens = config.cache_prefetch_concurrency
        best = self._best_files(config, root)
        going_on = set()
        for key in self._seen - best:  # a file that stops being a best one is forgotten...
            running = self._running.get(key)
            if running is None:
                continue
            if not self._outlived(config, best, key):
                going_on.add(key)  # ...but not its prefetch: listed again, it is not started twice
            elif not self._kept(key):
                log_event(log, "info", "cache_prefetch_dropped", group=key[1], file=key[2])
                running.cancel()
        self._seen = (self._seen & best) | going_on
        started = 0
        for key in sorted(best - self._seen):
            if not self._transfers.spawn(self._prefetch, key):
                break  # stopping
            self._seen.add(key)
            started += 1
        return started

    def wanted(self, group: str, name: str) -> bool:
        """Start a background refresh of ``name`` of ``group`` unless one was asked for and
        has not ended; False when none was started. The refresher decides whether there is
        anything to do (the file may be cached meanwhile, or no longer the best)."""
        config = self._config()
        root = config.proxy_snapshot_cache_dir
        key = (root, group, name)
        if not (config.proxy_snapshot_downloads and root) or key in self._wanted:
            return False
        if not self._transfers.spawn(self._prefetch_wanted, key):
            return False
        self._wanted.add(key)
        return True

    async def _prefetch_wanted(self, key: FileKey) -> None:
        try:
            await self._prefetch(key, asked=True)
        finally:
            self._wanted.discard(key)

    def _best_files(self, config: Config, root: str) -> set[FileKey]:
        files = set()
        for group in config.target_groups:
            name = group.group
            for source in (self._index.best_full(name), self._index.best_incremental(name)):
                if source is not None:
                    files.add((root, name, source.info.files[0].bare_name))
        return files

    def _outlived(self, config: Config, best: set[FileKey], key: FileKey) -> bool:
        """Whether the prefetch of ``key``, no longer a best file, has no reason left to run:
        still listed but outranked, or a newer best file of its kind
        (:func:`tracker.proxy.decisions.prefetch_stopped`), its group gone or the cache moved
        by a reload. A file merely unlisted for a round (its only source's scrape failed)
        goes on."""
        root, group, name = key
        if root != config.proxy_snapshot_cache_dir or config.group_named(group) is None:
            return True
        listed = bool(self._index.find_file(group, name))
        return prefetch_stopped(name, listed, [n for r, g, n in best if (r, g) == (root, group)])

    def _kept(self, key: FileKey) -> bool:
        """Whether a file no longer a best one is still worth refreshing: an incremental
        the cache keeps for the nodes still on its full."""
        _root, group, name = key
        return self._index.worth_keeping(group, name)

    def _still_on(self, key: FileKey) -> bool:
        """Whether prefetching ``key`` is still what the config asks (a reload may have
        turned it off, or moved the cache, while it waited for a slot)."""
        config = self._config()
        root = config.proxy_snapshot_cache_dir
        return config.cache_prefetch and config.proxy_snapshot_downloads and root == key[0]

    async def _prefetch(self, key: FileKey, *, asked: bool = False) -> None:
        """Refresh ``key`` once a slot is free: a prefetch of :meth:`check` only while the
        config still asks for prefetching then; ``asked``: one :meth:`wanted` started."""
        _root, group, name = key
        archive = parse_archive_name(name)
        limiter = self._limiters[archive is None or archive.is_full]
        done = False
        try:
            with trio.CancelScope() as scope:
                if not asked:
                    self._running[key] = scope
                async with limiter:
                    if not (asked or self._still_on(key)):
                        return  # (a reload turned prefetching off: it started the archive)
                    done = await self._refresh(group, name)
        except Exception:  # a bug must not take the transfers nursery (the service) down
            log_event(log, "error", "cache_prefetch_failed", group=group, file=name, exc_info=True)
            return
        finally:
            if not asked and self._running.get(key) is scope:
                del self._running[key]
        if done:
            log_event(log, "info", "cache_prefetched", group=group, file=name)
