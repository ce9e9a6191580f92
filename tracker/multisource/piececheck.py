"""After a refresh from several sources failed its check: which source lied, and the copy
repaired from the others (docs/architecture.md, "A refresh from several sources").

The whole-file check says that the copy is bad, not which piece or whose. Every range a
source wrote is asked again of another source (compare, do not trust: the bytes on disk are
never taken for the truth), chunk by chunk as they arrive, and compared with the disk. Where
they differ a third source, when there is one, decides (:func:`verdict`): the two that agree
are right. The bytes found right are written over the wrong ones, and the copy is checked
again from its first byte; only when that check passes are the liars named
(``/v1/targets`` ``last_error``) and held back for this archive. Memory stays bounded: one
chunk of each answer at a time.

With only two sources left there is no third to break a tie: the ranges where they differ
are only recorded (``judge_later``), and the whole-file check judges
(:class:`tracker.proxy.copyrepair.Repair`): the differing ranges are taken from one side and
the copy checked, then from the other; the side whose bytes pass is honest
(:func:`two_source_liar`, :func:`blamed`).
"""

from __future__ import annotations

import enum
import logging
import os
from collections.abc import Awaitable, Callable, Collection, Sequence
from contextlib import AbstractAsyncContextManager

import attrs
import trio

from tracker.core.hosts import machine_voices, voice_of
from tracker.errors import SourceFailed, TransportError
from tracker.multisource.claims import merge
from tracker.multisource.crew import PieceAnswer
from tracker.multisource.sources import Source, check_range
from tracker.net.bodyreads import body_chunks
from tracker.observability.logs import log_event

log = logging.getLogger("tracker.proxy")

#: Bytes compared at once (a chunk of an answer is cut to this).
COMPARE_SIZE = 1024 * 1024

Opener = Callable[[Source, dict[str, str]], AbstractAsyncContextManager[PieceAnswer]]


class Verdict(enum.Enum):
    """Who is right where two sources' bytes differ."""

    OWNER_LIED = "owner"  # the source whose bytes are on disk
    COMPARER_LIED = "comparer"  # the source asked to compare
    UNKNOWN = "unknown"


def verdict(on_disk: bytes, comparer: bytes, third: bytes | None) -> Verdict:
    """Who lied where ``on_disk`` (the owner's bytes) and ``comparer`` differ: the third
    source's bytes side with one of them (None: no third source; then the comparer is
    taken, provisionally: the check that follows decides)."""
    if third is None:
        return Verdict.OWNER_LIED
    if third == comparer:
        return Verdict.OWNER_LIED
    if third == on_disk:
        return Verdict.COMPARER_LIED
    return Verdict.UNKNOWN


def voices(
    sources: Sequence[Source], live: Collection[int], discovered: Collection[int] = ()
) -> list[str]:
    """Whose word each of ``sources`` is: its host as its URL names it, a discovered node's
    (``discovered``: their indices) as its party (an IPv6 address's /48:
    :func:`tracker.core.hosts.machine_voices`, as trust counts them), where the ``live``
    ones (those that can be asked again) name two or more (two ports of one machine, a
    sidecar and its validator's RPC, serve the file that machine holds: they agree with
    each other, right or wrong, and count once); each source its own where they name one
    (there is no other voice to ask: as before hosts were voices)."""
    hosts = machine_voices([voice_of(s.url) for s in sources], discovered)
    if len({hosts[i] for i in live}) >= 2:
        return hosts
    return [f"{host}#{i}" for i, host in enumerate(hosts)]


def comparers(owner: int, live: list[int], voice: Sequence[str]) -> list[int]:
    """The sources (indices of ``live``, in order) asked about ``owner``'s ranges: the next
    live one after it of another voice than the owner's (``voice``: :func:`voices`; the next
    one of its own where no other is live), then the next of a voice neither of them is
    (the tie-breaker), when there is one."""
    others = [i for i in live if i != owner]
    after = [i for i in others if i > owner] + [i for i in others if i < owner]
    if not after:
        return []
    comparer = next((i for i in after if voice[i] != voice[owner]), after[0])
    spoken = (voice[owner], voice[comparer])
    third = next((i for i in after if voice[i] not in spoken), None)
    return [comparer] if third is None else [comparer, third]


def two_source_liar(passed: list[bool | None]) -> int | None:
    """Which of two sides lied (0: the first, 1: the second) from the checks of the copy with
    the differing ranges taken from the first side, then from the second (True: passed,
    False: failed, None: its bytes could not be had); None while no side passed."""
    for side, result in enumerate(passed[:2]):
        if result:
            return 1 - side
    return None


@attrs.frozen
class Difference:
    """A range where the bytes on disk (``owner``'s) and ``comparer``'s differ."""

    start: int
    end: int
    owner: int
    comparer: int


def blamed(
    differing: list[Difference], honest: Collection[int]
) -> dict[int, list[tuple[int, int]]]:
    """Who lied where, once the copy passed with the bytes of the ``honest`` side (the
    sources of one voice) in every differing range: the other party of each range one of
    them took part in (a range between two others is no one's proven lie)."""
    found: dict[int, list[tuple[int, int]]] = {}
    for d in differing:
        if (d.owner in honest) != (d.comparer in honest):
            liar = d.comparer if d.owner in honest else d.owner
            found[liar] = merge([*found.get(liar, []), (d.start, d.end)])
    return found


def side_spans(
    differing: list[Difference],
    holders: dict[tuple[int, int], int],
    side: str,
    voice: Sequence[str],
    live: Collection[int],
) -> dict[int, list[tuple[int, int]]]:
    """The differing ranges whose bytes on disk (``holders``: the source that sent them)
    are not the ``side`` voice's, by the source of that voice that sends them again: its
    party in the difference when that one can be asked (``live``), else the side's first
    live source. Pure."""
    first = next(i for i in sorted(live) if voice[i] == side)
    wanted: dict[int, list[tuple[int, int]]] = {}
    for d in differing:
        span = (d.start, d.end)
        if voice[holders[span]] == side:
            continue
        parties = (d.comparer, d.owner)
        sender = next((i for i in parties if voice[i] == side and i in live), first)
        wanted.setdefault(sender, []).append(span)
    return wanted


@attrs.frozen
class UnboundAsk:
    """A range of a copy's bytes no level binds that ``owner`` wrote, to be asked of
    ``asked`` (indices of the copy's sources)."""

    start: int
    end: int
    owner: int
    asked: int


def unbound_asks(
    unbound: Sequence[tuple[int, int]],
    written: Sequence[Sequence[tuple[int, int]]],
    live: Collection[int],
    voice: Sequence[str],
) -> list[UnboundAsk] | str:
    """Whom to ask again for the bytes of a copy from several sources in the ``unbound``
    ranges (start, end), which no level binds (docs/architecture.md, "A refresh from several
    sources" → "Bytes no level binds"): each range of them a source other than the first
    wrote (``written``: each source's ranges, the first first), asked of the first when it
    can be asked (``live``), whose word a copy from it alone would hold, else of a live
    source of another voice than the writer's (``voice``: :func:`voices`), so that two
    sources send the same bytes. The first source's own ranges
    are its word, as in a copy from it alone. A reason (one line) when a range has no one
    to ask. Pure."""
    asks: list[UnboundAsk] = []
    for owner, ranges in enumerate(written):
        for wrote, stopped in ranges if owner else ():
            for low, high in unbound:
                start, stop = max(wrote, low), min(stopped, high)
                if start >= stop:
                    continue
                others = [i for i in live if voice[i] != voice[owner]]
                asked = 0 if 0 in live else next(iter(others), None)
                if asked is None:
                    return (
                        f"bytes {start}-{stop - 1}, which no level binds, came from one source "
                        "and no other can be asked for them"
                    )
                asks.append(UnboundAsk(start, stop, owner, asked))
    return sorted(asks, key=lambda a: a.start)


def first_alone_spans(
    written: Sequence[Sequence[tuple[int, int]]], asked: Sequence[tuple[int, int]]
) -> list[tuple[int, int]]:
    """The ranges (start, end) of a copy from several sources that a source other than the
    first wrote (``written``: each source's ranges, the first first) and that were not
    asked of the first yet (``asked``): once the first sends them, every byte of the copy is
    its, as in a copy from it alone (docs/architecture.md, "A refresh from several sources"
    → "Bytes no level binds": the first's bytes that failed the check beside another's
    neighbouring bytes are then judged on their own). Pure."""
    done = merge(list(asked))
    spans: list[tuple[int, int]] = []
    for start, end in merge([r for ranges in written[1:] for r in ranges]):
        position = start
        for low, high in done:
            if high <= position or low >= end:
                continue
            if low > position:
                spans.append((position, low))
            position = max(position, high)
        if position < end:
            spans.append((position, end))
    return spans


@attrs.define
class Findings:
    """What the comparison found: the sources that lied (and where), the bytes rewritten;
    with ``judge_later``, the differing ranges instead (nothing rewritten)."""

    liars: dict[Source, list[tuple[int, int]]] = attrs.Factory(dict)
    rewritten: int = 0
    undecided: int = 0
    differing: list[Difference] = attrs.Factory(list)
    #: Bytes of each source's ranges another source sent the same (it agreed with them).
    agreed: dict[Source, int] = attrs.Factory(dict)
    #: Liars taken for liars without a third source (only the check that follows proves it).
    provisional: set[Source] = attrs.Factory(set)

    def blame(self, source: Source, start: int, end: int, *, proven: bool = True) -> None:
        self.liars[source] = merge([*self.liars.get(source, []), (start, end)])
        if not proven:
            self.provisional.add(source)

    def agree(self, source: Source, count: int) -> None:
        self.agreed[source] = self.agreed.get(source, 0) + count


def held_back(
    sources: list[Source],
    written: dict[Source, list[tuple[int, int]]],
    found: Findings,
    *,
    refuted: bool = False,
) -> list[Source]:
    """Who carries a copy's failed check once its repair did not pass (who sent bytes of
    it, ``written``): the liars found by two sources against one, when any were, and no one
    else; else, when every range was compared and no source's bytes differed from another's,
    every sender (they agree: the archive they serve fails its check); else the senders whose
    every byte was not sent the same by another source (the liar is among them; a source
    whose bytes another one confirmed never carries the error).

    ``refuted``: the copy rewritten with the bytes two sources agreed on failed its check
    again. Two liars that send the same bytes outvote an honest source, so their vote
    proves nothing then: no source is held back on its word (the honest one it overturned
    would be the only one), and the others are judged as where nothing was proven."""
    senders = [s for s in sources if written.get(s)]
    outvoted = set(found.liars) if refuted else set()
    proven = [s for s in senders if s in found.liars and s not in found.provisional]
    if proven and not refuted:
        return proven
    if not found.undecided and not found.differing and not found.liars:
        return senders
    return [
        s
        for s in senders
        if s not in outvoted
        and found.agreed.get(s, 0) < sum(end - start for start, end in written[s])
    ]


def sole_word(
    sources: Sequence[Source],
    written: dict[Source, list[tuple[int, int]]],
    live: Sequence[int],
    found: Findings,
) -> int | None:
    """The one source (its index) whose word every byte of a compared copy is, when only
    that one could be asked (``live``: the others dropped, a laggard among them, or
    ignoring ``Range``) and every byte another source wrote was compared with its bytes:
    agreed with them, or taken for wrong and rewritten with them (``found``). The copy is
    then that source's alone, as its copy alone would be: its check judges that source, not
    the others (docs/architecture.md, "A refresh from several sources"). None otherwise.
    Pure."""
    if len(live) != 1:
        return None
    word = live[0]
    for index, source in enumerate(sources):
        if index == word:
            continue
        wrote = sum(end - start for start, end in written.get(source, []))
        taken = sum(end - start for start, end in found.liars.get(source, []))
        if found.agreed.get(source, 0) + taken < wrote:
            return None
    return word


#: The slowest a comparison may go before it is given up (bytes per second), on top of one
#: read timeout per range.
SLOWEST_COMPARE = 1024 * 1024


async def find_liars(
    sources: list[Source],
    written: dict[Source, list[tuple[int, int]]],
    fd: int,
    ask: Opener,
    read_timeout: float,
    *,
    judge_later: bool = False,
    discovered: Collection[int] = (),
) -> Findings:
    """Compare every range each source wrote into ``fd`` with another live source's bytes
    (see the module doc); rewrite the bytes found wrong, or with ``judge_later`` only record
    where they differ (``Findings.differing``, indices of ``sources``). A range whose
    comparer fails or takes too long stays undecided (``Findings.undecided``).
    ``discovered``: the indices of discovered nodes' sources (:func:`voices`)."""
    comparison = _Comparison(fd, ask, Findings(), sources if judge_later else None)
    # Only sources that honour Range can be asked for a range (one that ignores it sent
    # its one stream: its bytes are compared, it compares nothing).
    live = live_sources(sources)
    voice = voices(sources, live, discovered)
    for owner, source in enumerate(sources):
        for start, end in written.get(source, []):
            asked = [sources[i] for i in comparers(owner, live, voice)]
            if not asked:
                comparison.findings.undecided += end - start
                continue
            with trio.move_on_after(read_timeout + (end - start) / SLOWEST_COMPARE) as scope:
                await comparison.range(source, asked, start, end)
            if scope.cancelled_caught:
                comparison.findings.undecided += end - start
    return comparison.findings


def live_sources(sources: Sequence[Source]) -> list[int]:
    """The sources (indices) that can be asked for a range again: not dropped, honouring
    ``Range`` (one that ignores it sent its one stream)."""
    return [i for i, s in enumerate(sources) if not s.dropped and s.ranges]


@attrs.define
class _Comparison:
    """The file being compared (``fd``), how sources are asked, and what was found."""

    fd: int
    ask: Opener
    findings: Findings
    #: Set: the differences are only recorded (indices of these sources), not judged.
    recording: list[Source] | None = None

    async def range(self, owner: Source, asked: list[Source], start: int, end: int) -> None:
        """``owner``'s bytes ``start`` to ``end`` on disk against ``asked[0]``'s (the next
        one, if any, breaks a tie)."""
        comparer, third = asked[0], asked[1] if len(asked) > 1 else None

        async def compare(position: int, chunk: bytes) -> None:
            for cut in range(0, len(chunk), COMPARE_SIZE):
                piece = chunk[cut : cut + COMPARE_SIZE]
                await self.piece(owner, comparer, third, position + cut, piece)

        reached = await fetch_range(comparer, start, end, self.ask, compare)
        self.findings.undecided += end - reached

    async def piece(
        self, owner: Source, comparer: Source, third: Source | None, position: int, piece: bytes
    ) -> None:
        """One piece of ``comparer``'s bytes at ``position`` against the disk."""
        findings = self.findings
        on_disk = await trio.to_thread.run_sync(os.pread, self.fd, len(piece), position)
        if on_disk == piece:
            findings.agree(owner, len(piece))
            return
        if self.recording is not None:
            index = self.recording.index
            differs = Difference(position, position + len(piece), index(owner), index(comparer))
            last = findings.differing[-1] if findings.differing else None
            if last is not None and (last.end, last.owner, last.comparer) == (
                differs.start,
                differs.owner,
                differs.comparer,
            ):  # the same difference going on
                differs = attrs.evolve(last, end=differs.end)
                findings.differing.pop()
            findings.differing.append(differs)
            return
        tie = None if third is None else await _read(third, position, len(piece), self.ask)
        found = verdict(on_disk, piece, tie)
        end = position + len(piece)
        if found is Verdict.OWNER_LIED:
            await trio.to_thread.run_sync(os.pwrite, self.fd, piece, position)
            findings.blame(owner, position, end, proven=tie is not None)
            findings.rewritten += len(piece)
        elif found is Verdict.COMPARER_LIED:
            findings.blame(comparer, position, end)
        else:
            findings.undecided += len(piece)


async def _read(source: Source, position: int, length: int, ask: Opener) -> bytes | None:
    """``length`` bytes of ``source`` at ``position`` (None: it could not say)."""
    data = bytearray()

    async def keep(_at: int, chunk: bytes) -> None:
        data.extend(chunk)

    reached = await fetch_range(source, position, position + length, ask, keep)
    return bytes(data) if reached == position + length else None


async def rewrite(
    source: Source, spans: list[tuple[int, int]], fd: int, ask: Opener, read_timeout: float
) -> bool:
    """Write ``source``'s bytes of each of ``spans`` over ``fd``'s, chunk by chunk as they
    arrive (memory: one chunk); False when it could not send them all in time."""

    async def write(position: int, chunk: bytes) -> None:
        await trio.to_thread.run_sync(os.pwrite, fd, chunk, position)

    for start, end in spans:
        reached = start
        with trio.move_on_after(read_timeout + (end - start) / SLOWEST_COMPARE):
            reached = await fetch_range(source, start, end, ask, write)
        if reached < end:
            return False
    return True


async def fetch_range(
    source: Source,
    start: int,
    end: int,
    ask: Opener,
    take: Callable[[int, bytes], Awaitable[None]],
) -> int:
    """Ask ``source`` for bytes ``start`` to ``end`` and hand each chunk of its answer to
    ``take(position, chunk)``, cut at ``end``; the position reached (``end``: all of them).
    A source that fails is logged (``refresh_compare_failed``) and stops it early."""
    position = start
    try:
        async with ask(source, {"range": f"bytes={start}-{end - 1}"}) as answer:
            check_range(answer.response, source, start, end)
            async with body_chunks(answer.response) as chunks:
                async for chunk in chunks:
                    data = chunk[: end - position]
                    await take(position, data)
                    position += len(data)
                    if position >= end:
                        break
    except (SourceFailed, TransportError) as exc:
        log_event(log, "warning", "refresh_compare_failed", url=source.url, reason=str(exc))
    return position
