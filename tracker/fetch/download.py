"""One archive into the ledger: parallel ``Range`` requests over the sources that hold it.

:func:`download` inspects the best ``max_sources`` candidate URLs, ``checks_at_once`` at a
time (a ``GET`` of byte 0, redirects followed: size, validators, whether ranges work), keeps
those of the archive's size (the listed one, else the one most of them announce), takes the
first as the reference and pools every other one that has the same bytes in a sample of
ranges: archives of one slot and hash made by different nodes differ, so bytes of two of
them are never mixed; and only when what checks the copy vouches for every byte of it
(:func:`~tracker.fetch.vouching.mixing_problem`; otherwise the reference alone; for an
``accounts`` proof, the bytes it does not bind made the reference's before the rename:
:mod:`tracker.fetch.unbound`).
``connections`` workers then claim pieces (:mod:`tracker.multisource.claims`), each from a
live source of the pool, and ``pwrite`` them into ``{ledger}/.tmp-{name}``; a source that
fails three times in a row, or is slower than ``min_speed`` while another is left, is
dropped and its pieces go back to the pool. A state file (:mod:`tracker.fetch.state`) is
saved every ``state_every`` seconds, after the bytes it claims are synced, so a killed fetch
resumes. A complete file is synced, checked (:mod:`tracker.proof.archive.archivecheck`, its
SHA-256 against the tracker's and, with ``--trust-key``, against the trusted keys' signed
statements: :mod:`tracker.fetch.vouching`), renamed into place and given the source's
``Last-Modified`` as its mtime. When every source of the pool failed, or its copy failed the
check (deleted), the next candidate that is not in the pool is tried from the start.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections import Counter
from collections.abc import Iterator
from email.utils import parsedate_to_datetime
from functools import partial

import attrs
import httpx
import trio

from tracker.core.digests import Verified, below_required, covers
from tracker.core.smallfiles import fsync_dir
from tracker.errors import ArchiveInvalid, CopyRejected, FetchError, SourceFailed, sole_leaf
from tracker.fetch.listing import RemoteFile
from tracker.fetch.progress import Progress
from tracker.fetch.settings import FetchSettings
from tracker.fetch.sourcechecks import inspect_all, same_bytes
from tracker.fetch.space import (
    FreeBytes,
    block_size,
    free_bytes,
    no_room_reason,
    not_on_disk,
    preallocate,
    room_needed,
    same_file_system,
)
from tracker.fetch.state import (
    State,
    load_state,
    one_source_reason,
    remove_state,
    restart_reason,
    state_path,
    temp_path,
)
from tracker.fetch.unbound import confirmed, unbound_plan
from tracker.fetch.vouching import mixing_problem, vouched_for
from tracker.fetch.workers import FetchCrew, StateSaver, watch_speed, worker
from tracker.multisource.claims import Pieces
from tracker.multisource.sources import Source
from tracker.observability.logs import log_event
from tracker.proof.accounts.budget import AccountsLimits
from tracker.proof.archive.archivecheck import FollowingCheck
from tracker.proof.cluster.lifting import lifted
from tracker.proof.levels import Proof, not_loadable

log = logging.getLogger("tracker.fetch")


@attrs.frozen
class Result:
    """A completed download."""

    path: str
    size: int
    seconds: float
    sources: tuple[Source, ...]
    #: Claims of slow connections whose back half an idle one took over.
    steals: int = 0
    #: The archive's SHA-256 (lower-case hex) when it was verified, else "".
    sha256: str = ""
    #: What its check proved (None: not verified).
    proof: Proof | None = None
    #: The trusted keys whose signed statements vouched for it (``--trust-key``), sorted.
    vouched_by: tuple[str, ...] = ()


async def download(
    client: httpx.AsyncClient,
    file: RemoteFile,
    ledger: str,
    settings: FetchSettings,
    progress: Progress,
    *,
    free: FreeBytes = free_bytes,
) -> Result:
    """Download archive ``file`` from its URLs (best first) into ``ledger``.

    Its ``size`` (0: unknown) is what the listing said; a source announcing another size is
    not used. With ``settings.verify``, the complete copy is checked and its SHA-256 must be
    one of the file's ``sha256`` when that lists any; a copy that fails is deleted and the
    sources not yet tried are asked for a fresh one. Raises :class:`FetchError` with a
    one-line reason (no space, every source failed, no good copy); the temp file and state
    stay for a later resume unless there is no room or the copy was bad. ``free`` tells the
    free bytes of the ledger's file system.
    """
    name = file.file_name
    inspected, finals = await _inspected(client, file, settings)
    wanted = chosen_size(file.size, [s.identity.size for s in finals.values()])
    sized = [s for s in finals.values() if s.identity.size == wanted] if wanted else []
    usable = ranged_first(sized)
    if not usable:
        why = summary([str(s) for s in inspected if not isinstance(s, Source)])
        wrong = "wrong size" if wanted else "an empty file"
        raise FetchError(f"{name}: no source could deliver it ({why or wrong})")
    for other in finals.values():
        if other.identity.size != wanted:
            reason = f"size {other.identity.size}, not {wanted}"
            log_event(log, "info", "fetch_source_unused", url=other.url, reason=reason)
    reasons: list[str] = []
    tried: set[str] = set()
    rejected = False
    mixing = mixing_problem(file, settings)
    if mixing and len(usable) > 1:
        log_event(log, "info", "fetch_one_source", file=name, reason=mixing)
    for reference in usable:
        if reference.url in tried:
            continue
        _check_space(ledger, reference.identity.size, name, free)
        others = await same_bytes(client, reference, usable, settings) if not mixing else []
        pool = [reference, *others]
        tried.update(s.url for s in pool)
        # A copy of several sources that fails its check has a bad source among them, but
        # which one the check cannot tell: each is then tried alone, best first.
        for attempt in attempts(pool, usable):
            try:
                return await _download_from(client, file, attempt, ledger, settings, progress)
            except CopyRejected as exc:
                reasons.append(str(exc))
                rejected = True
            except SourceFailed as exc:
                reasons.append(str(exc))
                if attempt is pool:
                    break  # every source of the pool failed: none is tried alone
    what = "no source delivered a good copy" if rejected else "every source failed"
    raise FetchError(f"{name}: {what}: " + summary(reasons))


def ranged_first(sources: list[Source]) -> list[Source]:
    """``sources`` (best first) with those that honour ``Range`` before those that do not,
    each in its order. Pure. The first is the reference, and only a reference that takes
    ranges is pooled with others: agave's RPC answers every Range with the whole file, so
    as the first (a ``--source`` typed first, a listing's best) it was the download's one
    stream, the sources that take ranges left unused however slow it was and never dropped
    for it (no other was live). It stays a fallback, read whole when they failed."""
    return sorted(sources, key=lambda s: not s.ranges)


def attempts(pool: list[Source], ranked: list[Source]) -> Iterator[list[Source]]:
    """The pools to try in turn: ``pool``, then, once its copy was rejected, :func:`alone`'s.
    A generator, so that :func:`alone` reads what each source sent of the rejected copy
    only once it was tried."""
    yield pool
    if len(pool) > 1:
        yield from alone(pool, ranked)


def alone(pool: list[Source], ranked: list[Source]) -> list[list[Source]]:
    """After ``pool``'s copy was rejected: each of its sources as a pool of its own, fresh
    (nothing sent, not dropped), in the order of ``ranked``; when one source alone sent
    bytes of that copy, it is the bad one and is left out."""
    senders = [s for s in pool if s.sent]
    order = {id(s): index for index, s in enumerate(ranked)}
    return [
        [attrs.evolve(s, sent=0, failures=0, dropped="", dropped_at=None, scopes=set())]
        for s in sorted(pool, key=lambda s: order.get(id(s), len(order)))
        if senders != [s]
    ]


#: Reasons of sources named in one error line; the others are counted.
MAX_REASONS = 4


def summary(reasons: list[str]) -> str:
    """Reasons joined for one line, at most MAX_REASONS of them (a listing may name dozens
    of sources)."""
    shown = "; ".join(reasons[:MAX_REASONS])
    more = len(reasons) - MAX_REASONS
    return f"{shown}; and {more} more" if more > 0 else shown


async def _inspected(
    client: httpx.AsyncClient, file: RemoteFile, settings: FetchSettings
) -> tuple[list[Source | SourceFailed], dict[str, Source]]:
    """The best few of ``file``'s URLs by the listing's order, each asked for its first
    byte; and those that answered, by final URL (a redirect and the URL it leads to are one
    source)."""
    inspected = await inspect_all(
        client, list(dict.fromkeys(file.urls))[: settings.max_sources], settings
    )
    finals: dict[str, Source] = {}
    for s in inspected:
        if isinstance(s, Source):
            finals.setdefault(s.url, s)
    return inspected, finals


async def announced_size(
    client: httpx.AsyncClient, file: RemoteFile, settings: FetchSettings
) -> int:
    """The size of ``file``: the listed one, else the one most of its sources announce
    (:func:`chosen_size`; 0 when none answers). ``--source`` lists no size: the room for
    every archive planned is checked with these before the first byte."""
    if file.size:
        return file.size
    _inspected_all, finals = await _inspected(client, file, settings)
    return chosen_size(0, [s.identity.size for s in finals.values()])


def chosen_size(listed: int, offered: list[int]) -> int:
    """The size of the archive: the listed one when known (0: not), else the one most
    sources announce (``offered``, best source first; a tie goes to the better source), so
    that one source's error page or JSON answer is never taken for the archive, nor an
    empty answer (an archive is never empty). 0 when nothing is known."""
    if listed:
        return listed
    sizes = [size for size in offered if size > 0]
    votes = Counter(sizes)
    return max(sizes, key=lambda size: votes[size], default=0)


async def _download_from(
    client: httpx.AsyncClient,
    file: RemoteFile,
    pool: list[Source],
    ledger: str,
    settings: FetchSettings,
    progress: Progress,
) -> Result:
    name = file.file_name
    reference = pool[0]
    size = reference.identity.size
    saved = load_state(ledger, name)
    why = restart_reason(saved, reference.identity, reference.ranges)
    if not why and mixing_problem(file, settings):
        why = one_source_reason(saved, reference.url)  # its copy is the reference's alone
    if why:
        log_event(log, "warning", "fetch_starting_over", file=name, reason=f"{why}; starting over")
    done = list(saved.done) if saved is not None and not why else []
    writers = saved.writers if saved is not None and done else ()
    if not done:
        remove_state(ledger, name)
    # About four pieces per connection (fewer requests for a 100 GB file); stealing evens
    # out the tails, so big pieces cost nothing at the end. A source without ranges sends
    # the whole file to every request: one piece, from byte 0.
    piece_size = max(settings.piece_size, size // (4 * settings.connections) + 1)
    if not reference.ranges:
        piece_size = max(1, size)
    pieces = Pieces(size, piece_size, done)
    path = temp_path(ledger, name)
    # Never through a link planted under the temp file's name: a fresh one is created (what
    # was there is gone with the state), a resumed one is the regular file load_state saw.
    flags = os.O_WRONLY | os.O_CLOEXEC | os.O_NOFOLLOW
    fd = os.open(path, flags if done else flags | os.O_CREAT | os.O_EXCL, 0o644)
    if done and os.fstat(fd).st_nlink != 1:  # hard-linked since load_state looked at it
        os.close(fd)
        raise FetchError(f"{path} has another link; not written through: remove it and run again")
    try:
        crew = FetchCrew(client, settings, pieces, fd, progress)
        return await _fill(crew, file, pool, ledger, writers)
    except CopyRejected as exc:
        if not done:
            raise
        # The copy held bytes of an earlier run (deleted now, with its state), from sources
        # this one may not have: none of this pool can be told bad for it. A fresh copy
        # from the same sources, each as new (``alone`` blames only what it sent).
        log_event(
            log,
            "warning",
            "fetch_starting_over",
            file=name,
            reason=f"the resumed copy was rejected ({exc}); starting over",
        )
    finally:
        os.close(fd)
    fresh = [
        attrs.evolve(s, sent=0, failures=0, dropped="", dropped_at=None, scopes=set()) for s in pool
    ]
    return await _download_from(client, file, fresh, ledger, settings, progress)


async def _spill_beside(
    limits: AccountsLimits | None, ledger: str, name: str, size: int
) -> AccountsLimits | None:
    """``limits`` for the check of ``name``'s download (``size`` bytes): where the proof
    spills on the ledger's file system (``.accounts-proof`` in it, by default), each of its
    writes leaves free what the temp file does not hold on disk yet (docs/fetch.md,
    "Safely"), so the proof stops short of room, never the download. Looked at in a worker
    thread a stop does not wait for (the spill's directory is the operator's: it may be on
    a hung mount)."""
    if limits is None:
        return None
    spill = limits.temp_dir if limits.temp_dir is not None else tempfile.gettempdir()
    beside = trio.to_thread.run_sync(same_file_system, spill, ledger, abandon_on_cancel=True)
    if not await beside:
        return limits
    return attrs.evolve(limits, reserve=partial(not_on_disk, temp_path(ledger, name), size))


async def _fill(
    crew: FetchCrew, file: RemoteFile, pool: list[Source], ledger: str, writers: tuple[str, ...]
) -> Result:
    """Download the missing pieces into the crew's temp file (``writers``: the sources of
    the bytes an earlier run left there), check the copy, and rename that very file into
    place."""
    name, pieces, fd, progress = file.file_name, crew.pieces, crew.fd, crew.progress
    reference = pool[0]
    size = reference.identity.size
    started = trio.current_time()
    progress.start(name, size, pieces.done_bytes)
    # The archive check reads the file in order while the pieces come in, up to the gapless
    # prefix on disk: at the end only what came last is left to check, from the page cache.
    settings = crew.settings
    earlier = tuple(pieces.done())  # an earlier run's bytes (``writers``'), resumed
    limits = await _spill_beside(settings.prove_accounts, ledger, name, size)
    check = FollowingCheck.start(fd, name, limits) if settings.verify else None
    live = pool if reference.ranges else [reference]
    state = State(name, reference.identity, writers=writers)
    saver = StateSaver(ledger, state, pieces, fd, pool=live)
    try:
        # A new file gets its blocks now: a full disk shows before the download, not in it.
        grow = preallocate if not pieces.done_bytes else os.ftruncate
        await trio.to_thread.run_sync(grow, fd, size)
        await saver.save()
        await _move_pieces(crew, live, saver, check)
        await _last_save(saver, name)
        # A check that ended before the download failed (the copy is bad): _verify says why.
        # Every source failed with bytes missing: the bytes on disk get the check's verdict
        # first (it follows them FOLLOW_EVERY apart at its own pace, and may lag behind);
        # bytes that fail it are a rejected copy, deleted with the check's reason
        # (docs/architecture.md, "Verified archives"; fetch's --verify in docs/fetch.md), not
        # the sources' last errors and a bad copy kept to resume.
        if not pieces.complete and not await _judged(check, pieces.prefix):
            reasons = dict.fromkeys(f"{s.url}: {s.dropped or 'failed'}" for s in live)
            raise SourceFailed(summary(list(reasons)))
        if pieces.complete and (check is None or not check.done()):
            if check is not None:
                check.finish(size)
            await trio.to_thread.run_sync(os.fsync, fd)
    except BaseException as exc:
        if check is not None:
            # stopped and waited for (shielded, seconds at most), as in _verify: a check left
            # running mid-proof was cut off by the process's exit, its hashing child with it
            await check.stopped()
        # An interrupt or a local error: what is on disk is kept for a later resume.
        with trio.CancelScope(shield=True), contextlib.suppress(OSError, FetchError):
            await saver.save()
        # sources' failures never reach here as OSErrors: each costs its source
        local = sole_leaf(exc, OSError)
        if local is not None:
            # A write of the temp file failed (the disk filled under a file system without
            # fallocate, an I/O error): the kernel's words name no file; the line does.
            raise FetchError(saver.stopped(local, temp_path(ledger, name))) from exc
        raise
    finally:
        progress.finish()
    digest, proof, vouchers = "", None, tuple[str, ...]()
    if check is not None:
        resumed = Resumed(earlier, writers, saver.writers())
        digest, proof, vouchers = await _verify(crew, file, live, check, ledger, resumed)
    final = os.path.join(ledger, name)
    _rename_checked(fd, temp_path(ledger, name), final)
    remove_state(ledger, name)
    _set_mtime(final, reference.identity.last_modified)
    # The file's bytes are synced, its name is not until the directory is: exit 0 and
    # ``--keep`` removing the archives it replaces come after (docs/fetch.md, "Safely").
    await trio.to_thread.run_sync(sync_names, ledger)
    seconds = trio.current_time() - started
    return Result(final, size, seconds, tuple(live), pieces.steals, digest, proof, vouchers)


async def _judged(check: FollowingCheck | None, written: int) -> bool:
    """Whether the check of a copy its sources left short of the end, ``written`` bytes
    without a gap on disk, ended on those bytes (:meth:`FollowingCheck.fails_short_of_end`,
    also when it had ended already): failed, or could not read them (:func:`_verify` raises
    why); False when they passed as far as they go, or nothing checks them."""
    return check is not None and await check.fails_short_of_end(written)


async def _last_save(saver: StateSaver, name: str) -> None:
    """The state after the workers ended. With every byte on disk a failed save costs
    nothing: the state is deleted once the copy is checked and in place, and a run killed
    before then resumes from the last one saved, which never claims more than is on disk
    (docs/fetch.md, "Safely"); on a ledger just full enough for the archive that save met
    ENOSPC and threw the whole download away. With bytes missing it fails the fetch as
    every save does."""
    try:
        await saver.save()
    except FetchError as exc:
        cause = exc.__cause__
        if not saver.pieces.complete or not isinstance(cause, OSError):
            raise
        state = state_path(saver.ledger, name)
        if cause.filename not in (state, state + ".new"):
            raise  # the archive's own fdatasync failed: its bytes may not be on disk
        reason = f"{cause.filename}: {cause.strerror}; every byte is on disk: going on"
        log_event(log, "warning", "fetch_state_unsaved", file=name, reason=reason)


async def _move_pieces(
    crew: FetchCrew, live: list[Source], saver: StateSaver, check: FollowingCheck | None
) -> None:
    """The workers and their helpers (state saves, the following check, the speed watch)
    until every worker ended."""
    settings = crew.settings
    connections = settings.connections if live[0].ranges else 1
    async with trio.open_nursery() as nursery:
        nursery.start_soon(saver.run, settings.state_every)
        if check is not None:
            nursery.start_soon(_follow, check, crew.pieces, nursery.cancel_scope)
        if settings.min_speed and len(live) > 1:
            nursery.start_soon(watch_speed, live, settings)
        async with trio.open_nursery() as workers:
            for index in range(connections):
                workers.start_soon(worker, crew, index, live)
        nursery.cancel_scope.cancel()


def _rename_checked(fd: int, path: str, final: str) -> None:
    """Rename the temp file into place only when ``path`` still names the file of ``fd``
    (the one that was written and checked): a file put under its name meanwhile is never
    renamed into the ledger (FetchError; it is left where it is)."""
    held = os.fstat(fd)
    try:
        named = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        named = None
    if named is None or (named.st_dev, named.st_ino) != (held.st_dev, held.st_ino):
        raise FetchError(
            f"{path}: the temp file was replaced while it was downloaded and checked; "
            "refusing to put it in place (is another program writing to the ledger?)"
        )
    os.replace(path, final)


def sync_names(ledger: str) -> None:
    """Make the renames and removals in ``ledger`` durable (:func:`fsync_dir`); an OSError
    names the directory (an fsync's names no file)."""
    try:
        fsync_dir(ledger)
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, ledger) from exc


#: Seconds between two looks at how far the gapless prefix on disk reaches.
FOLLOW_EVERY = 0.05


async def _follow(check: FollowingCheck, pieces: Pieces, download: trio.CancelScope) -> None:
    """Let ``check`` read up to the gapless prefix on disk as it grows, until cancelled; when
    the check ends before the download (it failed: it passes only once told the end), the
    download is stopped: the copy is bad whatever else comes."""
    while not check.done():
        check.advance(pieces.prefix)
        await trio.sleep(FOLLOW_EVERY)
    download.cancel()


@attrs.frozen
class Resumed:
    """Whose bytes a download's temp file holds: ``earlier``, the ranges an earlier run
    left (resumed), written by ``earlier_writers``; ``writers``, those and this run's
    senders (:meth:`~tracker.fetch.workers.StateSaver.writers`)."""

    earlier: tuple[tuple[int, int], ...]
    earlier_writers: tuple[str, ...]
    writers: tuple[str, ...]


async def _verify(
    crew: FetchCrew,
    file: RemoteFile,
    pool: list[Source],
    check: FollowingCheck,
    ledger: str,
    resumed: Resumed,
) -> tuple[str, Proof, tuple[str, ...]]:
    """The SHA-256 of the complete temp file of ``file`` (``check`` followed it and was
    told its end) and what its check proved (and the votes, with ``--rpc``), when it passes
    the archive check, is proven to ``--require``, is one of the tracker's ``sha256`` (when
    that lists any) and enough trusted keys vouch for it (``--trust-key``: which did, third);
    else the temp
    file and its state are deleted and CopyRejected raised, or FetchError when the
    statements refused it (docs/http-api.md, "Signed statements"). A copy of several
    sources that only its ``accounts`` proof vouches for has the bytes that level does not
    bind made the first source's first (:mod:`tracker.fetch.unbound`)."""
    name, sha256, require = file.file_name, file.sha256, crew.settings.require
    senders = [s for s in pool if s.sent]
    # A copy of several sources' pieces: this run's, or a resumed copy's (``writers``: an
    # earlier run's sources count, its bytes are on disk as much as this run's)
    mixed = len(senders) > 1 or len(resumed.writers) > 1
    unvouched = None
    try:
        try:
            checked = await check.result()
        finally:
            # Cancelled (a signal, --download-timeout): the check is stopped and waited for
            # (seconds at most), so its accounts proof ends its hashing processes and removes
            # its files before the process exits; one left running was cut off by the exit,
            # a hung child left behind for good (docs/architecture.md, "Every core")
            await check.stopped()
        if mixed and not (sha256 or crew.settings.trust.active) and covers(name, checked.proof):
            # accounts binds the storages, not the status cache the validator loads
            # (docs/architecture.md, "Bytes no level binds")
            checked = await _unbound_confirmed(crew, name, pool, check, checked, resumed)
    except ArchiveInvalid as exc:
        reason = f"archive failed verification: {exc.reason}"
    except CopyRejected as exc:  # bytes no level binds that no source vouched for
        reason = str(exc)
    else:
        digest, proof = checked.sha256, checked.proof
        if crew.settings.voter is not None:
            # --rpc: the votes lift what the check proved to cluster (docs/architecture.md,
            # "The cluster level"); a minority or a failed RPC leaves it, with the reason.
            proof = await lifted(crew.settings.voter, name, proof)
        loadable_by = crew.settings.loadable_by  # --loadable-by: the archive's own fault
        needed = crew.settings.trust.checked_here(require)
        below = below_required(proof, needed, name, loadable_by=loadable_by)
        if below is not None and proof.local_cause and not not_loadable(proof, loadable_by):
            # this machine's shortage (temporary space, memory, the hashing process): no
            # source is at fault, and another's copy would meet the same one
            remove_state(ledger, name)
            raise FetchError(f"{name}: archive not proven here: {below}")
        if below is not None:
            reason = f"archive failed verification: {below}"
        elif sha256 and digest not in sha256:
            reason = f"sha256 {digest} is not the tracker's {' or '.join(sorted(sha256))}"
        elif mixed and not (sha256 or crew.settings.trust.active or covers(name, proof)):
            # pooled for a full's accounts proof, which stopped short: nothing vouches for
            # every byte of several sources' pieces (each source is tried alone next)
            reason = (
                f"the copy of several sources is proven to {proof.level.label}; without the "
                "tracker's sha256 or --trust-key only accounts vouches for every byte"
            )
        else:
            size = pool[0].identity.size
            unvouched, keys = await vouched_for(crew.client, file, size, digest, crew.settings)
            if unvouched is None:
                return digest, proof, keys
            reason = unvouched
    remove_state(ledger, name)
    urls = ", ".join(s.url for s in senders)
    log_event(log, "warning", "fetch_archive_rejected", file=name, sources=urls, reason=reason)
    if unvouched is not None and not mixed:
        # The statements are the tracker's of this name, not a source's fault: another
        # source's copy would be downloaded whole only to meet the same ones. A copy of
        # several sources' pieces may hold a liar's: each source is tried alone next.
        raise FetchError(f"{name}: {reason}")
    raise CopyRejected(f"{urls or name}: {reason}")


async def _unbound_confirmed(
    crew: FetchCrew,
    name: str,
    pool: list[Source],
    check: FollowingCheck,
    checked: Verified,
    resumed: Resumed,
) -> Verified:
    """What the copy passed (``checked``), its bytes no level binds that another source
    than the first wrote asked of the first again and, where they differed, written over
    and checked again (:func:`tracker.fetch.unbound.confirmed`)."""
    unbound = check.unbound.ranges
    plan = unbound_plan(unbound, pool, crew.written, resumed.earlier, resumed.earlier_writers)
    return await confirmed(
        checked,
        unbound,
        plan,
        name=name,
        pool=pool,
        ask=crew.engine.open,
        fd=crew.fd,
        read_timeout=crew.settings.read_timeout,
        prove_accounts=crew.settings.prove_accounts,
    )


def _check_space(ledger: str, size: int, name: str, free: FreeBytes) -> None:
    """FetchError when ``ledger`` has no room for an archive of ``size`` bytes, its temp
    file in whole blocks and its state file (:func:`~tracker.fetch.space.room_needed`; the
    blocks of a temp file and state of the same name count as there: they are resumed, or
    deleted)."""
    needed = room_needed([size], block_size(ledger))
    reason = no_room_reason(name, ledger, needed, held_bytes(ledger, name), free(ledger))
    if reason:
        raise FetchError(reason)


def held_bytes(ledger: str, name: str) -> int:
    """The bytes the temp file of ``name`` and its state take on disk (0: none)."""
    held = 0
    for path in (temp_path(ledger, name), state_path(ledger, name)):
        with contextlib.suppress(OSError):
            held += os.stat(path, follow_symlinks=False).st_blocks * 512
    return held


def _set_mtime(path: str, last_modified: str) -> None:
    """Date the archive, in place and complete, as its source does: a source's date that
    cannot be one (junk, an offset of many digits, a year past the file system's) or a
    file system that refuses it leaves the download's own time, never fails the fetch."""
    if not last_modified:
        return
    try:
        when = parsedate_to_datetime(last_modified).timestamp()
        os.utime(path, (when, when))
    except (TypeError, ValueError, OverflowError, OSError) as exc:
        log_event(log, "debug", "fetch_date_unused", file=path, reason=str(exc))
