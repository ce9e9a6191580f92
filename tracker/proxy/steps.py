"""The executor of one archive request's walk: it performs each step
:func:`tracker.proxy.walk.next_step` gives and reports back, deciding nothing itself.

A lookup is answered with what is true now (the disk cache's copy after a promotion in
flight, the index and the running refreshes, the index's size, the bucket's lock); a
decision is performed by :mod:`tracker.proxy.storedcopies` (the bucket, the disk cache, the holder
replica), :mod:`tracker.proxy.refreshing` (starting, joining and reading refreshes) or
:mod:`tracker.proxy.streamjobs` (the relay), and reported as answered or passed.
"""

from __future__ import annotations

from collections.abc import Callable

import attrs

from tracker.cache.store import Cache
from tracker.config.schema import TargetGroup
from tracker.core.snapshots import ArchiveName
from tracker.errors import RequestError
from tracker.files.answers import Answer
from tracker.objectstore.locks import Holder, Lock
from tracker.proxy import decisions as plan
from tracker.proxy import walk as walks
from tracker.proxy.ask import Ask
from tracker.proxy.context import ProxyContext, Streams
from tracker.proxy.decisions import Found
from tracker.proxy.refreshing import Refreshes, RefreshStart
from tracker.proxy.registry import RefreshRegistry, claimed_of, progress
from tracker.proxy.sharing import SharedRefresh
from tracker.proxy.storedcopies import StoredCopies, cache_path, copy_of

#: Told ``(group, name)`` when a relayed request shows interest in a best file (prefetch).
OnInterest = Callable[[str, str], object]


@attrs.frozen
class Wanted:
    """The file a request asks for: its group, its parsed name, its sources."""

    group: TargetGroup
    archive: ArchiveName
    found: Found

    @property
    def name(self) -> str:
        return self.archive.file_name


@attrs.frozen
class Executors:
    """What performs the steps of every request (one set per streamer)."""

    context: ProxyContext
    launcher: Streams
    stored: StoredCopies
    refreshes: Refreshes
    registry: RefreshRegistry
    on_interest: Callable[[], OnInterest | None]


@attrs.define
class RequestSteps:
    """One request's executor: what the request holds while it walks (the refresh it found
    running, the lock it claimed, the refresh it read) and the answer it got."""

    run: Executors
    ask: Ask
    wanted: Wanted
    cache: Cache | None
    #: The file's path in the cache (None: it cannot be cached there), from the last
    #: :class:`~tracker.proxy.walk.NeedCopy`.
    path: str | None = None
    #: The registered refresh of the file the last :class:`~tracker.proxy.walk.NeedNow` found.
    shared: SharedRefresh | None = None
    claim: Lock | Holder | None = None
    #: The refresh this request read, when it read one.
    read: SharedRefresh | None = None
    answer: Answer | None = None

    async def walk(self, walk: walks.Walk) -> Answer:
        """Perform ``walk`` to its end; the answer it ended with."""
        walk, step = walks.next_step(walk)
        while step is not None:
            walk, step = walks.next_step(walk, await self._perform(step))
        if self.answer is None:
            raise AssertionError("a request's walk ends in an answer")
        return self.answer

    @property
    def _key(self) -> tuple[str, str, str]:
        assert self.cache is not None  # the walk looks refreshes up only with a cache
        return (self.cache.root, self.wanted.group.group, self.wanted.name)

    async def _perform(self, step: walks.Step) -> walks.Reply:
        run, group, name = self.run, self.wanted.group.group, self.wanted.name
        match step:
            case walks.NeedCopy():
                return await self._copy()
            case walks.NeedNow(settle=settle):
                if settle:
                    await run.registry.settled(self._key)  # another request is claiming
                return self._now()
            case walks.NeedSize():
                return run.launcher.index_size(group, name)
            case walks.NeedPromoted():
                return self.read is not None and self.read.refresh.verified
            case plan.Claim():
                self.claim = await run.registry.claim(self._key)
                return claimed_of(self.claim)
            case plan.Miss():
                run.launcher.count("cache_miss")
                return False
        self.answer = await self._decided(step)
        return self.answer is not None

    async def _copy(self) -> plan.Copy:
        cache, group, name = self.cache, self.wanted.group.group, self.wanted.name
        archive = self.wanted.archive
        self.path = path = cache_path(cache, group, archive) if cache is not None else None
        if cache is not None and path is not None:
            await cache.wait_promotion(group, name, self.run.context.settings().promotion_wait)
        return copy_of(cache, path, group, name)

    def _now(self) -> plan.Now:
        assert self.cache is not None
        group, name = self.wanted.group.group, self.wanted.name
        self.shared = self.run.registry.running(self._key)
        return plan.Now(
            best=self.run.launcher.is_best(group, name),
            running=progress(self.shared),
            refreshing=self.cache.is_refreshing(group, name),
        )

    async def _decided(self, step: walks.Step) -> Answer | None:
        """Perform decision ``step``; None: it passed."""
        run, ask, cache, shared = self.run, self.ask, self.cache, self.shared
        group, archive = self.wanted.group, self.wanted.archive
        match step:
            case plan.Redirect():
                return await run.stored.redirect(group.group, archive)
            case plan.CacheHit() if cache is not None and self.path is not None:
                return await run.stored.cache_hit(cache, self.path, group.group, archive, ask)
            case plan.FromBucket(head=head):
                return await run.stored.from_bucket(head, ask, group.group, archive)
            case plan.JoinShared() if shared is not None:
                self.read = shared
                return await run.refreshes.join_shared(shared, ask)
            case plan.JoinBehind() if shared is not None:
                return await run.refreshes.join_behind(shared, ask)
            case plan.StartShared() | plan.OwnRefresh() if cache is not None:
                lock = self.claim if isinstance(self.claim, Lock) and step.locked else None
                return await self._start(RefreshStart(group, cache, archive, step, lock))
            case plan.FromHolder(size=size) if isinstance(self.claim, Holder):
                return await run.stored.from_holder(self.claim, ask, group, archive, size)
            case plan.Gone():
                raise RequestError(404, f"{archive.file_name} is no longer held nor advertised")
            case plan.Relay(interest=interest):
                on_interest = run.on_interest()
                if interest and on_interest is not None:
                    on_interest(group.group, archive.file_name)
                job = run.launcher.job(group, ask, archive, self.wanted.found)
                return await run.launcher.relay(job)
        return None

    async def _start(self, start: RefreshStart) -> Answer | None:
        answer, self.read = await self.run.refreshes.start_and_read(start, self.ask)
        return answer
