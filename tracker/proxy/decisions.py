"""The decisions of an archive request's byte path in proxy mode and the facts they are
decided from: plain values and pure functions, no I/O at all.

The facts are what a request asked (:class:`Asked`), the mode it is served under
(:class:`Mode`) and what the disk cache, the refreshes and the bucket hold (:class:`Copy`,
:class:`Now`, :class:`Claimed`); each stage of the walk (:mod:`tracker.proxy.walk`, which
orders them) is one function here from facts to a decision value, tested as a table in
tests/unit/test_plan.py. A decision carries what performing it needs (a refresh's early
head, whether its client falls back to an uncached stream, what its bytes count as), and
:func:`choose_sources` picks the sources a stream may use: the executors perform, they do
not decide (docs/architecture.md, "The byte path as a plan").
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from typing import ClassVar, Literal

import attrs

from tracker.core.snapshots import SnapshotFile
from tracker.core.text import TRACKER_AGENT, wants_bytes
from tracker.ordering.index import SnapshotSource
from tracker.ordering.rejections import PREFIX as REJECTED
from tracker.serving.ranges import ByteRange, parse_range

# -- facts ---------------------------------------------------------------------------------------


@attrs.frozen
class Asked:
    """The facts of a request: its method and the headers that decide its byte path."""

    method: str
    #: The ``Range`` header (None: absent).
    range: str | None = None
    #: An ``If-Range`` or conditional header (``If-Match``, ``If-None-Match``,
    #: ``If-Modified-Since``, ``If-Unmodified-Since``): only the source can answer it.
    conditional: bool = False
    user_agent: str = ""

    @property
    def plain(self) -> bool:
        """No ``Range`` and no conditional: the whole file, whatever its validators."""
        return self.range is None and not self.conditional

    @property
    def plain_get(self) -> bool:
        """A GET that may fill the cache: the answer is the whole file."""
        return self.method == "GET" and self.plain

    @property
    def may_join(self) -> bool:
        """A GET whose only forwarded header is ``Range``: a refresh's temp file answers it."""
        return self.method == "GET" and not self.conditional


@attrs.frozen
class Bucket:
    """The object store's state as a request finds it."""

    #: False while the store is down (between retries).
    usable: bool = True
    #: ``object_store.direct_serve``: GETs of stored archives are sent to the bucket.
    direct_serve: bool = True


@attrs.frozen
class Mode:
    """The configuration a request is served under."""

    #: The object store (docs/http-api.md#with-an-object-store-object_store), when one is
    #: configured along with the disk cache.
    bucket: Bucket | None = None
    #: ``cache_share_inflight``: readers share one refresh of a file.
    share: bool = False
    #: ``cache_complete_on_disconnect``: a refresh outlives its last client.
    keep: bool = False
    #: ``serve_user_agents``: clients that get the bytes, never a redirect to another host.
    serve_user_agents: tuple[str, ...] = ()

    @property
    def shares(self) -> bool:
        """Refreshes are shared: ``cache_share_inflight``, or the bucket (the refresh is then
        one for the whole fleet, and replicas follow it)."""
        return self.share or self.bucket is not None


class Copy(enum.Enum):
    """What the disk cache may hold of the file, before it is opened."""

    #: No disk cache is configured.
    NO_CACHE = "no_cache"
    #: The file cannot be cached here: its group is no directory name (``..``), or its path
    #: leads out of the cache directory through a planted symlink.
    OUTSIDE = "outside"
    #: A copy that has not passed its check yet (``verify_archives``): not served.
    UNCHECKED = "unchecked"
    #: A copy is served if the file is there (checked, or ``verify_archives: false``).
    SERVABLE = "servable"


@attrs.frozen
class Running:
    """A refresh of the file that readers may find (registered), and its progress."""

    size: int
    written: int


@attrs.frozen
class Now:
    """What a miss finds: the index and the refreshes of the file at that moment."""

    #: The file is its group's current best full or best incremental.
    best: bool = False
    #: A registered refresh of the file (shared, or a background one), if any.
    running: Running | None = None
    #: Any refresh of the file runs, registered or not (the cache's own record).
    refreshing: bool = False


class Claimed(enum.Enum):
    """What asking the bucket for the file's lock gave."""

    #: This replica holds the lock: it refreshes the file and uploads it.
    LOCK = "lock"
    #: Another replica holds it: its refresh in flight is a source.
    HOLDER = "holder"
    #: No lock to be had (the store is down, or it is our own lock of a refresh that just
    #: ended): the disk cache alone.
    NONE = "none"


Found = list[tuple[SnapshotFile, SnapshotSource]]
#: What the bytes a refresh's starting client reads count as (``served_bytes_total{source}``).
Origin = Literal["cache", "upstream"]

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
    the bucket's lock (uploaded, kept to its end); ``keep``: it outlives its last reader;
    ``early``: the size of the early head its client gets when the refresh has not opened
    within ``early_head_after`` (0: none, :func:`early_head`). Its client is relayed
    uncached when the temp file cannot be opened. Passes when a refresh of the file began
    meanwhile."""

    keep: bool
    locked: bool = False
    early: int = 0
    #: Other requests of the file find it and join it.
    register: ClassVar[bool] = True
    #: Its starting client's bytes count as the cache's, as every other reader's do.
    origin: ClassVar[Origin] = "cache"
    #: A client waits for it: relayed uncached when the temp file cannot be opened.
    client: ClassVar[bool] = True


@attrs.frozen
class FromHolder:
    """Proxied from the replica holding the lock, which refreshes the file, as a source of
    ``size`` bytes, the index's (passes: its address may not be followed, or it failed)."""

    size: int


@attrs.frozen
class OwnRefresh:
    """Start the file's refresh, registered for nobody else (``cache_share_inflight`` off),
    and read it; ``keep``: it outlives this client; ``early`` as :class:`StartShared`'s."""

    keep: bool
    early: int = 0
    locked: ClassVar[bool] = False
    register: ClassVar[bool] = False
    #: Its bytes count as the upstream's, as they did when this client's stream fed the
    #: file: only readers of a shared refresh count as cache hits.
    origin: ClassVar[Origin] = "upstream"
    client: ClassVar[bool] = True


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


def early_head(asked: Asked, size: int) -> int:
    """The size an early head may promise (0: none): a plain request of a file whose size
    the index knows (docs/http-api.md, "Archive answers")."""
    return size if asked.plain and size > 0 else 0


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
    With a bucket, :func:`tracker.proxy.walk.prefetch_walk` then also asks the bucket and
    its lock."""
    return best and bool(found) and not any(f.path for f, _ in found) and not cached


@attrs.frozen
class StartPrefetch:
    """Start a detached refresh of the file with no client, registered and kept to its end;
    ``locked``: under the bucket's lock (uploaded)."""

    locked: bool = False
    keep: ClassVar[bool] = True
    early: ClassVar[int] = 0
    register: ClassVar[bool] = True
    origin: ClassVar[Origin] = "cache"
    #: Nobody waits: when the temp file cannot be opened, nothing is streamed.
    client: ClassVar[bool] = False


#: The decisions that start a refresh, each with what starting it takes.
Start = StartShared | OwnRefresh | StartPrefetch
Decision = Redirect | CacheHit | FromBucket | Miss | AfterMiss | AfterClaim | StartPrefetch | Gone

# -- the sources of a stream -----------------------------------------------------------------------


@attrs.frozen
class Sources:
    """The sources a stream may use, best first, and what it may promise."""

    found: Found
    #: The index's size of the file (0: unknown): the length of a 200 that states none.
    size: int = 0
    #: The size an early head may promise (0: none, :func:`early_head`).
    early: int = 0
    #: Why no source is left, when every one is held back (empty otherwise).
    refusal: str = ""


def choose_sources(asked: Asked, found: Found, held: Sequence[str | None]) -> Sources:
    """The sources of ``found`` whose copy is not held back (``held``: each one's reason,
    None when it is not held back) after a failed check (docs/http-api.md, "Verified
    archives"). With none left the answer is 502 with the latest reason. A request that may
    get an early head (:func:`early_head`) may be followed only by sources of that size (or
    of unknown size, checked when they answer).
    """
    kept = [pair for pair, reason in zip(found, held, strict=True) if reason is None]
    latest = next((reason for reason in reversed(held) if reason is not None), "")
    size = kept[0][0].size if kept else 0
    early = early_head(asked, size)
    if early:
        kept = [(f, s) for f, s in kept if f.size in (0, early)]
    return Sources(kept, size, early, REJECTED + latest if not kept and latest else "")
