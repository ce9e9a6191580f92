"""Where requests find the refreshes this replica runs, and the bucket's locks it asks for.

A refresh is *followed* from its start to its end (the status page lists its readers) and,
when it is shared (``cache_share_inflight``, the bucket, a prefetch), also *registered*:
requests of its file find it (:meth:`RefreshRegistry.running`) and join it rather than
asking the source again. Registering happens synchronously with the start, so a request
arriving next finds it. While a request asks the bucket for a file's lock, others of that
file wait (:meth:`RefreshRegistry.settled`): the lock decides who refreshes.
"""

from __future__ import annotations

import trio

from tracker.objectstore.locks import Holder, Lock
from tracker.proxy.bucketcopies import ObjectPath
from tracker.proxy.decisions import Claimed, Running
from tracker.proxy.sharing import SharedRefresh

#: A refresh's key: cache root, group, file name.
SharedKey = tuple[str, str, str]


class RefreshRegistry:
    """The refreshes running, by file; see the module doc."""

    def __init__(self, objects: ObjectPath | None) -> None:
        self._objects = objects
        #: Registered refreshes: requests of their file join them.
        self._shared: dict[SharedKey, SharedRefresh] = {}
        #: Every refresh running, registered or not: who reads it (status page).
        self._followed: dict[SharedKey, SharedRefresh] = {}
        #: Files whose bucket lock this replica is asking for (a second request waits).
        self._claiming: dict[SharedKey, trio.Event] = {}

    def add(self, key: SharedKey, shared: SharedRefresh, *, register: bool) -> None:
        """A refresh began: followed, and with ``register`` found by requests of its file."""
        self.forget_ended()  # a few at a time: the names change with every snapshot
        self._followed[key] = shared
        if register:
            self._shared[key] = shared

    def running(self, key: SharedKey) -> SharedRefresh | None:
        """The registered refresh of a file still running (ended ones are dropped)."""
        for ended in [k for k, s in self._shared.items() if s.refresh.ended.is_set()]:
            del self._shared[ended]
        return self._shared.get(key)

    def followed(self, key: SharedKey) -> SharedRefresh | None:
        """The refresh of a file, registered or not (call :meth:`forget_ended` first to
        leave out those that ended)."""
        return self._followed.get(key)

    def forget_ended(self) -> None:
        for key in [k for k, s in self._followed.items() if s.refresh.ended.is_set()]:
            del self._followed[key]

    async def settled(self, key: SharedKey) -> None:
        """Return once no request here is asking for the bucket's lock of the file."""
        while (claiming := self._claiming.get(key)) is not None:
            await claiming.wait()

    async def claim(self, key: SharedKey) -> Lock | Holder | None:
        """The bucket's lock of a file about to be refreshed here (None: no bucket, or it
        cannot be used), or its live holder. Other requests for the file wait meanwhile."""
        if self._objects is None:
            return None
        self._claiming[key] = done = trio.Event()
        try:
            return await self._objects.claim(key[1], key[2])
        finally:
            del self._claiming[key]
            done.set()


def progress(shared: SharedRefresh | None) -> Running | None:
    """What the plan knows of a registered refresh: its size and the bytes written."""
    if shared is None:
        return None
    return Running(size=shared.refresh.size, written=shared.refresh.written)


def claimed_of(claim: Lock | Holder | None) -> Claimed:
    """What asking the bucket for a file's lock gave, as the plan knows it."""
    if isinstance(claim, Holder):
        return Claimed.HOLDER
    return Claimed.NONE if claim is None else Claimed.LOCK
