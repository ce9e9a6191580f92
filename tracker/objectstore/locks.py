"""One refresher per file across every replica: lock objects in the bucket.

The lock of ``{prefix}{group}/{name}`` is the object ``{prefix}.locks/{group}/{name}.lock``
(:mod:`~tracker.objectstore.keys`: no key but the archive's own ends in its name); its
metadata names the holder (``owner``, a random id per process) and how other replicas reach
it (``replica``, its ``replica_url``). It is

- taken with a conditional create (``If-None-Match: *``): of replicas racing, one wins;
- renewed by its holder every :data:`RENEW_EVERY` of ``lock_ttl`` (a sixth) with a
  conditional replace (``If-Match`` of the holder's last ETag): a holder that lost it
  (taken over) learns so;
- held, as far as its holder knows, for :data:`LEASE` of ``lock_ttl`` (five sixths) from the
  moment its last successful write was *sent* (its lease, on this replica's own clock): the
  store dates the write later than that, so another replica can take the lock over no
  sooner than a sixth of ``lock_ttl`` and a second after the lease ends. Past its lease a
  holder completes no upload (:meth:`Lock.until_held`); a renewal in flight is waited for up
  to :data:`LAPSE` of ``lock_ttl`` longer: applied, it proves nobody took the lock over (its
  ``If-Match`` held) and the lease runs on from its sending; unanswered by then (a store or
  network that hangs), the lock is given up. That sixth is the room for a complete sent
  just before the lease ended;
- stale when its ``Last-Modified`` is older than ``lock_ttl`` (plus a second: both are HTTP
  dates) on the store's own clock (the ``Date`` of the same answer), and then taken over
  with ``If-Match`` of the stale ETag, so that of replicas racing for a stale lock one wins;
- deleted by its holder when the refresh ends, with ``If-Match`` of the ETag it just read
  under its own mark (:attr:`Lock.token`): a replica that took it over between that read
  and the delete keeps its lock (on a store that ignores ``If-Match`` on DELETE the delete
  is unconditional, as it was before the stores offered it). A delete refused as the lock
  changed since the read is read and sent again while the lock bears the mark: a renewal
  abandoned in its worker thread as the refresh ended (the thread goes on) may land in
  between; one landing after the delete is refused (its ``If-Match`` names no object).
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import attrs
import trio

from tracker.errors import StoreConflict, StoreError

if TYPE_CHECKING:
    # not at run time: a tracker without an object store never loads botocore
    from tracker.objectstore.bucket import Bucket

#: Both times of an age are HTTP dates (whole seconds): a lock is stale only when it looks
#: older than ``lock_ttl`` by this much more, never early.
CLOCK_STEP = 1.0
#: Conditional-create attempts when the lock vanishes between our create and our look at it.
ATTEMPTS = 3
#: Reads and deletes of a lock being released whose delete found it changed since the read
#: (a renewal of its own, abandoned in its worker thread, landing in between): each change
#: is a write that was already out when the release began, and those are few.
RELEASE_ATTEMPTS = 3
#: A holder's lease, as a share of ``lock_ttl``, from the sending of its last successful
#: write: past it the holder gives the lock up (a takeover needs the whole ``lock_ttl``).
LEASE = 5 / 6
#: How often a holder renews its lock, as a share of ``lock_ttl``, from one renewal's
#: sending to the next: a renewal may take ``LEASE - RENEW_EVERY`` of it to be answered.
RENEW_EVERY = 1 / 6
#: How long past its lease's end, as a share of ``lock_ttl``, a holder waits for a renewal's
#: answer before it gives the lock up (a loaded store answers late; a hung one never does).
LAPSE = 1.0


@attrs.frozen
class Holder:
    """Another replica's live lock."""

    owner: str
    replica_url: str
    age: float


@attrs.define
class Lock:
    """A lock this replica holds; ``took_over``: it was another replica's stale lock."""

    bucket: Bucket
    key: str
    owner: str
    replica_url: str
    etag: str
    took_over: bool = False
    #: ``lock_ttl``: the lease is :data:`LEASE` of it.
    ttl: float = 60.0
    #: When the lease ends (``trio.current_time()``): :data:`LEASE` of :attr:`ttl` after the
    #: sending of the last write the store applied.
    lease_end: float = 0.0
    #: This lock's own mark, in its metadata from its first write to its last: what
    #: :meth:`release` knows it by (an ETag changes at every renewal, and a renewal the store
    #: applied but whose answer was cut, the refresh ending, leaves the one known stale).
    token: str = attrs.Factory(lambda: secrets.token_hex(16))
    #: Set (and replaced) at every applied write: what :meth:`until_held` waits for.
    _applied: trio.Event = attrs.Factory(trio.Event)

    def metadata(self) -> dict[str, str]:
        """The lock object's metadata: who holds it, where it serves the file from, and
        this lock's own mark (:attr:`token`)."""
        return {"owner": self.owner, "replica": self.replica_url, "token": self.token}

    @property
    def held(self) -> bool:
        """True while the lease lasts (see the module doc)."""
        return trio.current_time() < self.lease_end

    def written(self, sent: float) -> None:
        """A write of this lock sent at ``sent`` (``trio.current_time()``) was applied."""
        self.lease_end = max(self.lease_end, sent + self.ttl * LEASE)
        self._applied.set()
        self._applied = trio.Event()

    async def until_held(self) -> float:
        """Return while the lease lasts; past it, once a renewal is applied (what an
        upload's complete waits for: never sent under a lock another replica may hold); the
        lease's end (``trio.current_time()``), by which a write sent now must be over. The
        renewing task cancels the wait when the lock is lost. StoreError when the lease has
        not come back within :data:`LAPSE` of ``lock_ttl``: a store whose every renewal is
        answered after its lease kept the lock renewed and the upload waiting for good.
        Counted from the lease's end when the wait began after it, and a renewal period
        longer than the renewing task's own bound: a store that applies nothing is the
        lost lock it is (that task's verdict), not a slow one."""
        began = max(trio.current_time(), self.lease_end)
        with trio.move_on_at(began + self.ttl * (LAPSE + RENEW_EVERY)):
            while not self.held:
                await self._applied.wait()
            return self.lease_end
        raise StoreError(
            "the lock's renewals are answered after its lease: the store is too slow for lock_ttl",
            down=False,
        )

    async def renew(self) -> None:
        """Prove this holder is alive (the lease runs on from this write's sending).
        StoreConflict when the lock was taken over.

        A renewal the store applied whose answer was lost (the client then sends it again,
        with the ETag before it: 412) leaves the ETag known stale, not the lock another's:
        its :attr:`token` tells, and the lock's ETag now is taken."""
        sent = trio.current_time()
        try:
            self.etag = await self.bucket.put(
                self.key, _body(self.owner), metadata=self.metadata(), if_match=self.etag
            )
        except StoreConflict:
            info = await self.bucket.head(self.key)
            if info is None or info.metadata.get("token") != self.token:
                raise
            self.etag = info.etag  # renewed by the answer we lost
        self.written(sent)

    async def release(self) -> None:
        """Delete the lock if it is still this one (never raises StoreError): its
        :attr:`token` (its owner would not tell: another lock of this replica, a stale one of
        its own taken over, has the same; nor the ETag this holder last wrote: a renewal cut
        as the refresh ended may have changed it), and the delete is conditional on the ETag
        read with that token (a takeover between the read and the delete keeps its lock). A
        delete refused (412) is read and sent again, at most :data:`RELEASE_ATTEMPTS` times:
        a renewal of this lock cut as the refresh ended goes on in its worker thread, and
        may land between the read and the delete."""
        for _attempt in range(RELEASE_ATTEMPTS):
            try:
                info = await self.bucket.head(self.key)
                if info is None or info.metadata.get("token") != self.token:
                    return  # gone, or another's: taken over meanwhile
                await self.bucket.delete(self.key, if_match=info.etag)
                return
            except StoreConflict:
                # Changed between the read and the delete: taken over, or renewed by a
                # renewal of this lock abandoned in its worker thread when the refresh
                # ended (docs/replicas.md, "Locks and leases"): read it again.
                continue
            except StoreError:
                return  # it expires after lock_ttl


async def acquire(
    bucket: Bucket, key: str, owner: str, replica_url: str, lock_ttl: float
) -> Lock | Holder:
    """Take the lock at ``key`` for ``owner``: the Lock, or the live Holder of it.

    Raises StoreError when the store cannot be used.
    """
    lock = Lock(bucket, key, owner, replica_url, etag="", ttl=lock_ttl)
    for _attempt in range(ATTEMPTS):
        sent = trio.current_time()
        try:
            lock.etag = await bucket.put(
                key, _body(owner), metadata=lock.metadata(), if_none_match=True
            )
            lock.written(sent)
            return lock
        except StoreConflict:
            pass
        info, now = await bucket.head_dated(key)
        if info is None:
            continue  # released meanwhile: try to create it again
        age = (now - info.last_modified).total_seconds()
        holder = Holder(info.metadata.get("owner", ""), info.metadata.get("replica", ""), age)
        if not old_enough(info.last_modified, now, lock_ttl):
            return holder
        sent = trio.current_time()
        try:
            lock.etag = await bucket.put(
                key, _body(owner), metadata=lock.metadata(), if_match=info.etag
            )
        except StoreConflict:
            continue  # another replica took it over first: look again
        lock.written(sent)
        lock.took_over = True
        return lock
    raise StoreError(f"the lock {key} changed hands {ATTEMPTS} times in a row", down=False)


def old_enough(then: datetime, now: datetime, lock_ttl: float) -> bool:
    """True when ``then`` (a lock's date, or an upload's start) lies ``lock_ttl`` plus
    :data:`CLOCK_STEP` before ``now``: store dates are whole seconds, so an age is judged
    late by up to a second, never early. A date at an edge of the calendar whose offset
    takes it past the edge (``0001-01-01T00:00:00+05:00``: the store's listing is the
    network's) is old enough when it is the past's edge, never when the future's."""
    try:
        then = then.astimezone(UTC)
    except OverflowError:
        return then.year < now.year
    return (now - then).total_seconds() >= lock_ttl + CLOCK_STEP


def _body(owner: str) -> bytes:
    """A lock object's content, different at every write: its ETag (the content's MD5 on
    most stores) must change, or an ``If-Match`` of a stale lock would also match the lock
    that took it over, and two replicas could take it over at once."""
    return f"{owner} {secrets.token_hex(8)}\n".encode()
