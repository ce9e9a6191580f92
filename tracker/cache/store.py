"""The disk cache of proxy mode: the newest full and incremental archive of each group .

Layout: ``{root}/{group}/{archive name}``; a refresh writes ``{root}/{group}/.tmp-{name}.{rand}``
and renames it into place when complete. Names that come from requests are validated by
:meth:`Cache.path_for` before any file system access, and the resolved path must lie inside
``root``: nothing outside the cache directory is ever read or written.

A refresh (one per file at a time, see :meth:`Cache.begin_refresh`) goes through::

    begin_refresh ─► Refresh.open(size) ─► write(chunk)… ─► commit()   (promoted)
                                  │                 │
                                  └── None/False ───┴──────► end()       (temp file removed)

``end`` and ``abort`` are idempotent, so they can sit in any ``finally``, under cancellation
too: ``end`` (shielded there) closes and removes the temp file in a thread of its own, waited
for at most 3 s (a large file's unlink takes seconds, a hung mount forever); ``abort``,
synchronous, ends a refresh that made no temp file. Blocking file work runs in worker
threads that are not abandoned on cancellation: a descriptor is never closed while a thread
still uses it (the writes and the check use duplicates of their own).

A refresh also exposes its progress to readers of the growing temp file (shared in-flight
downloads, :func:`tracker.proxy.refreshing.join`): ``written`` bytes so far of ``size``,
:meth:`Refresh.wait_progress` to sleep until that changes, and how it ended (``ended`` is set
by ``abort``, which ends every refresh; ``verified`` tells that every byte arrived and was
checked, promoted or not).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import stat
import time
from collections.abc import Callable, Collection, Sequence
from functools import partial
from typing import TypeVar

import attrs
import trio

from tracker.cache.checked import CheckedFiles
from tracker.cache.disk import (
    TEMP_PREFIX,
    DiskOps,
    OrphanedArchive,
    is_archive_entry,
    report_orphaned,
    scan,
    unlink,
)
from tracker.cache.refresh import Refresh
from tracker.core.cachedirs import is_group_name, unusable_directory
from tracker.core.digests import Digests, Verified
from tracker.core.snapshots import ArchiveName, parse_archive_name
from tracker.errors import RequestError
from tracker.observability.folding import log_folded
from tracker.observability.logs import log_event
from tracker.observability.redact import redact_text
from tracker.ordering.index import Index
from tracker.proof.accounts.budget import CACHE_TEMP, AccountsLimits, clean_leftovers
from tracker.proof.cluster.lifting import KEEP_EVERY, keep_levels
from tracker.proof.levels import STRUCTURE_ONLY, Level, Proof, Voters
from tracker.proof.records.localcopies import FileIdentity, identity_of
from tracker.serving.threads import HUNG_AFTER, Background, given_way, hung_reason, started_at

__all__ = ["TEMP_PREFIX", "Cache", "CachedFile", "RefreshProgress"]

T = TypeVar("T")

log = logging.getLogger("tracker.cache")

#: The lock file of a cache directory: one tracker uses the directory at a time
#: (docs/configuration.md, ``proxy_snapshot_cache_dir``).
LOCK_FILE = ".lock"

# A group name as the config allows it, minus names starting with a dot ("." and ".." match
# [A-Za-z0-9_.-]+ and would leave the cache directory; dot files are our temp files).


@attrs.frozen
class CachedFile:
    """An archive the cache holds complete: its group, name, bytes, mtime (Unix time: the
    source's ``Last-Modified`` when it gave one, never later than the copy's promotion) and
    when the cache took it (its ctime: set by the promotion's rename, kept across restarts;
    the cache changes nothing of its inode after)."""

    group: str
    name: str
    size: int
    mtime: float
    cached_at: float = 0.0


@attrs.frozen
class CacheContents:
    """What a cache held when it was listed (:meth:`Cache.measure`)."""

    #: Bytes of its archives (None: a file vanished under the scan).
    total: int | None
    files: list[CachedFile]


@attrs.frozen
class RefreshProgress:
    """A refresh in flight, as the status page shows it.

    ``size`` is 0 until the refresh is open (the upstream answered); ``started_at`` is Unix
    time, shown only; ``elapsed`` the seconds since it began on the monotonic clock, which
    its rates are computed over (a step of the wall clock does not change them);
    ``readers``: clients reading its temp file (:func:`tracker.proxy.refreshing.join`), None
    for a refresh not shared (:meth:`Refresh.share`).
    """

    group: str
    name: str
    size: int
    written: int
    started_at: float
    readers: int | None = None
    #: Each source of a refresh from several at once: its URL (redacted) and the bytes it
    #: gave so far, the first source first (empty: one source).
    sources: tuple[tuple[str, int], ...] = ()
    #: How the refresh uses each of them ("" gives pieces; else dropped, left out or one
    #: stream, and why: :attr:`tracker.multisource.sources.Source.state`).
    notes: tuple[str, ...] = ()
    #: Every byte is written and the check's first read passed; the accounts level's second
    #: read runs: its readers get the end, and it is cached, once that passed
    #: (docs/architecture.md, "The release rule").
    proving: bool = False
    #: Seconds since the refresh began on the monotonic clock, when this was taken.
    elapsed: float = attrs.field(default=0.0, kw_only=True)


class Cache:
    """Archives on disk under ``root``, one refresher per file.

    ``ops`` (:class:`~tracker.cache.disk.DiskOps`) are the disk operations and limits of its
    refreshes: ``free_space``, ``write``, ``splice`` (upstream socket into the temp file) and
    ``sync`` (the temp file's fsync) are injectable (tests simulate a full disk or a slow one
    with them); ``min_free`` bytes are kept free on top of a refresh's announced length;
    ``writeback_every`` dirty bytes start the kernel's writeback of a refresh's temp file.
    ``on_size(total)`` is called with the bytes of archives cached after every change.

    With ``verify`` (:meth:`verify_with`; the service sets it from ``verify_archives``, on
    by default) every archive is checked before it is promoted (:meth:`Refresh.verify`),
    and a cached file is a hit only while its digest is known: restored at start-up from
    the ``.{name}.sha256`` file beside it when that still describes it
    (:func:`~tracker.cache.checked.digest_matches`), else checked again first
    (:meth:`recheck`; :class:`~tracker.cache.checked.CheckedFiles` keeps them).
    ``digests`` is told every digest known and every one gone; ``on_rejected(group, name,
    reason)`` every cached file that failed its check again and was removed.
    """

    def __init__(
        self,
        root: str,
        *,
        ops: DiskOps | None = None,
        on_size: Callable[[int], None] | None = None,
    ) -> None:
        if not os.path.isabs(root):
            raise ValueError(f"cache root must be absolute: {root!r}")
        self.root = os.path.realpath(root)
        #: What every refresh of this cache writes with, and the limits it keeps.
        self.ops = ops if ops is not None else DiskOps()
        self._on_size = on_size
        self._refreshing: dict[tuple[str, str], Refresh] = {}
        #: The temp files of refreshes in flight in the process's other caches (set by the
        #: streamer): never removed as leftovers by :meth:`startup_cleanup`.
        self.in_flight_elsewhere: Callable[[], frozenset[str]] = frozenset
        #: Which cached files passed their check (``verify``), with their digests.
        self.checked = CheckedFiles()
        #: The slots of a group's fulls still served: the newest incremental on each stays
        #: when others are evicted (:func:`~tracker.cache.disk.evict`).
        self.served: Callable[[str], Collection[int]] = _none_served
        #: Told every archive held complete after every change (the index lists them).
        self.on_files: Callable[[list[CachedFile]], None] | None = None
        #: The names of the configured groups: the archives of a directory none of them
        #: names are orphaned (named in the log, removed for a refresh short of room:
        #: docs/proxy.md, "Orphaned archives"). None: not known, nothing is orphaned.
        self.groups: Callable[[], Collection[str]] | None = None
        #: The groups the orphaned directories were last named for (:meth:`report_orphaned`).
        self._orphans_reported: frozenset[str] | None = None
        #: Per group: why its last refresh streamed uncached (too little room on the disk);
        #: gone once a refresh of it found room.
        self.uncached: dict[str, str] = {}
        #: Set when a listing gave up (a hung directory): what the cache holds is told
        #: again once it answers (:meth:`_told_again`).
        self._untold = trio.Event()
        #: The listings begun (a ticket each, :meth:`listing_begun`) and the newest one told:
        #: listings run in threads and may answer out of order, and an older one told over a
        #: newer would list an evicted file, not the promoted one, until the next change.
        self._listings_begun = 0
        self._listing_told = 0
        #: Why the directory cannot be used now ("" while it can): set at start-up and by
        #: :meth:`check_directory`, shown instead of "empty".
        self.problem = ""
        self._lock_fd: int | None = None
        #: Why this tracker may not use the directory at all: another one holds its lock
        #: (:meth:`startup_cleanup`); "" once this process holds it.
        self.in_use = ""

    # -- names and lookups ---------------------------------------------------------------

    def group_dir(self, group: str) -> str:
        """``{root}/{group}`` for a valid group name; RequestError(400) otherwise."""
        return self._inside(self._group_joined(group))

    def _group_joined(self, group: str) -> str:
        """``{root}/{group}`` with no look at the disk; RequestError(400) for a name that
        cannot be a group's."""
        if not is_group_name(group):
            raise RequestError(400, "malformed group name")
        return os.path.join(self.root, group)

    def path_for(self, group: str, archive: ArchiveName) -> str:
        """The cache path of ``archive`` of ``group`` (a name parsed once, where it came
        in), validated.

        Raises RequestError: 400 for a malformed group; 400 if the path passes a symlink
        (one planted in the cache directory: leading out of it or elsewhere inside it).
        """
        return self._inside(os.path.join(self.group_dir(group), archive.file_name))

    def _path_named(self, group: str, name: str) -> str:
        """:meth:`path_for` of a name as text (from the disk, a refresh's record): 404 for
        one that is not a canonical archive name."""
        return self.path_for(group, _canonical(name))

    def _joined(self, group: str, name: str) -> str:
        """``{root}/{group}/{name}`` for a valid group and a canonical archive name, with no
        look at the disk (pure: a refresh begins on the event loop, and its real path was a
        stat of each part there, frozen by a hung mount); a link on the way is refused
        where its temp file is made, in its thread (:func:`~tracker.cache.disk.open_temp`).
        RequestError as :meth:`_path_named`."""
        return os.path.join(self._group_joined(group), _canonical(name).file_name)

    def _inside(self, path: str) -> str:
        real = os.path.realpath(path)
        if os.path.commonpath([self.root, real]) != self.root or real == self.root:
            raise RequestError(400, "path outside the cache directory")
        if real != os.path.normpath(path):
            # A symlink inside the cache (an archive's name, a group's directory) would have
            # the cache read, write, rename and evict where it points: an older archive served
            # for a newer name, another group's archives replaced and evicted.
            raise RequestError(400, "a symlink in the cache directory")
        return real

    def lookup(self, group: str, name: str) -> str | None:
        """The path of archive ``name`` of ``group`` when it is cached, else None.

        Validates like :meth:`path_for` (and raises the same RequestError).
        """
        path = self._path_named(group, name)
        return path if self._regular(path) and self.servable(group, name) else None

    def _regular_named(self, group: str, name: str) -> bool:
        """Whether a regular file is under ``name`` of ``group`` (blocking)."""
        return self._regular(self._path_named(group, name))

    @staticmethod
    def _regular(path: str) -> bool:
        try:
            return stat.S_ISREG(os.lstat(path).st_mode)
        except OSError:
            return False

    def verify_with(
        self,
        verify: bool,
        digests: Digests,
        on_rejected: Callable[[str, str, str], None] | None = None,
        required: Callable[[str], Level] | None = None,
        prove_accounts: AccountsLimits | None = None,
        voter: Voters | None = None,
        loadable_by: Callable[[str], str | None] | None = None,
    ) -> None:
        """Set how archives are checked (see the class doc; ``required(group)``: the level
        an archive of ``group`` must be proven to, its ``trust.require``; ``prove_accounts``:
        the limits of a full's ``accounts`` proof, None for none; ``voter``: the cluster's
        votes, :mod:`tracker.proof.cluster.lifting`; ``loadable_by(group)``: its
        ``trust.loadable_by``); before :meth:`startup_cleanup`."""
        self.checked = CheckedFiles(
            verify, digests, on_rejected, required, prove_accounts, voter, loadable_by
        )
        self.checked.configured = self._configured

    @property
    def verify(self) -> bool:
        """True when archives are checked before they are promoted or served."""
        return self.checked.verify

    def servable(self, group: str, name: str) -> bool:
        """True unless archives are verified and ``name``'s cached copy is not (yet)."""
        return self.checked.servable(group, name)

    def digest(self, group: str, name: str) -> str | None:
        """The hex SHA-256 of the cached copy of ``name``, when it passed its check."""
        return self.checked.digest(group, name)

    def held_checked(self, group: str, name: str) -> bool:
        """Whether the cached copy of ``name`` is told to the index as held (listed):
        unless archives are verified, once its check passed (before, a full's slot counts
        as served only: :func:`hold_cached`). A
        copy start-up found without a digest that still describes it is served only once
        its recheck passed, and removed if it fails: listed before, it named the tracker as
        the source of a file its GET did not serve."""
        return not self.verify or self.digest(group, name) is not None

    def opened(self, group: str, name: str, st: os.stat_result) -> str | None:
        """The digest of the cached copy of ``name`` opened to be served as ``st``
        (:meth:`CheckedFiles.opened`: RequestError when it is not the copy checked)."""
        return self.checked.opened(group, name, st)

    async def confirm(self, group: str, name: str) -> None:
        """Forget the digest of the cached copy of ``name`` when the file under its name is
        no longer that copy (:meth:`CheckedFiles.confirm`), before its digest is told.

        Raises RequestError(503) when the cache directory hangs (:meth:`in_directory`)."""
        await self.checked.confirm(
            group, name, partial(self.in_directory, partial(self._identity_named, group, name))
        )

    def _identity_named(self, group: str, name: str) -> FileIdentity | None:
        """The identity of the file under ``name`` of ``group`` (blocking); None when there
        is none, or it may not be read (:meth:`path_for`)."""
        try:
            return identity_of(os.stat(self._path_named(group, name), follow_symlinks=False))
        except (OSError, RequestError):
            return None

    def _identities_named(self, group: str, names: list[str]) -> dict[str, FileIdentity | None]:
        """:meth:`_identity_named` of each of ``names`` of ``group`` (blocking), leaving out
        those that may not be read (:meth:`path_for` refuses them)."""
        found: dict[str, FileIdentity | None] = {}
        for name in names:
            try:
                path = self._path_named(group, name)
            except RequestError:
                continue
            try:
                found[name] = identity_of(os.stat(path, follow_symlinks=False))
            except OSError:
                found[name] = None
        return found

    async def in_directory(self, call: Callable[[], T]) -> T:
        """``call()``, blocking on the cache directory (a real path, a stat), in a thread
        of its own, never on the event loop nor in one of trio's shared threads
        (docs/configuration.md, "Paths on a hung mount"); given up after
        :data:`~tracker.serving.threads.HUNG_AFTER` seconds, and at once while an earlier
        call there still hangs: RequestError(503) then, naming the directory."""
        try:
            with trio.fail_after(HUNG_AFTER):
                return await given_way(call, name="cache directory", place=self.root)
        except (TimeoutError, trio.TooSlowError) as exc:  # no thread to be had included
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else "no answer"
            reason = f"cannot read the cache directory {self.root}: {why} (a hung mount?)"
            raise RequestError(503, reason) from exc

    async def promoting(self, call: Callable[[], T]) -> T:
        """``call()``, a promotion's rename and evictions under its group's lock, in a thread
        of its own counted as a call in the cache directory (as :meth:`in_directory`'s): one
        that hangs there past :data:`~tracker.serving.threads.HUNG_AFTER` makes the directory
        hung for the hits, the looks and the refreshes waiting for the group's lock
        (:meth:`hung`). Started even while the directory counts as hung (it may answer a
        rename as a listing hangs), and waited for to its end, cancelled or not: what the
        rename did is told to the registry. TimeoutError (an OSError: the promotion fails)
        with no thread to be had."""
        with trio.CancelScope(shield=True):
            done = await given_way(call, name="cache promotion", place=self.root, must_run=True)
        return done

    def making_room(self, call: Callable[[], T], bound: float) -> Background[T]:
        """``call()``, a refresh's room (evictions, orphans' removal) and its temp file,
        started in a thread of its own counted as a call in the cache directory: once it has
        run ``bound`` seconds (an old full's unlink takes seconds: longer than a look's) the
        directory counts as hung (:meth:`hung`). RequestError(503) when no thread is started:
        the directory hangs already, or no thread can be had."""
        try:
            return started_at(call, name="cache refresh open", place=self.root, hung_after=bound)
        except TimeoutError as exc:
            why = exc.strerror or "no answer"
            raise RequestError(503, f"cannot write the cache directory {self.root}: {why}") from exc

    def hung(self) -> str | None:
        """Why the cache directory counts as hung now (a call there has not answered for its
        bound: :func:`~tracker.serving.threads.hung_reason`); None when it does not."""
        why = hung_reason(self.root, trio.current_time())
        return None if why is None else f"cannot read the cache directory {self.root}: {why}"

    async def identities(self, group: str, names: list[str]) -> dict[str, FileIdentity | None]:
        """:meth:`_identities_named`, looked at in the cache directory's thread
        (:meth:`in_directory`): whether each held copy is still the file under its name."""
        return await self.in_directory(partial(self._identities_named, group, names))

    async def located(self, group: str, name: str) -> str:
        """:meth:`path_for` of ``name`` of ``group`` as text, looked at in the cache
        directory's thread (:meth:`in_directory`): what the cache's upkeep opens."""
        return await self.in_directory(partial(self._path_named, group, name))

    async def has_copy(self, group: str, name: str) -> bool:
        """Whether ``name`` of ``group`` is cached and may be served (:meth:`lookup`, its
        look in the directory's thread). RequestError as :meth:`lookup`, and 503 when the
        directory hangs."""
        held = await self.in_directory(partial(self._regular_named, group, name))
        return held and self.servable(group, name)

    def promoted(
        self,
        group: str,
        name: str,
        sha256: str,
        evicted: list[str],
        proof: Proof = STRUCTURE_ONLY,
        placed: os.stat_result | None = None,
    ) -> None:
        """A refresh of ``name`` was promoted (and evicted ``evicted``): digests follow,
        with what its check proved; ``placed``: the file's status after the rename (read
        in the promotion's thread), None when it could not be read."""
        identity = None
        # The check ended as the last byte was written, just before this rename.
        checked = Verified(sha256, proof, checked_at=time.time()) if sha256 else None
        if checked is not None and placed is not None:
            # After the rename (which moves the file's ctime): the identity a hit's opened
            # file must have (CheckedFiles.opened).
            identity = identity_of(placed)
            checked = attrs.evolve(checked, size=placed.st_size)
        self.checked.promoted(group, name, checked, identity, evicted)

    async def recheck(self) -> None:
        """Check the cached files start-up found without a digest that still describes them
        (:meth:`CheckedFiles.recheck`), then keep every cached copy at its group's level:
        checked again after a reload raised it, lifted by the cluster's votes
        (:func:`tracker.proof.cluster.lifting.keep_levels`), and tell what it holds again
        once a listing that gave up can be done (:meth:`_told_again`). Runs until
        cancelled."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._told_again)
            await keep_levels(self.checked, self.located, self.identities, self.report_size)

    async def wait_promotion(self, group: str, name: str, longest: float) -> None:
        """Wait (at most ``longest`` seconds) while a refresh of ``name`` of ``group`` has all
        its bytes and is being synced and renamed into place.

        Its clients got their last byte before that, so a request right after one of them
        waits here and is then a cache hit, instead of starting a second upstream transfer.
        """
        refresh = self._refreshing.get((group, name))
        if refresh is not None and refresh.verified:
            with trio.move_on_after(longest):
                await refresh.ended.wait()

    def temp_files(self) -> list[str]:
        """The temp files of this cache's refreshes in flight."""
        return [r.temp for r in self._refreshing.values() if r.temp]

    def is_refreshing(self, group: str, name: str) -> bool:
        """True while a refresh of ``name`` of ``group`` is running."""
        return (group, name) in self._refreshing

    def running(self, group: str, name: str, *, any_refresh: bool = False) -> Refresh | None:
        """The refresh of ``name`` of ``group`` that requests of the file join (one
        :meth:`Refresh.share` registered), or with ``any_refresh`` whichever runs, its own
        starter's only included; None when none runs. The one registry of refreshes: a
        refresh is here from :meth:`begin_refresh` to its end (docs/architecture.md, "One
        refresh, one owner")."""
        refresh = self._refreshing.get((group, name))
        if refresh is None or refresh.ended.is_set() or refresh.stop is None:
            return None  # none, or one no client may read
        return refresh if any_refresh or refresh.registered else None

    def refreshes(self) -> list[RefreshProgress]:
        """Every refresh running now, by group and name (read-only; no file system access)."""
        return [
            RefreshProgress(
                r.group,
                r.name,
                r.size,
                r.written,
                r.started_at,
                readers=r.readers if r.stop is not None else None,
                sources=tuple((redact_text(s.url), s.sent) for s in r.piece_sources),
                notes=tuple(redact_text(s.state) for s in r.piece_sources),
                proving=r.proving and not r.verified,
                elapsed=r.elapsed(),
            )
            for _key, r in sorted(self._refreshing.items())
        ]

    def check_directory(self) -> str:
        """Check that the directory can still be used (blocking: call it in a worker
        thread); :attr:`problem` says why not ("" when it can)."""
        self.problem = self._directory_problem()
        return self.problem

    async def look_at_directory(self) -> None:
        """Why the directory cannot be used, looked at in its thread (:meth:`in_directory`)
        when a refresh could not create its temp file: shown as :attr:`problem`; one that
        does not answer is the problem shown."""
        try:
            self.problem = await self.in_directory(self._directory_problem)
        except RequestError as exc:
            self.problem = exc.reason

    def _directory_problem(self) -> str:
        """Why the directory cannot be used ("" when it can; blocking: in its thread)."""
        return self.in_use or unusable_directory(self.root)

    def _hold(self) -> str:
        """Take the directory's lock (:data:`LOCK_FILE`), held until the process ends; why
        another tracker has it ("" when this process holds it now).

        Two trackers in one directory delete each other's temp files at start and rename
        their own copies over the other's, served under the other's digest. A POSIX record
        lock (``lockf``), not ``flock``: it is the process's, so a second cache of this
        process in the directory (one a reload made) shares it, and it works on NFS. A lock
        file that cannot be made (a read-only directory) is no conflict: the directory's own
        problem shows (:meth:`check_directory`).
        """
        path = os.path.join(self.root, LOCK_FILE)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        except OSError:
            return ""
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)  # this process holds no lock on it: closing drops nothing
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                return f"another tracker uses this cache directory (it holds {path})"
            return ""
        self._lock_fd = fd  # kept open: closing any descriptor of the file would drop it
        return ""

    def files(self) -> list[CachedFile]:
        """Every archive held complete, by group and name (temp files excluded).

        Blocking (it lists the directories): call it in a worker thread. A file or group
        vanishing under the scan is left out.
        """
        found: list[CachedFile] = []
        for group in scan(self.root):
            if not group.is_dir(follow_symlinks=False):
                continue
            for entry in scan(group.path):
                if not is_archive_entry(entry):
                    continue
                with contextlib.suppress(OSError):
                    st = entry.stat(follow_symlinks=False)
                    found.append(
                        CachedFile(group.name, entry.name, st.st_size, st.st_mtime, st.st_ctime)
                    )
        return sorted(found, key=lambda f: (f.group, f.name))

    # -- start-up and accounting ---------------------------------------------------------

    def startup_cleanup(self) -> int:
        """Create the root if missing and remove leftover temp files; return how many.

        Called once before the cache is used (nothing else writes then). Errors are logged,
        not raised: a cache that cannot be cleaned still serves what it holds. Blocking: the
        service opens a cache in a worker thread (:meth:`open_blocking`).
        """
        removed = self._clean_at_start()
        if removed is None:
            return 0
        self.tell(self.measure())
        return removed

    def open_blocking(self) -> CacheContents | None:
        """:meth:`startup_cleanup`, then what the cache holds, not told to anyone: blocking,
        run in a worker thread (a directory on a hung mount never holds the event loop), its
        contents told from there (:meth:`tell`). None when nothing of it may be told (it is
        unusable, or another tracker's)."""
        return None if self._clean_at_start() is None else self.measure()

    def _clean_at_start(self) -> int | None:
        """:meth:`startup_cleanup`'s work: the temp files removed, None when the directory
        could not be listed or another tracker holds it."""
        try:
            os.makedirs(self.root, exist_ok=True)
            groups = [
                e
                for e in os.scandir(self.root)
                if e.is_dir(follow_symlinks=False) and not e.name.startswith(".")
            ]
        except OSError as exc:
            self.problem = f"{exc.strerror}: {self.root!r}"
            log_event(log, "error", "cache_unusable", root=self.root, error=exc)
            return None
        self.in_use = self._hold()
        if self.in_use:  # nothing of it is touched: its files are another tracker's
            self.problem = self.in_use
            log_event(log, "error", "cache_in_use", root=self.root, error=self.in_use)
            return None
        if self.check_directory():
            log_event(log, "error", "cache_unusable", root=self.root, error=self.problem)
        # the accounts proofs' spilled files left by a tracker killed in the middle
        # (docs/architecture.md, "Bounded memory"); a dot directory, never a group's, and
        # never a link: the proofs would write, and clean up, where it points
        spill = os.path.join(self.root, CACHE_TEMP)
        if os.path.islink(spill) and unlink(spill):
            log_event(log, "warning", "cache_link_removed", path=spill)
        removed = clean_leftovers(spill)
        live = self.in_flight_elsewhere()  # another cache's, nested in or holding this one
        # the root's own files written atomically (the learned state) by a tracker killed
        # between the temp file's write and its rename
        for entry in scan(self.root):
            if entry.name.startswith(TEMP_PREFIX) and entry.path not in live:
                removed += unlink(entry.path)
        for group in groups:
            entries = scan(group.path)
            for entry in entries:
                if entry.name.startswith(TEMP_PREFIX) and entry.path not in live:
                    removed += unlink(entry.path)
            self.checked.restore(group.path, group.name, entries)
        if removed:
            log_event(log, "info", "cache_temp_removed", root=self.root, count=removed)
        self.report_orphaned()
        return removed

    def report_orphaned(self) -> None:
        """Name in the log each directory holding archives that no configured group names
        (:func:`~tracker.cache.disk.report_orphaned`: one ``cache_orphaned`` warning each),
        at start-up and after a reload that changed the groups (the same groups again: once).
        Blocking: after start-up, call it in a worker thread. Nothing while another tracker
        holds the directory (its files are not this one's) or the groups are not known."""
        if self.groups is None or self.in_use:
            return
        groups = frozenset(self.groups())
        if groups == self._orphans_reported:
            return
        self._orphans_reported = groups
        report_orphaned(self.root, groups)

    def orphans_and_files(self) -> list[CachedFile]:
        """:meth:`report_orphaned`, then :meth:`files` (blocking: in a worker thread)."""
        self.report_orphaned()
        return self.files()

    def total_size(self) -> int:
        """Bytes of archives in the cache (temp files excluded)."""
        total = 0
        for group in scan(self.root):
            if group.is_dir(follow_symlinks=False):
                for entry in scan(group.path):
                    if is_archive_entry(entry):
                        total += entry.stat(follow_symlinks=False).st_size
        return total

    async def report_size(self) -> None:
        """Tell ``on_size`` the bytes of archives cached now, and ``on_files`` the archives
        (after a change), listed in the cache directory's thread (:meth:`in_directory`):
        while the directory does not answer, nothing is told (the last told stays)."""
        begun = self.listing_begun()
        try:
            contents = await self.in_directory(self.measure)
        except RequestError as exc:
            log_folded(log, "warning", "cache_unreadable", root=self.root, reason=exc.reason)
            self._untold.set()  # told once it answers (:meth:`_told_again`)
            return
        self.tell(contents, begun)

    async def _told_again(self) -> None:
        """Once a listing gave up (the directory did not answer), list it again every
        :data:`~tracker.proof.cluster.lifting.KEEP_EVERY` seconds until one is told: the
        index lists what the cache holds once the mount answers, not at the next change."""
        while True:
            await self._untold.wait()
            await trio.sleep(KEEP_EVERY)
            self._untold = trio.Event()
            await self.report_size()

    def measure(self) -> CacheContents:
        """What the cache holds now, as much as anyone is told of it (blocking: it lists the
        directories)."""
        # A file vanishing under the scan raises OSError; the next change reports again.
        total: int | None = None
        if self._on_size is not None:
            with contextlib.suppress(OSError):
                total = self.total_size()
        return CacheContents(total, self.files() if self.on_files is not None else [])

    def listing_begun(self) -> int:
        """The ticket of a listing begun now (in trio's thread, before its thread starts),
        for :meth:`tell`."""
        self._listings_begun += 1
        return self._listings_begun

    def tell(self, contents: CacheContents, begun: int | None = None) -> None:
        """Tell ``on_size`` and ``on_files`` what :meth:`measure` found, by the listing
        whose ticket is ``begun`` (None: listed just now, blocking); nothing when a listing
        begun later was told already (listings in threads answer out of order)."""
        if begun is None:
            begun = self.listing_begun()
        if begun < self._listing_told:
            return
        self._listing_told = begun
        if self._on_size is not None and contents.total is not None:
            self._on_size(contents.total)
        if self.on_files is not None:
            self.on_files(contents.files)

    # -- refreshes -----------------------------------------------------------------------

    def begin_refresh(self, group: str, name: str) -> Refresh | None:
        """Register the single refresher of ``name`` of ``group``; None if one is running.

        Synchronous, so a lookup followed by this call cannot race another request. The
        returned :class:`Refresh` must end with ``commit()`` or ``abort()``.
        """
        key = (group, name)
        # One that ended (its readers told) stays until its temp file is removed (at most
        # HUNG_AFTER seconds): a new one would measure its room with those bytes still on
        # the disk, and evict for them.
        if key in self._refreshing:
            return None
        path = self._joined(group, name)
        checking = self.checked.checking(group)
        refresh = Refresh(self, self.ops, group, name, path, checking=checking)
        self._refreshing[key] = refresh
        return refresh

    def changing(self, group: str) -> trio.Semaphore:
        """The lock that runs ``group``'s changes one at a time
        (:meth:`CheckedFiles.changing`)."""
        return self.checked.changing(group)

    def evicted(self, group: str, names: Sequence[str]) -> None:
        """``names`` of ``group`` were evicted to make room for a refresh: their digests
        go (the sizes and files are told by the refresh's :meth:`report_size`)."""
        for name in names:
            self.checked.removed(group, name)

    def release(self, refresh: Refresh) -> None:
        """``refresh`` ended (:meth:`Refresh.abort`): the file may be refreshed again."""
        key = (refresh.group, refresh.name)
        if self._refreshing.get(key) is refresh:
            del self._refreshing[key]

    def room(self, group: str, reason: str) -> None:
        """A refresh of ``group`` found room (``reason`` ""), or why not (kept for the
        status page and ``/v1/targets``)."""
        if reason:
            self.uncached[group] = reason
        else:
            self.uncached.pop(group, None)
            if not self.in_use:  # its temp file was made: the directory can be used
                self.problem = ""

    def _configured(self, group: str) -> bool:
        """Whether ``group`` is configured (True while the groups are not known)."""
        return self.groups is None or group in self.groups()

    def configured_groups(self) -> Collection[str] | None:
        """The names of the configured groups (:attr:`groups`); None: not known."""
        return frozenset(self.groups()) if self.groups is not None else None

    def orphans_removed(self, removed: Sequence[OrphanedArchive]) -> None:
        """``removed`` (orphaned archives) were removed to make room for a refresh: their
        digests go (the sizes and files are told by the refresh's :meth:`report_size`)."""
        for orphan in removed:
            self.checked.removed(orphan.group, orphan.name)

    def reserved_besides(self, refresh: Refresh) -> int:
        """Bytes other running refreshes will still write (not yet taken from the disk)."""
        return sum(
            r.remaining
            for r in self._refreshing.values()
            if r is not refresh and not r.ended.is_set()
        )


def _canonical(name: str) -> ArchiveName:
    """``name`` parsed, when it is an archive's canonical name; RequestError(404) else."""
    parsed = parse_archive_name(name)
    if parsed is None or parsed.file_name != name:
        raise RequestError(404, "not a snapshot archive name")
    return parsed


def _none_served(_group: str) -> Collection[int]:
    return ()


def hold_cached(
    index: Index, files: Sequence[CachedFile], rechecking: Sequence[CachedFile] = ()
) -> None:
    """The disk cache now holds ``files``: the index lists those no source has any more
    (:class:`tracker.ordering.index.Holdings`); and ``rechecking``, copies whose check has
    not passed yet: not listed, their fulls still served."""
    groups = {f.group for f in [*files, *rechecking]} | set(index.holdings.groups())
    for group in groups:
        held = [(f.name, f.size, f.mtime) for f in files if f.group == group]
        index.hold("cache", group, held, [f.name for f in rechecking if f.group == group])
