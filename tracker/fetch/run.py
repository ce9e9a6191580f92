"""``snapshot-tracker fetch``: the best full (when the ledger needs it) and its incremental.

The steps: what the ledger holds (:func:`tracker.discovery.local.scan_local`), what is on
offer (the tracker's JSON or the validators' aliases, :mod:`tracker.fetch.listing`), what to
download (:mod:`tracker.fetch.plan`), the downloads (:mod:`tracker.fetch.download`): the full
first, then the newest incremental on it (asked again after the full, which takes long),
then retention (``keep``). Everything fails with a one-line :class:`FetchError`.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable
from contextlib import AsyncExitStack
from typing import Any

import attrs
import httpx
import trio

from tracker.clientwire.transport import BigReadBackend, PoolTransport
from tracker.config.schema import Ranking
from tracker.core.snapshots import SnapshotInfo
from tracker.core.text import FETCH_AGENT
from tracker.discovery.local import scan_local
from tracker.errors import FetchError, ProbeError, first_leaf, sole_leaf
from tracker.fetch.download import Result, announced_size, download, held_bytes
from tracker.fetch.ledger import (
    in_the_way,
    listed_sizes,
    no_ledger,
    passes_check,
    remove_stale,
    retain,
    suspects,
    tidy_spill,
    without,
)
from tracker.fetch.listing import (
    RemoteFile,
    RemoteSnapshot,
    default_group,
    from_sources,
    from_tracker,
)
from tracker.fetch.lock import ledger_lock
from tracker.fetch.plan import choose_incremental, held_names, plan
from tracker.fetch.progress import Progress, progress_for
from tracker.fetch.settings import FetchSettings
from tracker.fetch.space import FreeBytes, block_size, free_bytes, no_room_reason, room_needed
from tracker.net.httpclients import ClientShape, OriginCredentials, bulk_client, rpc_client
from tracker.observability.logs import log_event
from tracker.observability.redact import redact_userinfo
from tracker.ordering.predict import Download, predicted_seconds
from tracker.ordering.pricing import PairKey
from tracker.ordering.ranking import choose_pair
from tracker.proof.levels import Level, Proof, Voter

log = logging.getLogger("tracker.fetch")


@attrs.frozen
class FetchOptions:
    """The command line of ``fetch`` (README "Fetching a snapshot into a ledger")."""

    ledger: str
    tracker: str = ""
    sources: tuple[str, ...] = ()
    group: str = ""
    min_slots: int = 500
    max_slots: int = 10_000
    slot: int = 0
    full: bool = True
    incremental: bool = True
    keep: int = 2
    progress: str = "auto"
    #: Seconds between two ``fetch_progress`` log lines (``--progress log``, or ``auto``
    #: without a terminal).
    progress_every: float = 5.0
    download_timeout: float = 600.0
    settings: FetchSettings = attrs.field(factory=FetchSettings)
    #: How the tracker's pairs are priced again with the ledger (``--replay-slots-per-second``,
    #: ``--slot-seconds``; the rest as the section's defaults), docs/ranking.md.
    ranking: Ranking = attrs.field(factory=Ranking)
    #: The free bytes of the ledger's file system (tests give their own).
    free_bytes: FreeBytes = free_bytes
    #: Who asks the cluster's votes (``--rpc``), made with the fetch's RPC client: the
    #: command line composes it (the cluster level is the proving package's, beside this
    #: one); None: the votes are not asked.
    voter_for: Callable[[httpx.AsyncClient], Voter] | None = attrs.field(default=None, eq=False)


async def run_fetch(options: FetchOptions, progress: Progress | None = None) -> list[Result]:
    """Bring the ledger up to date; the downloads made (none: it already was). Raises
    FetchError, also when ``download_timeout`` passes."""
    shown = (
        progress
        if progress is not None
        else progress_for(options.progress, every=options.progress_every)
    )
    try:
        with trio.fail_after(options.download_timeout):
            credentials = OriginCredentials([options.tracker, *options.sources])
            async with (
                _client(options.settings, credentials) as client,
                AsyncExitStack() as stack,
            ):
                if options.voter_for is not None:
                    rpc = await stack.enter_async_context(rpc_client())
                    settings = attrs.evolve(options.settings, voter=options.voter_for(rpc))
                    options = attrs.evolve(options, settings=settings)
                if options.tracker and not options.group:
                    within = options.settings.request_timeout
                    group = await default_group(client, options.tracker, within=within)
                    options = attrs.evolve(options, group=group)
                return await _run(client, options, shown)
    except FetchError:
        raise
    except trio.TooSlowError:
        raise FetchError(f"not done within {options.download_timeout:g}s") from None
    except OSError as exc:  # the ledger: read-only, full (ENOSPC while writing), EACCES
        raise FetchError(os_reason(exc)) from None
    except BaseExceptionGroup as group:  # one raised by a download's workers
        failure = _failure_in(group)
        if failure is not None:
            raise failure from None
        if not group.subgroup(lambda exc: not isinstance(exc, Exception | BaseExceptionGroup)):
            raise _unexpected(group) from None
        raise  # an interrupt (KeyboardInterrupt, SystemExit) stays what it is
    except Exception as exc:
        raise _unexpected(exc) from None


def os_reason(exc: OSError) -> str:
    """One line for an OSError: the file and the system's words (``[Errno 28] ...``)."""
    what = exc.strerror or str(exc) or type(exc).__name__
    return f"{exc.filename}: {what}" if exc.filename else what


def _unexpected(exc: BaseException) -> FetchError:
    """A bug or an answer nothing expected, as one line (its traceback logged at debug):
    a fetch never ends in a traceback."""
    log_event(log, "debug", "fetch_unexpected_error", exc_info=exc)
    leaf = exc
    if isinstance(exc, BaseExceptionGroup):  # name the unexpected one, not a FetchError
        leaf = exc.split((FetchError, OSError))[1] or exc
    leaf = first_leaf(leaf)
    what = " ".join(str(leaf).split())[:300]
    return FetchError(f"unexpected error: {type(leaf).__name__}" + (f": {what}" if what else ""))


def _failure_in(group: BaseExceptionGroup[BaseException]) -> FetchError | None:
    """The first FetchError or OSError of ``group`` (as a FetchError) when it holds nothing
    else; None otherwise (a bug or an interrupt)."""
    leaf = sole_leaf(group, (FetchError, OSError))
    if isinstance(leaf, OSError):
        return FetchError(os_reason(leaf))
    return leaf if isinstance(leaf, FetchError) else None


def _client(settings: FetchSettings, credentials: OriginCredentials) -> httpx.AsyncClient:
    """The client of a fetch: reads of ``read_size`` bytes (httpcore's own 64 KiB reads cost
    a third of the throughput), redirects followed, no cookie jar; the ``credentials`` of
    the URLs typed, each to its own origin (not on a redirect to another:
    :meth:`OriginCredentials.own_origin_only`)."""
    pool = 4 * settings.connections + 8
    shape = ClientShape(
        FETCH_AGENT,
        connect_timeout=settings.request_timeout,
        read_timeout=settings.read_timeout,
        max_connections=pool,
        pool_timeout=settings.read_timeout,
        max_keepalive=pool,
        max_redirects=5,
    )
    client = bulk_client(shape, BigReadBackend(settings.read_size), PoolTransport)
    if credentials:
        client.auth = credentials
        client.event_hooks = {"request": [credentials.own_origin_only], "response": []}
    return client


async def _run(
    client: httpx.AsyncClient, options: FetchOptions, progress: Progress
) -> list[Result]:
    no_ledger(options.ledger)  # said of the directory, not of its lock file
    with ledger_lock(options.ledger):
        # the accounts proofs' spill of a fetch killed mid-proof, gigabytes maybe (its
        # .tmp- files are judged once the plan is known: remove_stale)
        await trio.to_thread.run_sync(tidy_spill, options.ledger)
        try:
            # Read under the lock: a fetch that held it may have put archives in place or
            # removed old ones (--keep) since a scan made before
            local = await _local(options.ledger)
            return await _locked(client, options, progress, local)
        finally:
            # the empty .accounts-proof goes with the fetch (each proof removed its own
            # files as it ended, an interrupted one too: nothing to wait for here)
            tidy_spill(options.ledger)


async def _locked(
    client: httpx.AsyncClient,
    options: FetchOptions,
    progress: Progress,
    local: list[SnapshotInfo],
) -> list[Result]:
    why: list[str] = []  # what each source or the tracker said, for a plan of nothing
    remote = await _offer(client, options, options.slot or None, why)
    local = await _really_held(local, remote, options.settings.verify)
    if options.slot:
        await _check_age(client, options, remote)
    else:  # a full the ledger holds costs nothing to download (docs/ranking.md)
        remote = rerank(remote, local, options.ranking)
    what = plan(
        local,
        remote,
        min_slots=options.min_slots,
        want_full=options.full,
        want_incremental=options.incremental,
    )
    if what.incremental_on:
        what = choose_incremental(what, await _offer(client, options, what.incremental_on))
    incremental = what.incremental
    if what.full is None and incremental is None:
        if what.failed:
            offered = any(s.full is not None for s in remote)
            raise FetchError(
                what.reason if offered or not why else f"{what.reason}: {'; '.join(why)}"
            )
        log_event(log, "info", "fetch_nothing_to_do", reason=what.reason)
        remove_stale(options.ledger, set())
        return []
    planned = [f for f in (what.full, incremental) if f is not None]
    in_the_way(options.ledger, [f.file_name for f in planned])
    # An earlier run's download of what is not planned now (the offer moved on) would
    # hold its room for good, unseen (docs/fetch.md).
    remove_stale(options.ledger, {f.file_name for f in planned})
    _room_for(
        options, planned, [await announced_size(client, f, options.settings) for f in planned]
    )
    results = []
    if what.full is not None:
        results.append(await _download(client, options, what.full, progress))
        if options.incremental:
            incremental = await _newer_incremental(client, options, what.full, incremental)
            if incremental is not None and incremental.file_name in held_names(local):
                incremental = None  # the ledger holds it already
    if incremental is not None:
        results.append(await _download(client, options, incremental, progress))
    retain(options.ledger, options.keep, {r.path for r in results})
    return results


def rerank(
    remote: list[RemoteSnapshot], local: list[SnapshotInfo], ranking: Ranking | None = None
) -> list[RemoteSnapshot]:
    """``remote`` (the tracker's order) ranked for a ledger holding ``local``; as it is
    when the tracker does not rank by time to running (no pair with a prediction). Pure.

    A tracker that ranks by the time to a running node lists the pairs'
    ``predicted_seconds`` for a node that has nothing (none for a pair with an archive of
    no known size: it is priced at 0 bytes here, as the tracker ranks it). A full the
    ledger already holds costs this node nothing to download, so the pairs are priced again
    by the same predictor
    (:func:`tracker.ordering.predict.predicted_seconds`, docs/ranking.md): the ledger's files
    left out, each other file at its priced size (the lower middle of its machines' sizes, as
    the tracker prices it) and the fastest throughput the tracker lists for it, at least
    the assumed one when a source of it is not measured (it lists no throughput; the
    tracker counts it so), the tip the newest slot on offer. The tracker's first full stays
    the choice unless another full's best pair beats it by the switch margin, and on the
    full chosen its best pair (:func:`tracker.ordering.ranking.choose_pair`), as the tracker
    chooses."""
    if all(s.predicted is None for s in remote):  # (one pair unpriced turned it off)
        return remote
    ranking = ranking or Ranking()
    held = {f.bare_name for info in local for f in info.files}
    tip = max(s.slot for s in remote)

    def download(f: RemoteFile) -> Download:
        speed = max(f.throughput, ranking.assumed_throughput) if f.unmeasured else f.throughput
        return Download(f.priced_size or f.size, speed)

    def cost(snapshot: RemoteSnapshot) -> float:
        if snapshot.full is None:
            return math.inf
        wanted = [
            download(f)
            for f in (snapshot.full, snapshot.incremental)
            if f is not None and f.file_name not in held
        ]
        return predicted_seconds(wanted, snapshot.slot, tip, ranking)

    def pair(snapshot: RemoteSnapshot) -> PairKey:
        full, head = snapshot.full, snapshot.incremental
        return (full.file_name if full else "", head.file_name if head else None)

    costs = [cost(s) for s in remote]
    order = sorted(range(len(remote)), key=costs.__getitem__)
    offered = [(pair(remote[i]), costs[i]) for i in order if remote[i].full is not None]
    chosen = choose_pair(offered, pair(remote[0]), ranking.switch_margin)
    first = next((i for i in order if pair(remote[i]) == chosen), None)
    return [remote[i] for i in sorted(order, key=lambda i: i != first)]


async def _local(ledger: str) -> list[SnapshotInfo]:
    try:
        return await trio.to_thread.run_sync(scan_local, ledger)
    except ProbeError as exc:
        raise FetchError(f"the ledger directory: {exc}") from None


async def _really_held(
    local: list[SnapshotInfo], remote: list[RemoteSnapshot], verify: bool
) -> list[SnapshotInfo]:
    """``local`` less the archives under an offered name that may be an interrupted copy
    (:func:`suspects`: of another size than the listed one, or of a size not listed) and
    fail their check (or are not checked: verify off); such a file is fetched again, and
    replaced once the new copy is in place."""
    dropped = []
    listed = listed_sizes(remote)
    for file in suspects(local, listed, checked=verify):
        if verify and file.path and await _passes_check(file.path):
            continue  # a good archive of another node: archives of a slot differ in size
        dropped.append(file)
        size = listed[file.file_name]
        log_event(
            log,
            "warning",
            "fetch_local_copy_replaced",
            file=file.file_name,
            reason=(f"{file.size} bytes, not the {size} listed" if size else "size not listed")
            + (", and it fails its check" if verify else " (not checked)")
            + "; fetching it again",
        )
    return without(local, dropped) if dropped else local


async def _passes_check(path: str) -> bool:
    """:func:`passes_check` in a worker thread that a signal or ``--download-timeout`` does
    not wait for: the check of a 100 GB copy takes minutes, past a service manager's stop
    timeout. The thread left behind stops at its next read."""
    stop = threading.Event()
    try:
        return await trio.to_thread.run_sync(
            passes_check, path, stop.is_set, abandon_on_cancel=True
        )
    finally:
        stop.set()


def _room_for(options: FetchOptions, planned: list[RemoteFile], sizes: list[int]) -> None:
    """FetchError before the first byte when the ledger has no room for every archive
    planned (of ``sizes``: listed, else announced), in whole blocks, and a state file (less
    what their temp files and states already hold: :func:`~tracker.fetch.space.room_needed`)."""
    needed = room_needed(sizes, block_size(options.ledger))
    held = sum(held_bytes(options.ledger, f.file_name) for f in planned)
    what = " and ".join(f.file_name for f in planned)
    reason = no_room_reason(what, options.ledger, needed, held, options.free_bytes(options.ledger))
    if reason:
        raise FetchError(reason)


async def _newer_incremental(
    client: httpx.AsyncClient,
    options: FetchOptions,
    full: RemoteFile,
    planned: RemoteFile | None,
) -> RemoteFile | None:
    """The full took a while: the newest incremental on it the tracker or the sources offer
    now, if newer than ``planned`` (the one planned at the start, kept otherwise). One that
    cannot be asked keeps ``planned``, said as ``fetch_reask_failed``: an hour's full in
    place, one failed request (a tracker restarting, a 503) failed the whole run, the
    incremental and the retention with it."""
    try:
        on = await _offer(client, options, full.name.slot)
    except FetchError as exc:
        log_event(log, "warning", "fetch_reask_failed", full=full.file_name, error=str(exc))
        return planned
    newer = next((s.incremental for s in on if s.incremental is not None), None)
    if newer is None or (planned is not None and newer.name.slot <= planned.name.slot):
        return planned
    try:
        in_the_way(options.ledger, [newer.file_name])
    except FetchError as exc:
        log_event(log, "warning", "fetch_reask_failed", full=full.file_name, error=str(exc))
        return planned
    return newer


async def _offer(
    client: httpx.AsyncClient,
    options: FetchOptions,
    slot: int | None,
    why: list[str] | None = None,
) -> list[RemoteSnapshot]:
    """What the tracker or the sources offer (on the full at ``slot``); ``why`` gets one
    line per source that offered no full (its failure, or that it lists none) and, for a
    tracker that offers none, what was asked of it."""
    within = options.settings.request_timeout
    if options.tracker:
        offered = await from_tracker(
            client, options.tracker, options.group, slot=slot, within=within
        )
        if why is not None and not any(s.full is not None for s in offered):
            of = f" of group {options.group}" if options.group else ""
            on = f" on the full at slot {slot}" if slot is not None else ""
            why.append(f"tracker {redact_userinfo(options.tracker)} lists none{of}{on}")
        return offered
    offered = await from_sources(client, list(options.sources), within, why)
    if slot is None:
        return offered
    chosen = [s for s in offered if _on_full(s, slot)]
    if why is not None and not chosen:
        slots = sorted({s.full.name.slot for s in offered if s.full is not None}, reverse=True)
        if slots:
            why.append(f"no full at slot {slot} (on offer: {', '.join(map(str, slots))})")
    return chosen


def _on_full(snapshot: RemoteSnapshot, slot: int) -> bool:
    """True for ``snapshot`` built on the full at ``slot``: that full, or an incremental
    on it (one a validator offers without its full too)."""
    if snapshot.full is not None:
        return snapshot.full.name.slot == slot
    return snapshot.incremental is not None and snapshot.incremental.name.base_slot == slot


async def _check_age(
    client: httpx.AsyncClient, options: FetchOptions, remote: list[RemoteSnapshot]
) -> None:
    """``--slot``: refuse a snapshot more than ``max_slots`` older than the newest."""
    newest = await _offer(client, options, None)
    if remote and newest and newest[0].slot - remote[0].slot > options.max_slots:
        raise FetchError(
            f"the snapshot at slot {remote[0].slot} is more than {options.max_slots} slots "
            f"older than the newest ({newest[0].slot})"
        )


async def _download(
    client: httpx.AsyncClient, options: FetchOptions, file: RemoteFile, progress: Progress
) -> Result:
    result = await download(
        client, file, options.ledger, options.settings, progress, free=options.free_bytes
    )
    rate = result.size / max(result.seconds, 1e-9)
    used = ", ".join(f"{s.url} {s.sent}B" for s in result.sources if s.sent)
    log_event(
        log,
        "info",
        "fetch_done",
        file=file.file_name,
        bytes=result.size,
        seconds=round(result.seconds, 2),
        rate=f"{rate / 2**20:.1f}MiB/s",
        sources=used or "none (already on disk)",
        steals=result.steals,
        sha256=result.sha256 or "not verified",
        proven=proven_text(result.proof, file.name.is_full, options.settings.require),
        **_vouched(result.vouched_by),
    )
    return result


def _vouched(keys: tuple[str, ...]) -> dict[str, Any]:
    """``fetch_done``'s ``vouched_by``: the trusted keys whose statements it took (absent
    without ``--trust-key``)."""
    return {"vouched_by": ",".join(keys)} if keys else {}


def proven_text(proof: Proof | None, is_full: bool, required: Level) -> str:
    """The ``proven`` field of ``fetch_done``: the level the archive's check (and the votes,
    with ``--rpc``) reached with the note that says why it stops there, and for an
    incremental asked for ``accounts`` or more, that ``manifest`` is all its check can
    reach (its storages hold only the slots since its base: docs/architecture.md, "Proven
    archives"), so a reader does not take the lower level for a failure. Pure."""
    if proof is None:
        return "not verified"
    if not is_full and required >= Level.ACCOUNTS and proof.level == Level.MANIFEST:
        return "incremental: proven to manifest, the most an incremental can reach"
    # Why it stops there when it could go higher (over the accounts bound, the votes short).
    return proof.level.label + (f" ({proof.note})" if proof.note else "")
