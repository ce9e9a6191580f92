"""The bytes no level binds of a copy of several sources' pieces, made the first source's
before the copy's rename into the ledger (docs/fetch.md, "How"; docs/architecture.md, "A
refresh from several sources" → "Bytes no level binds").

A full proven to ``accounts`` is pooled without the tracker's ``sha256`` or ``--trust-key``
(:func:`tracker.fetch.vouching.mixing_problem`), but that level binds the account storages
only: ``version``, the status cache (which transactions the validator counts as processed)
and the manifest's fields outside the bank hash could be any pooled source's, in a copy that
passes every check. So, as in the cache's refresh (``proxy.copyrepair.confirm_unbound``), the
raw bytes that decode them (:class:`tracker.proof.archive.tarwalk.UnboundExtent`) that
another source than the first wrote are asked of the first again (:func:`unbound_plan`,
pure): bytes that differ are replaced by the first's and the copy is checked again; where
the first cannot be asked, another voice must send the same bytes, else the copy is refused.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence

import trio

from tracker.core.digests import Verified
from tracker.errors import ArchiveInvalid, CopyRejected, FetchError
from tracker.fetch.state import writer_of
from tracker.multisource.claims import intersect
from tracker.multisource.crew import Opener
from tracker.multisource.piececheck import (
    SLOWEST_COMPARE,
    UnboundAsk,
    fetch_range,
    live_sources,
    unbound_asks,
    voices,
)
from tracker.multisource.sources import Source
from tracker.observability.logs import log_event
from tracker.observability.redact import redact_userinfo
from tracker.proof.accounts.budget import AccountsLimits
from tracker.proof.archive.archivecheck import FollowingCheck

log = logging.getLogger("tracker.fetch")

#: :attr:`UnboundAsk.owner` of the bytes an earlier run left on disk (resumed): the state
#: names their sources, not who wrote which range.
EARLIER_RUN = -1


def unbound_plan(
    unbound: Sequence[tuple[int, int]],
    pool: Sequence[Source],
    written: Mapping[Source, Sequence[tuple[int, int]]],
    earlier: Sequence[tuple[int, int]],
    earlier_writers: tuple[str, ...],
) -> list[UnboundAsk] | str:
    """What to ask again of the pool's sources (``pool``: the first first) so that the bytes
    no level binds (``unbound``: raw ranges) of their copy are the first's, or two sources'
    (:func:`tracker.multisource.piececheck.unbound_asks`, over what each source of this run wrote:
    ``written``); and the bytes of those ranges that an earlier run left (``earlier``,
    written by ``earlier_writers``, as the state names them), asked of the first unless it
    alone wrote them (no range of them is known to be another's, so no other source may
    vouch for them: owner :data:`EARLIER_RUN`). A reason (one line) when a range has no one
    to ask. Pure."""
    live = live_sources(pool)
    asks = unbound_asks(unbound, [written.get(s, []) for s in pool], live, voices(pool, live))
    if isinstance(asks, str):
        return asks
    if not earlier or earlier_writers == (writer_of(pool[0].url),):
        return asks
    resumed = intersect(list(earlier), list(unbound))
    if resumed and 0 not in live:
        start, end = resumed[0]
        return (
            f"bytes {start}-{end - 1}, which no level binds, are an earlier run's and the "
            "first source cannot be asked for them"
        )
    again = [UnboundAsk(start, end, EARLIER_RUN, 0) for start, end in resumed]
    return sorted([*asks, *again], key=lambda a: a.start)


async def confirmed(
    check: Verified,
    unbound: Sequence[tuple[int, int]],
    plan: list[UnboundAsk] | str,
    *,
    name: str,
    pool: Sequence[Source],
    ask: Opener,
    fd: int,
    read_timeout: float,
    prove_accounts: AccountsLimits | None,
) -> Verified:
    """``check`` (what the copy open at ``fd`` passed), once the bytes of ``plan``
    (:func:`unbound_plan`) were asked again: as it is when none differ; else the first
    source's bytes are written over them and the copy is checked again, and that check's
    result is returned. ArchiveInvalid when the first's bytes fail the check the copy passed
    without them (the first lied, or another's pieces fit only their own: no check tells
    which, so the copy is refused and each source tried alone), CopyRejected when a range
    cannot be vouched for (no one to ask, or another source's bytes differ), FetchError
    when a source did not send them all in time: the fetch ends, the copy and its state
    kept for the next run (never another source's copy, downloaded again whole)."""
    if isinstance(plan, str):
        raise CopyRejected(plan)
    if not plan:  # all of them the first source's, as in a copy from it alone
        return check
    readable = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC)
    rewritten = 0
    try:
        for each in plan:
            rewritten += await _compare(each, name, pool, ask, fd, readable, read_timeout)
    finally:
        os.close(readable)
    first = redact_userinfo(pool[0].url)
    asked = sum(a.end - a.start for a in plan)
    log_event(
        log,
        "info",
        "fetch_unbound_checked",
        file=name,
        url=first,
        asked=asked,
        rewritten=rewritten,
        extent=sum(end - start for start, end in unbound),
    )
    if not rewritten:
        return check
    await trio.to_thread.run_sync(os.fsync, fd)
    again = FollowingCheck.start(fd, name, prove_accounts)
    try:
        again.finish(os.fstat(fd).st_size)
        return await again.result()
    except ArchiveInvalid as exc:
        raise ArchiveInvalid(
            f"{first} sent bytes that fail the check the copy passed without them: {exc.reason}"
        ) from None
    finally:
        # Cancelled (a signal, --download-timeout): the check is stopped and waited for
        # (seconds at most), as the copy's first check is (download.py): one only cancelled
        # was cut off by the process's exit mid-proof, its hashing process and spilled files
        # left behind (docs/architecture.md, "Every core")
        await again.stopped()


async def _compare(
    each: UnboundAsk,
    name: str,
    pool: Sequence[Source],
    ask: Opener,
    fd: int,
    readable: int,
    read_timeout: float,
) -> int:
    """The bytes of ``each`` asked of its source and compared with the copy's; where they
    differ the first source's are written, and how many were is returned."""
    source = pool[each.asked]
    written = 0
    differs = False

    async def compare(position: int, chunk: bytes) -> None:
        nonlocal written, differs
        on_disk = await trio.to_thread.run_sync(os.pread, readable, len(chunk), position)
        if on_disk == chunk:
            return
        if each.asked:
            # stopped by cancelling: an error raised here would be taken for the source's
            differs = True
            scope.cancel()
            return
        await trio.to_thread.run_sync(os.pwrite, fd, chunk, position)
        written += len(chunk)

    reached = each.start
    with trio.move_on_after(read_timeout + (each.end - each.start) / SLOWEST_COMPARE) as scope:
        reached = await fetch_range(source, each.start, each.end, ask, compare)
    if differs:
        owner = redact_userinfo(pool[each.owner].url)
        raise CopyRejected(
            f"bytes {each.start}-{each.end - 1} of {name}, which no level binds, differ "
            f"between {owner} and {redact_userinfo(source.url)} (the first source cannot "
            "be asked)"
        )
    if reached < each.end:
        # The copy is whole and passed its check: another source would be another copy,
        # downloaded again whole (a fallback's bytes differ, or its validators do). So the
        # fetch ends keeping this one; the next run resumes it and asks these bytes again
        # (docs/fetch.md, "How").
        kept = os.fstat(fd).st_size
        raise FetchError(
            f"{redact_userinfo(source.url)}: bytes {each.start}-{each.end - 1} of {name}, "
            f"which no level binds, could not be had again; {kept} of {kept} bytes kept, "
            "run again to resume"
        )
    return written
