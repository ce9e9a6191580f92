"""The decisions of an archive request's byte path in proxy mode and the facts they are
decided from: plain values and pure functions, no I/O at all.

The facts are what a request asked (:class:`Asked`), the mode it is served under
(:class:`Mode`) and what the disk cache, the refreshes and the bucket hold (``Copy``,
:class:`Now`, ``Claimed``); each stage is one function here from facts to a decision
(a :class:`Step`, or a :class:`Start` that carries what starting a refresh takes), tested as
a table in tests/unit/test_plan.py. :meth:`tracker.proxy.streamer.Route.answer` asks them in
order and performs what they say; :func:`choose_sources` picks the sources a stream may use
(docs/architecture.md, "The byte path as a plan").
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from typing import Literal

import attrs

from tracker.core.snapshots import SnapshotFile, parse_archive_name
from tracker.core.text import TRACKER_AGENT, wants_bytes
from tracker.ordering.index import SnapshotSource
from tracker.ordering.sourcehistory import PREFIX as REJECTED
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
class Mode:
    """The configuration a request is served under, and the object store's state."""

    #: An object store (docs/http-api.md#with-an-object-store-object_store) is configured
    #: along with the disk cache.
    bucket: bool = False
    #: False while the store is down (between retries).
    store_up: bool = True
    #: ``object_store.direct_serve``: GETs of stored archives are sent to the bucket.
    direct_serve: bool = True
    #: ``cache_share_inflight``: readers share one refresh of a file.
    share: bool = False
    #: ``cache_complete_on_disconnect``: a refresh outlives its last client.
    keep: bool = False
    #: ``serve_user_agents``: clients that get the bytes, never a redirect to another host.
    serve_user_agents: tuple[str, ...] = ()
    #: The group's level is one no relayed stream meets (``trust.require`` ``accounts`` or
    #: ``cluster``, archives checked): a plain GET of a best file reads a refresh, a
    #: ``Range`` GET waits for a checked copy, never a source's unchecked bytes
    #: (docs/architecture.md, "The release rule").
    strict: bool = False

    @property
    def shares(self) -> bool:
        """Refreshes are shared: ``cache_share_inflight``, or the bucket (the refresh is then
        one for the whole fleet, and replicas follow it)."""
        return self.share or self.bucket


#: What the disk cache may hold of the file, before it is opened: ``no_cache`` (none is
#: configured); ``outside`` (the file cannot be cached here: its group is no directory name,
#: ``..``, or its path leads out of the cache directory through a planted symlink);
#: ``unchecked`` (a copy that has not passed its check yet, ``verify_archives``: not
#: served); ``servable`` (a copy is served if the file is there: checked, or
#: ``verify_archives: false``).
Copy = Literal["no_cache", "outside", "unchecked", "servable"]


@attrs.frozen
class Now:
    """What a miss finds: the index and the refreshes of the file at that moment."""

    #: The file is its group's current best full or best incremental.
    best: bool = False
    #: A registered refresh of the file (shared, or a background one; under a strict level
    #: any refresh of it: :attr:`Mode.strict`): its size and the bytes written so far;
    #: None: none.
    running: tuple[int, int] | None = None
    #: Any refresh of the file runs, registered or not (the cache's own record).
    refreshing: bool = False
    #: The running refresh is checked and has not passed its check yet: the last byte of
    #: every range read from it goes only once the whole file passed
    #: (:attr:`tracker.cache.refresh.Refresh.holds_range_ends`).
    ends_held: bool = False


#: What asking the bucket for the file's lock gave: ``lock`` (this replica holds it: it
#: refreshes the file and uploads it), ``holder`` (another replica holds it: its refresh in
#: flight is a source) or ``none`` (no lock to be had, the store is down, or it is our own
#: lock of a refresh that just ended: the disk cache alone).
Claimed = Literal["lock", "holder", "none", "stored"]


Found = list[tuple[SnapshotFile, SnapshotSource]]
#: What the bytes a refresh's starting client reads count as (``served_bytes_total{source}``).
Origin = Literal["cache", "upstream"]

# -- decisions ---------------------------------------------------------------------------------


class Step(enum.Enum):
    """A decision that carries nothing but itself. Each may *pass* when performing it shows
    that it cannot answer; the route then goes on (docs/architecture.md, "The byte path as a
    plan")."""

    #: 303 to a presigned URL of the bucket's object (passes: not in the bucket, no URL).
    REDIRECT = "redirect"
    #: The disk cache's file: Range, conditionals and HEAD answered from disk (passes: the
    #: file is not there).
    CACHE_HIT = "cache_hit"
    #: Not on disk: a HEAD answered from the object's metadata, or the object streamed
    #: through the tracker, Range and conditionals passed on (passes: not in the bucket, or
    #: the store failed).
    FROM_BUCKET = "from_bucket"
    #: No stored copy answered: counted as a cache miss, then :func:`on_miss`.
    MISS = "miss"
    #: Read the running shared refresh's growing temp file (passes: it ended unread).
    JOIN_SHARED = "join_shared"
    #: A ``Range`` GET whose first byte the running background refresh already wrote: read
    #: from its temp file rather than asking the source again (not one whose last byte the
    #: refresh would hold until its whole check passed: :func:`on_miss`).
    JOIN_BEHIND = "join_behind"
    #: Ask the bucket for the file's lock before refreshing it; then :func:`claimed`.
    CLAIM = "claim"
    #: Proxied from the replica holding the lock, which refreshes the file, as a source of
    #: the index's size (passes: its address may not be followed, or it failed).
    FROM_HOLDER = "from_holder"
    #: Stream from the sources, uncached.
    RELAY = "relay"
    #: A relay of a ``Range`` GET of a best file that nothing refreshes, which also starts a
    #: background refresh of the whole file (aria2c, axel, ``curl -C -`` ask for ranges only
    #: and would otherwise never get it cached).
    RELAY_INTEREST = "relay_interest"
    #: 503 with ``retry-after``: a ``Range`` or conditional GET of a best file under a strict
    #: level (:attr:`Mode.strict`) while no checked copy is held: no byte of the range is sent
    #: before the copy passed every check (a reader that takes a prefix and stops, or
    #: resumes elsewhere after a cut, must not keep unchecked bytes); a background refresh is
    #: started when none runs.
    CHECKING = "checking"
    #: 404: no source advertises the file any more and the copies the tracker held of it
    #: (docs/http-api.md, kept incrementals) did not answer: there is nothing to relay.
    GONE = "gone"

    @property
    def relays(self) -> bool:
        """A stream from the sources: the last decision of a request."""
        return self in (Step.RELAY, Step.RELAY_INTEREST)


@attrs.frozen
class Start:
    """Start a refresh of the file and, with a ``client``, read it: what performing it takes.

    ``keep``: it outlives its last reader; ``locked``: under the bucket's lock (uploaded,
    kept to its end); ``early``: the size of the early head its client gets when the refresh
    has not opened within ``early_head_after`` (0: none, :func:`early_head`); ``register``:
    other requests of the file find it and join it; ``origin``: what its starting client's
    bytes count as; ``client``: a client waits (relayed uncached when the temp file cannot
    be opened). Passes when a refresh of the file began meanwhile. Made by
    :func:`start_shared`, :func:`own_refresh` and :func:`start_prefetch`.
    """

    keep: bool
    locked: bool = False
    early: int = 0
    register: bool = True
    origin: Origin = "cache"
    client: bool = True


def start_shared(keep: bool, locked: bool = False, early: int = 0) -> Start:
    """The file's refresh, registered for other readers (its starter's bytes count as the
    cache's, as every other reader's do)."""
    return Start(keep, locked, early)


def own_refresh(keep: bool, early: int = 0) -> Start:
    """The file's refresh, registered for nobody else (``cache_share_inflight`` off); its
    bytes count as the upstream's, as they did when this client's stream fed the file: only
    readers of a shared refresh count as cache hits."""
    return Start(keep, False, early, register=False, origin="upstream")


def start_prefetch(locked: bool = False) -> Start:
    """A detached refresh with no client, registered and kept to its end; nobody waits:
    when the temp file cannot be opened, nothing is streamed."""
    return Start(True, locked, client=False)


Decision = Step | Start

# -- stages ------------------------------------------------------------------------------------


#: Clients that name the file they save after the last URL, query and all (wget with
#: ``--trust-server-names``, as solana-snapshot-finder runs it): a presigned URL always
#: carries one, so they get the bytes from the tracker, never a redirect to the bucket.
NAMED_FROM_THE_URL = ("Wget/",)


def redirect(asked: Asked, mode: Mode) -> bool:
    """First, before any file system work: a GET is sent to the bucket's copy, unless the
    client must get the bytes from the tracker (``serve_user_agents``; a client that names
    its file after the URL: :data:`NAMED_FROM_THE_URL`), is another tracker (which never
    forwards to a third replica), ``direct_serve`` is off or the store down."""
    if not mode.bucket or asked.method != "GET" or not (mode.store_up and mode.direct_serve):
        return False
    return not (
        asked.user_agent == TRACKER_AGENT
        or wants_bytes(asked.user_agent, mode.serve_user_agents)
        or asked.user_agent.startswith(NAMED_FROM_THE_URL)
    )


def stored(asked: Asked, mode: Mode, copy: Copy) -> tuple[Step, ...]:
    """After a redirect passed, and after a promotion of the file in flight ended: the
    stored copies to try in order, then :attr:`Step.MISS`; :attr:`Step.RELAY` when the file
    cannot be cached at all. A HEAD is answered from the object's metadata only while the
    store is up."""
    if copy in ("no_cache", "outside"):
        return (Step.RELAY,)
    steps: list[Step] = []
    if copy == "servable":
        steps.append(Step.CACHE_HIT)
    if mode.bucket and (asked.method != "HEAD" or mode.store_up):
        steps.append(Step.FROM_BUCKET)
    steps.append(Step.MISS)
    return tuple(steps)


def on_miss(asked: Asked, mode: Mode, now: Now) -> Decision:
    """A cache miss. Shared refreshes: a reader joins the running one; a plain GET of the
    best file starts one (under the bucket's lock when there is a bucket). Unshared: a
    plain GET of the best file starts its own refresh; a ``Range`` GET reads a background
    refresh when its first byte is already written. Either way, a ``Range`` that ends
    before the file's end joins no refresh whose range ends are held (``Now.ends_held``):
    its last byte would wait for the rest of the file and its check (minutes for a mainnet
    full), so it goes on as a concurrent request does (:func:`fallback`: a relay).
    Under a strict level (:attr:`Mode.strict`) a plain GET reads the refresh running
    (another client's own included, ``Now.running``) or starts one, and a ``Range`` or
    conditional GET of the best file waits for a checked copy (:attr:`Step.CHECKING`).
    Anything else: :func:`fallback`."""
    starts = asked.plain_get and now.best and not now.refreshing
    if mode.strict and asked.method == "GET" and not asked.plain and now.best:
        return Step.CHECKING  # never a source's or a growing file's unchecked range
    # Below a strict level: a relay answers it at the source's pace (docs/architecture.md,
    # "The release rule"); a strict level relays nothing it may read from a refresh.
    joinable = asked.may_join and (mode.strict or not _end_held(asked.range, now))
    if mode.shares:
        if now.running is not None:
            return Step.JOIN_SHARED if joinable else fallback(asked, now)
        if not starts:
            return fallback(asked, now)
        return Step.CLAIM if mode.bucket else start_shared(keep=mode.keep)
    joins = mode.strict or (now.running is not None and _written(asked.range, now.running))
    if now.running is not None and joinable and joins:
        return Step.JOIN_BEHIND
    if starts:
        return own_refresh(keep=mode.keep)
    return fallback(asked, now)


def claimed(asked: Asked, mode: Mode, claim: Claimed, size: int) -> Decision:
    """After :attr:`Step.CLAIM`: refresh under the lock (kept to its end: other replicas
    wait for the upload), or without the bucket when there is no lock to be had; the
    bucket's copy when the object landed as its lock came free. Another
    replica's lock: its refresh is followed, unless this request came from a replica (two
    replicas must never forward to each other) or the index does not know the file's
    ``size`` (what the holder answers could not be checked); then it is relayed."""
    if claim == "stored":  # landed as the lock came free: the bucket's copy answers
        return Step.REDIRECT if redirect(asked, mode) else Step.FROM_BUCKET
    if claim == "lock":
        return start_shared(keep=True, locked=True)
    if claim == "none":
        return start_shared(keep=mode.keep)
    if asked.user_agent == TRACKER_AGENT or size <= 0:
        return Step.RELAY
    return Step.FROM_HOLDER


def fallback(asked: Asked, now: Now) -> Step:
    """A miss that nothing else answers is relayed; a ``Range`` GET of a best file that
    nothing refreshes also starts a background refresh (docs/http-api.md, "Archive
    answers")."""
    interest = asked.method == "GET" and asked.range is not None
    return Step.RELAY_INTEREST if interest and now.best and not now.refreshing else Step.RELAY


def early_head(asked: Asked, size: int) -> int:
    """The size an early head may promise (0: none): a plain request of a file whose size
    the index knows (docs/http-api.md, "Archive answers")."""
    return size if asked.plain and size > 0 else 0


def _end_held(range_header: str | None, now: Now) -> bool:
    """True when the running refresh holds its ranges' ends (``Now.ends_held``) and the
    range ends before the file's last byte: read from the refresh, its own last byte would
    wait for every byte after it and the check of the whole file. A range to the file's
    end (``bytes=N-``, ``bytes=-N``: wget -c, aria2c's last segment) waits only as long as
    every reader's end does; aria2c's other segments are ranges that end before it."""
    if range_header is None or now.running is None or not now.ends_held:
        return False
    size = now.running[0]
    wanted = parse_range(range_header, size)
    return isinstance(wanted, ByteRange) and wanted.end < size - 1


def _written(range_header: str | None, running: tuple[int, int]) -> bool:
    """True when the range's first byte is in the refresh's temp file already."""
    if range_header is None:
        return False
    size, written = running
    wanted = parse_range(range_header, size)
    return isinstance(wanted, ByteRange) and wanted.start < written


# -- prefetch ------------------------------------------------------------------------------------


def prefetches(best: bool, found: Found, cached: bool) -> bool:
    """A file may be refreshed with no client (``cache_prefetch``, or a ``Range`` request's
    interest) when it is its group's best, advertised by remote sources only, and not cached.
    With a bucket, :meth:`tracker.proxy.refreshing.Refreshes.prefetch` then also asks the
    bucket and its lock."""
    return best and bool(found) and not any(f.path for f, _ in found) and not cached


def prefetch_stopped(name: str, listed: bool, best: Sequence[str]) -> bool:
    """Whether a prefetch of ``name``, no longer among its group's ``best`` file names, is
    stopped: when it is still ``listed`` by a source (another file ranks above it: it would
    run to its end to be thrown away while the new best waits for its slot), else only once
    a newer archive of its kind is the best (a full of a later slot; for an incremental, a
    later incremental or a best full later than its base). A file merely unlisted for a
    round (its only source's scrape failed, a sidecar restarted) keeps its prefetch:
    stopped, a 100 GB full's 20 minutes start again from byte 0 when it is listed again;
    and a refresh whose file is no longer wanted at its end is not promoted all the same
    (``refresh_stale``)."""
    archive = parse_archive_name(name)
    if listed or archive is None:
        return True
    newest = [parsed for b in best if (parsed := parse_archive_name(b)) is not None]
    full = max((b.slot for b in newest if b.is_full), default=0)
    if archive.is_full:
        return full > archive.slot
    incremental = max((b.slot for b in newest if not b.is_full), default=0)
    return full > archive.base_slot or incremental > archive.slot


# -- the sources of a stream -----------------------------------------------------------------------


def choose_sources(
    asked: Asked, found: Found, held: Sequence[str | None]
) -> tuple[Found, int, int, str]:
    """The sources of ``found`` whose copy is not held back (``held``: each one's reason,
    None when it is not held back) after a failed check (docs/http-api.md, "Verified
    archives"), best first; the index's size of the file (0: unknown: the length of a 200
    that states none); the size an early head may promise (0: none, :func:`early_head`); and
    why no source is left when every one is held back (empty otherwise: with none left the
    answer is 502 with the latest reason). A request that may get an early head may be
    followed only by sources of that size (or of unknown size, checked when they answer).
    """
    kept = [pair for pair, reason in zip(found, held, strict=True) if reason is None]
    latest = next((reason for reason in reversed(held) if reason is not None), "")
    size = kept[0][0].size if kept else 0
    early = early_head(asked, size)
    if early:
        kept = [(f, s) for f, s in kept if f.size in (0, early)]
    return kept, size, early, REJECTED + latest if not kept and latest else ""
