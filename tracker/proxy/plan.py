"""The byte path of an archive request in proxy mode, decided from facts: no I/O at all.

What docs/http-api.md promises ("Archive answers", "With an object store", "Verified archives")
is decided here, as pure functions from the facts of a request (:class:`Asked`), of the mode
(:class:`Mode`) and of what the cache, the bucket and the refreshes hold, to a decision value.
The order of the stages is :class:`Walk`, one object as h11's ``Connection.next_event()`` is:
it returns the next lookup it needs (:class:`NeedCopy`, :class:`NeedNow`, ...) or the next
decision; the executor (:mod:`tracker.proxy.steps`) performs it and reports back the
lookup's value, or whether the decision answered the request (True) or passed (False).
tests/unit/test_plan.py drives the same Walk with a table of answers, without sockets.

A stage is asked only once the lookup it needs is done, because what it reads can change
while the request waits (a promotion ends, a refresh starts, another replica takes a lock):
docs/architecture.md, "The byte path as a plan", draws the stages, what each is asked after
and what it decides.

A decision may *pass* when performing it shows that it cannot answer (the bucket's URL could
not be signed, the cached file vanished, the bucket's stream or the holder failed, a refresh
ended before it could be read): the request then goes on to the next decision of ``stored``,
or from a miss's decision to :func:`fallback`. :class:`PrefetchWalk` is the walk of a refresh
with no client (``cache_prefetch``). Separately, :mod:`tracker.proxy.sources` picks the
sources a stream may use.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import TypeVar

import attrs

from tracker.core.index import SnapshotSource
from tracker.core.snapshots import SnapshotFile
from tracker.core.text import TRACKER_AGENT, wants_bytes
from tracker.proxy.facts import Asked, Bucket, Claimed, Copy, Mode, Now, Running
from tracker.serving.ranges import ByteRange, parse_range

Found = list[tuple[SnapshotFile, SnapshotSource]]
#: The facts (tracker/proxy/facts.py) are part of the plan's language.
__all__ = ["Asked", "Bucket", "Claimed", "Copy", "Mode", "Now", "Running"]

# -- decisions ---------------------------------------------------------------------------------


@attrs.frozen
class Redirect:
    """303 to a presigned URL of the bucket's object (passes: not in the bucket, no URL)."""


@attrs.frozen
class CacheHit:
    """The disk cache's file: Range, conditionals and HEAD answered from disk (passes: the
    file is not there)."""


@attrs.frozen
class FromBucket:
    """Not on disk: a HEAD answered from the object's metadata (``head``), or the object
    streamed through the tracker, Range and conditionals passed on (passes: not in the
    bucket, or the store failed)."""

    head: bool


@attrs.frozen
class Miss:
    """No stored copy answered: counted as a cache miss, then :func:`on_miss`."""


@attrs.frozen
class JoinShared:
    """Read the running shared refresh's growing temp file (passes: it ended unread)."""


@attrs.frozen
class JoinBehind:
    """A ``Range`` GET whose first byte the running background refresh already wrote: read
    from its temp file rather than asking the source again."""


@attrs.frozen
class Claim:
    """Ask the bucket for the file's lock before refreshing it; then :func:`claimed`."""


@attrs.frozen
class StartShared:
    """Start the file's refresh, registered for other readers, and read it. ``locked``: under
    the bucket's lock (uploaded, kept to its end); ``keep``: it outlives its last reader.
    Passes when a refresh of the file began meanwhile."""

    keep: bool
    locked: bool = False


@attrs.frozen
class FromHolder:
    """Proxied from the replica holding the lock, which refreshes the file, as a source of
    ``size`` bytes, the index's (passes: its address may not be followed, or it failed)."""

    size: int


@attrs.frozen
class OwnRefresh:
    """Start the file's refresh, registered for nobody else (``cache_share_inflight`` off),
    and read it; ``keep``: it outlives this client."""

    keep: bool


@attrs.frozen
class Relay:
    """Stream from the sources, uncached. ``interest``: a ``Range`` GET of a best file that
    nothing refreshes, which starts a background refresh of the whole file (aria2c, axel,
    ``curl -C -`` ask for ranges only and would otherwise never get it cached)."""

    interest: bool = False


@attrs.frozen
class Gone:
    """404: no source advertises the file any more and the copies the tracker held of it
    (docs/http-api.md, kept incrementals) did not answer: there is nothing to relay."""


Stored = Redirect | CacheHit | FromBucket | Miss | Relay
AfterMiss = JoinShared | JoinBehind | Claim | StartShared | OwnRefresh | Relay
AfterClaim = StartShared | FromHolder | Relay

# -- stages ------------------------------------------------------------------------------------


def redirect(asked: Asked, mode: Mode) -> Redirect | None:
    """First, before any file system work: a GET is sent to the bucket's copy, unless the
    client must get the bytes from the tracker (``serve_user_agents``), is another tracker
    (which never forwards to a third replica), ``direct_serve`` is off or the store down."""
    bucket = mode.bucket
    if bucket is None or asked.method != "GET" or not (bucket.usable and bucket.direct_serve):
        return None
    if asked.user_agent == TRACKER_AGENT or wants_bytes(asked.user_agent, mode.serve_user_agents):
        return None
    return Redirect()


def stored(asked: Asked, mode: Mode, copy: Copy) -> tuple[Stored, ...]:
    """After a redirect passed, and after a promotion of the file in flight ended: the
    stored copies to try in order, then :class:`Miss`; :class:`Relay` when the file cannot
    be cached at all. A HEAD is answered from the object's metadata only while the store is
    up."""
    if copy in (Copy.NO_CACHE, Copy.OUTSIDE):
        return (Relay(),)
    steps: list[Stored] = []
    if copy is Copy.SERVABLE:
        steps.append(CacheHit())
    bucket = mode.bucket
    if bucket is not None and (asked.method != "HEAD" or bucket.usable):
        steps.append(FromBucket(head=asked.method == "HEAD"))
    steps.append(Miss())
    return tuple(steps)


def on_miss(asked: Asked, mode: Mode, now: Now) -> AfterMiss:
    """A cache miss. Shared refreshes: a reader joins the running one; a plain GET of the
    best file starts one (under the bucket's lock when there is a bucket). Unshared: a
    plain GET of the best file starts its own refresh; a ``Range`` GET reads a background
    refresh when its first byte is already written. Anything else: :func:`fallback`."""
    starts = asked.plain_get and now.best and not now.refreshing
    if mode.shares:
        if now.running is not None:
            return JoinShared() if asked.may_join else fallback(asked, now)
        if not starts:
            return fallback(asked, now)
        return Claim() if mode.bucket is not None else StartShared(keep=mode.keep)
    if now.running is not None and asked.may_join and _written(asked.range, now.running):
        return JoinBehind()
    if starts:
        return OwnRefresh(keep=mode.keep)
    return fallback(asked, now)


def claimed(asked: Asked, mode: Mode, claim: Claimed, size: int) -> AfterClaim:
    """After :class:`Claim`: refresh under the lock (kept to its end: other replicas wait
    for the upload), or without the bucket when there is no lock to be had. Another
    replica's lock: its refresh is followed, unless this request came from a replica (two
    replicas must never forward to each other) or the index does not know the file's
    ``size`` (what the holder answers could not be checked); then it is relayed."""
    if claim is Claimed.LOCK:
        return StartShared(keep=True, locked=True)
    if claim is Claimed.NONE:
        return StartShared(keep=mode.keep)
    if asked.user_agent == TRACKER_AGENT or size <= 0:
        return Relay()
    return FromHolder(size)


def fallback(asked: Asked, now: Now) -> Relay:
    """A miss that nothing else answers is relayed; a ``Range`` GET of a best file that
    nothing refreshes also starts a background refresh (docs/http-api.md, "Archive
    answers")."""
    interest = asked.method == "GET" and asked.range is not None
    return Relay(interest=interest and now.best and not now.refreshing)


def _written(range_header: str | None, running: Running) -> bool:
    """True when the range's first byte is in the refresh's temp file already."""
    if range_header is None:
        return False
    wanted = parse_range(range_header, running.size)
    return isinstance(wanted, ByteRange) and wanted.start < running.written


# -- prefetch ------------------------------------------------------------------------------------


def prefetches(best: bool, found: Found, cached: bool) -> bool:
    """A file may be refreshed with no client (``cache_prefetch``, or a ``Range`` request's
    interest) when it is its group's best, advertised by remote sources only, and not cached.
    With a bucket, :class:`PrefetchWalk` then also asks the bucket and its lock."""
    return best and bool(found) and not any(f.path for f, _ in found) and not cached


# -- the walk ------------------------------------------------------------------------------------


@attrs.frozen
class NeedCopy:
    """Lookup: what the disk cache may hold of the file (a :class:`Copy`), after waiting for
    a promotion of it in flight."""


@attrs.frozen
class NeedNow:
    """Lookup: the index and the refreshes of the file now (a :class:`Now`). ``settle``:
    first wait until no other request here is asking the bucket for the file's lock."""

    settle: bool = False


@attrs.frozen
class NeedSize:
    """Lookup: the index's size of the file (an int, 0: unknown)."""


@attrs.frozen
class NeedPromoted:
    """Lookup: whether the refresh the request just read (and could not answer from) was
    promoted into the cache meanwhile (a bool)."""


@attrs.frozen
class NeedInBucket:
    """Lookup: whether the bucket holds the file (a bool)."""


@attrs.frozen
class NeedFound:
    """Lookup (prefetch): whether the file is its group's best, who advertises it, and
    whether the disk cache holds it (a :class:`Prefetching`)."""


@attrs.frozen
class Prefetching:
    """The facts a prefetch starts from."""

    best: bool
    found: Found
    cached: bool


@attrs.frozen
class StartPrefetch:
    """Start a detached refresh of the file with no client, kept to its end; ``locked``:
    under the bucket's lock (uploaded)."""

    locked: bool = False


Lookup = NeedCopy | NeedNow | NeedSize | NeedPromoted | NeedInBucket | NeedFound
#: :class:`Claim` is asked like a lookup (its reply: a :class:`Claimed`), but it takes the
#: lock: it is part of the path a request takes.
Decision = Redirect | CacheHit | FromBucket | Miss | AfterMiss | AfterClaim | StartPrefetch | Gone
Step = Lookup | Decision
Reply = Copy | Now | Claimed | Prefetching | int | bool | None
_Steps = Generator[Step, Reply, None]
_T = TypeVar("_T")


class Walk:
    """The stages of one archive request in their order: :meth:`start` gives the first step,
    :meth:`send` (the reply to the step before: a lookup's value, or for a decision whether
    it answered) the next; None once the request is answered. Executors only perform."""

    def __init__(self, asked: Asked, mode: Mode, *, relayable: bool = True) -> None:
        # ``relayable``: some source of the file can be asked (else a relay is Gone).
        self._steps: _Steps = (
            _gone(_request(asked, mode)) if not relayable else _request(asked, mode)
        )

    def start(self) -> Step | None:
        """The first step."""
        return self.send(None)

    def send(self, reply: Reply) -> Step | None:
        """The step after the one ``reply`` answers; None: the walk ended."""
        try:
            return self._steps.send(reply)
        except StopIteration:
            return None


class PrefetchWalk(Walk):
    """The walk of a refresh with no client: :func:`prefetches`, then with a bucket the
    bucket's copy and its lock; it ends in :class:`StartPrefetch`, or in nothing."""

    def __init__(self, bucket: bool) -> None:
        self._steps = _prefetch(bucket)


def _gone(steps: _Steps) -> _Steps:
    """``steps``, with the relay that would end them a :class:`Gone` instead."""
    reply: Reply = None
    while True:
        try:
            step = steps.send(reply)
        except StopIteration:
            return
        if isinstance(step, Relay):
            yield Gone()
            return
        reply = yield step


def _request(asked: Asked, mode: Mode) -> _Steps:
    if redirect(asked, mode) is not None and (yield Redirect()):
        return
    copy = _as(Copy, (yield NeedCopy()))
    for step in stored(asked, mode, copy):
        if isinstance(step, Miss):
            yield step  # counted: the reply tells nothing
            yield from _miss(asked, mode)
            return
        if (yield step) or isinstance(step, Relay):
            return
    raise AssertionError("the stored stage ends in a miss or a relay")


def _miss(asked: Asked, mode: Mode) -> _Steps:
    now = _as(Now, (yield NeedNow(settle=mode.shares)))
    step: AfterMiss | AfterClaim = on_miss(asked, mode, now)
    if isinstance(step, Claim):
        claim = _as(Claimed, (yield step))
        step = claimed(asked, mode, claim, _as(int, (yield NeedSize())))
    if (yield step) or isinstance(step, Relay):
        return
    if isinstance(step, JoinShared | StartShared | OwnRefresh) and (yield from _promoted()):
        return
    # Passed: what is true now decides.
    yield fallback(asked, _as(Now, (yield NeedNow())))


def _promoted() -> Generator[Step, Reply, bool]:
    """The ``promoted`` stage: a refresh read passed, as it was promoted meanwhile; the copy
    it became answers as a cache hit. Whether it answered."""
    if not _as(bool, (yield NeedPromoted())) or _as(Copy, (yield NeedCopy())) is not Copy.SERVABLE:
        return False
    return bool((yield CacheHit()))


def _prefetch(bucket: bool) -> _Steps:
    facts = _as(Prefetching, (yield NeedFound()))
    if not prefetches(facts.best, facts.found, facts.cached):
        return
    if not bucket:
        yield StartPrefetch()
        return
    if _as(bool, (yield NeedInBucket())):
        return  # clients are sent to the bucket's copy
    claim = _as(Claimed, (yield Claim()))
    if claim is not Claimed.HOLDER:  # another replica's lock: it refreshes the file
        yield StartPrefetch(locked=claim is Claimed.LOCK)


def _as(kind: type[_T], reply: Reply) -> _T:
    """``reply`` checked to be the kind the step asked for."""
    if not isinstance(reply, kind) or (kind is int and isinstance(reply, bool)):
        raise TypeError(f"the walk expected a {kind.__name__}, got {reply!r}")
    return reply
