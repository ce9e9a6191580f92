"""A copy of one archive filled from several sources at once, checked (docs/architecture.md,
"A refresh from several sources"): what the sources delivered (:class:`Delivered`), a piece
asked of the copy a source reads within its origin's ``source_limits`` (:func:`ask_copy`),
the bytes no level binds made the first source's word (:func:`confirm_unbound`; where the
first's fail the check beside another's, the copy is made the first's alone), and a copy that
failed its check repaired (:class:`Repair`): its ranges compared across sources, the liar's
rewritten, named and held back. The decisions are :mod:`tracker.multisource.piececheck`'s,
pure; this module is their executor over the refresh's temp file. The fill itself, which
hands its outcome here, is :mod:`tracker.proxy.cachefill`."""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial

import attrs
import trio

from tracker.cache.refresh import Refresh
from tracker.core.snapshots import SnapshotFile, SnapshotSource
from tracker.errors import ArchiveInvalid, CacheError, SourceOverloaded
from tracker.multisource.crew import PieceAnswer
from tracker.multisource.piececheck import (
    SLOWEST_COMPARE,
    Difference,
    Findings,
    Opener,
    UnboundAsk,
    blamed,
    fetch_range,
    find_liars,
    first_alone_spans,
    held_back,
    live_sources,
    rewrite,
    side_spans,
    sole_word,
    two_source_liar,
    unbound_asks,
    voices,
)
from tracker.multisource.sources import Source
from tracker.observability.logs import log_event
from tracker.observability.redact import redact_text
from tracker.ordering.index import TargetKey
from tracker.proxy.transfers import Peers
from tracker.proxy.upstream import ask_source

#: The events of a refresh from several sources.
many_log = logging.getLogger("tracker.proxy")

#: Seconds a lane waits in its source's queue for a transfer slot before it looks again.
SLOT_WAIT = 1.0


@attrs.frozen
class Delivered:
    """What the sources of a refresh delivered: each one, its bytes and seconds."""

    sources: tuple[Source, ...]
    seconds: float
    #: The byte ranges each source wrote (what a failed check compares).
    written: dict[Source, list[tuple[int, int]]]
    #: The copy each source reads: the file, as the index has it, of which target.
    copies: dict[Source, tuple[SnapshotFile, SnapshotSource]]
    #: The sources dropped as laggards (:func:`tracker.proxy.cachefill.lagging`), each with
    #: the seconds it took part until then.
    lagged: dict[Source, float] = attrs.Factory(dict)
    #: The sources dropped for failing (their answers broke, they stalled or dripped under
    #: the floor), each with the seconds it took part until then.
    failed: dict[Source, float] = attrs.Factory(dict)
    #: The sources dropped for answering busy (503, 429) in a row, each with the seconds it
    #: took part until then: our side stopped asking them (docs/ranking.md, "Busy answers").
    busy: dict[Source, float] = attrs.Factory(dict)

    def key_of(self, source: Source) -> TargetKey:
        """``source``'s target in the index."""
        return self.copies[source][1].key

    def shares(self) -> str:
        """``url=bytes`` of each source, for the log line."""
        return " ".join(f"{redact_text(s.url)}={s.sent}" for s in self.sources)


@asynccontextmanager
async def ask_copy(
    peers: Peers,
    copies: dict[Source, tuple[SnapshotFile, SnapshotSource]],
    source: Source,
    headers: dict[str, str],
) -> AsyncIterator[PieceAnswer]:
    """``source`` (the copy it reads) asked for a piece within its origin's
    ``source_limits`` (credentials only to its own origin:
    :func:`tracker.proxy.upstream.ask_source`); the answer closed and its transfer slot
    freed when the block ends. The first answer's validators become the source's (every
    later one must be of the same file). A source that answers busy (503, 429) is told to
    ``peers.overloaded`` (docs/ranking.md, "Busy answers")."""
    file, copy = copies[source]
    group = peers.group_for(copy.key)  # a reload meanwhile: its credentials of now
    try:
        answer = await ask_source(
            peers.clients,
            group,
            file,
            copy,
            "GET",
            headers,
            url=source.url,
            wait=SLOT_WAIT,
            asking=peers.group_for,  # and again once a slot is held (a reload while it waited)
        )
    except SourceOverloaded as exc:
        if peers.overloaded is not None:
            peers.overloaded(copy.key, exc.retry_after)
        raise
    try:
        if answer.response.status_code == 206:
            source.adopt_validators(answer.response)
        yield PieceAnswer(answer.response, answer.pacer)
    finally:
        await answer.aclose()


def _no_one(_key: TargetKey, _reason: str) -> None:
    return None


async def confirm_unbound(
    peers: Peers,
    refresh: Refresh,
    outcome: Delivered,
    unbound: list[tuple[int, int]],
    *,
    repair: Repair,
) -> bool:
    """Vouch for the bytes of a copy from several sources that its level does not bind (the
    ``unbound`` ranges: :attr:`Refresh.unbound_ranges`; docs/architecture.md, "A refresh from
    several sources"), before its readers get their end: each range of them another source than the
    first wrote is asked of the first and compared (:func:`unbound_asks`); the first's bytes
    replace those that differ, its readers cut off first (they may have read the others'),
    and the copy is checked again (True). Where the first cannot be asked, a source of
    another voice than the writer's must send the same bytes. Raises CacheError when a range
    cannot be vouched for so. Where the first's bytes fail the check the copy passed
    without them, no check tells which lied (the first, or another whose bytes beside them
    fit only its own: pieces framed apart), so every other range another source wrote is
    asked of the first too (:func:`_first_alone`): the copy is then the first's alone,
    checked again (True), or its failure the first's (ArchiveInvalid, ``repair`` told to
    hold the first back and compare nothing). False when nothing differed, or the copy was
    repaired already (each range was compared with another source's then: :class:`Repair`)."""
    if refresh.repairs or not unbound:
        return False
    sources = list(outcome.sources)
    live = live_sources(sources)
    asks = unbound_asks(
        unbound, [outcome.written.get(s, []) for s in sources], live, voices(sources, live)
    )
    if isinstance(asks, str):
        raise CacheError(f"{refresh.name}: {asks}")
    if not asks:  # all of them the first source's word, as in a copy from it alone
        return False
    ask = partial(ask_copy, peers, outcome.copies)
    fd = os.dup(refresh.descriptor())
    rewritten = 0
    try:
        for each in asks:
            rewritten += await _compare_unbound(peers, refresh, sources, each, fd, ask)
    finally:
        os.close(fd)
    first = redact_text(sources[0].url)
    asked = sum(a.end - a.start for a in asks)
    log_event(
        many_log,
        "info",
        "refresh_unbound_checked",
        file=refresh.name,
        url=first,
        asked=asked,
        rewritten=rewritten,
    )
    if not rewritten:
        return False
    try:
        await refresh.recheck()
    except ArchiveInvalid as exc:
        # The copy passed without the first's bytes and fails with them: the first lied, or
        # another source's bytes beside them fit only their own (pieces framed apart: a
        # liar's doing on every refresh). No check tells which: the first is asked for the
        # rest of the others' bytes too, and judged on its own bytes alone
        reason = (
            f"bytes of {refresh.name} that no level binds, asked again of {first}, fail the "
            f"check its copy passed without them: {exc.reason}; the other sources' bytes are "
            "asked of it too"
        )
        log_event(
            many_log, "warning", "refresh_unbound_undecided", file=refresh.name, reason=reason
        )
        await _first_alone(peers, refresh, outcome, asks, ask, repair, exc)
    return True


async def _first_alone(
    peers: Peers,
    refresh: Refresh,
    outcome: Delivered,
    asks: list[UnboundAsk],
    ask: Opener,
    repair: Repair,
    failed: ArchiveInvalid,
) -> None:
    """Make the copy the first source's alone: every range another source wrote that was
    not asked of the first yet (:func:`first_alone_spans`) written over with the first's
    bytes, then the copy checked again (docs/architecture.md, "A refresh from several
    sources" → "Bytes no level binds"); ``failed``: how the copy with the first's bytes
    asked so far failed (its verdict where nothing is left to ask). Raises CacheError when
    the first does not send them all in time (no source is held back: nothing was judged),
    ArchiveInvalid when the copy then fails: every byte of it is the first's, a failure its
    copy alone would have had, so the first alone carries it (``repair``: no comparison,
    the first its blame)."""
    sources = list(outcome.sources)
    spans = first_alone_spans(
        [outcome.written.get(s, []) for s in sources], [(a.start, a.end) for a in asks]
    )
    first = redact_text(sources[0].url)
    if spans:
        fd = os.dup(refresh.descriptor())
        try:
            sent = await rewrite(sources[0], spans, fd, ask, peers.read_timeout)
        finally:
            os.close(fd)
        if not sent:
            raise CacheError(
                f"bytes of {refresh.name} that other sources wrote could not be had again "
                f"from {first}"
            )
        asked = sum(end - start for start, end in spans)
        log_event(
            many_log,
            "info",
            "refresh_unbound_first_alone",
            file=refresh.name,
            url=first,
            asked=asked,
        )
        try:
            await refresh.recheck()
        except ArchiveInvalid as exc:
            failed = exc
        else:
            return
    repair.first_alone_failed = True
    repair.blame[:] = [outcome.key_of(sources[0])]
    raise ArchiveInvalid(
        f"the copy of {refresh.name} made of {first}'s bytes alone fails its check: {failed.reason}"
    ) from None


async def _compare_unbound(
    peers: Peers, refresh: Refresh, sources: list[Source], each: UnboundAsk, fd: int, ask: Opener
) -> int:
    """The bytes of ``each`` asked of its source and compared with the disk's; where they
    differ the first source's are written (the readers cut off before the first one), and
    how many were is returned. CacheError when another source's differ or do not all come."""
    source, owner = sources[each.asked], sources[each.owner]
    written = 0

    async def compare(position: int, chunk: bytes) -> None:
        nonlocal written
        on_disk = await trio.to_thread.run_sync(os.pread, fd, len(chunk), position)
        if on_disk == chunk:
            return
        if each.asked:
            raise CacheError(
                f"bytes {each.start}-{each.end - 1} of {refresh.name}, which no level binds, "
                f"differ between {redact_text(owner.url)} and {redact_text(source.url)} "
                "(the first source cannot be asked)"
            )
        if not refresh.repairs:
            refresh.cut_readers()  # they may have read the other source's bytes
        await trio.to_thread.run_sync(os.pwrite, fd, chunk, position)
        written += len(chunk)

    reached = each.start
    with trio.move_on_after(peers.read_timeout + (each.end - each.start) / SLOWEST_COMPARE):
        reached = await fetch_range(source, each.start, each.end, ask, compare)
    if reached < each.end:
        raise CacheError(
            f"bytes {each.start}-{each.end - 1} of {refresh.name}, which no level binds, "
            f"could not be had again from {redact_text(source.url)}"
        )
    return written


@attrs.define
class Repair:
    """After the copy of a refresh from several sources failed its check: its readers cut
    off, the liars found by comparing every range each source wrote with another's and
    their bytes rewritten (:mod:`tracker.multisource.piececheck`), the copy checked again; the
    liars named (``liar_found(key, reason)``: held back for this archive, ``/v1/targets``
    ``last_error``) once it passed. With two sources left, no third breaks a tie: the
    whole-file check judges (:meth:`_judge_two`). ``blame``: the targets that carry the
    failed check when the repair did not pass (every sender at first, narrowed by
    :func:`~tracker.multisource.piececheck.held_back`: an honest source never carries a liar's
    error)."""

    peers: Peers
    refresh: Refresh
    outcome: Delivered
    liar_found: Callable[[TargetKey, str], None] = _no_one
    blame: list[TargetKey] = attrs.field(init=False)
    #: Set when the copy, made the first source's alone, failed its check
    #: (:func:`confirm_unbound`): the first carries it, nothing is compared.
    first_alone_failed: bool = attrs.field(default=False, init=False)

    def __attrs_post_init__(self) -> None:
        outcome = self.outcome
        self.blame = [outcome.key_of(s) for s in outcome.sources if outcome.written.get(s)]

    async def run(self, failed: ArchiveInvalid) -> bool:
        """Whether the copy was repaired and passed its check again (else the caller
        rejects it as it stands, held back against :attr:`blame`)."""
        # the copy of the first's bytes alone failed: there is no other's left to compare
        if self.first_alone_failed:
            return False
        refresh, outcome = self.refresh, self.outcome
        refresh.cut_readers()  # a reader that read a liar's bytes never gets the end
        log_event(many_log, "warning", "refresh_comparing", file=refresh.name, reason=failed.reason)
        sources = list(outcome.sources)
        # Those that can be asked for a range again (one that ignores Range cannot), and
        # whose word each is (two ports of one host are one voice)
        live = live_sources(sources)
        discovered = {n for n, s in enumerate(sources) if outcome.key_of(s).discovered}
        voice = voices(sources, live, discovered)
        fd = os.dup(refresh.descriptor())
        try:
            ask = partial(ask_copy, self.peers, outcome.copies)
            # Every range each source wrote is compared, not only those before the byte the
            # check failed on: a liar's later pieces would stay, and the copy fail again
            # (about one more copy of the archive at most).
            two = len({voice[i] for i in live}) == 2
            found = await find_liars(
                sources,
                outcome.written,
                fd,
                ask,
                self.peers.read_timeout,
                judge_later=two,
                discovered=discovered,
            )
            # Undecided ranges too: one side would not compare the other's (a liar gone
            # mute), and the check of the whole copy, which vouches for every byte, judges
            # between the two sides' bytes where they differ.
            if two and found.differing:
                judged = await self._judge_two(sources, live, voice, found.differing, fd, ask)
                if judged is not None:
                    found.liars = judged
                    return self._named(found)
                self._narrow(found)
                return False
        finally:
            os.close(fd)
        word = sole_word(sources, outcome.written, live, found)
        if word is not None and found.undecided:
            return await self._judge_alone(sources[word], found, failed)
        if not found.liars or found.undecided:
            log_event(
                many_log,
                "warning",
                "refresh_not_repaired",
                file=refresh.name,
                liars=len(found.liars),
                undecided=found.undecided,
            )
            self._narrow(found)
            return False
        try:
            await refresh.recheck()
        except ArchiveInvalid as exc:
            log_event(
                many_log, "warning", "refresh_not_repaired", file=refresh.name, reason=exc.reason
            )
            # the bytes the votes chose fail too: two colluding liars may have outvoted
            # an honest source, who must not carry their error
            self._narrow(found, refuted=True)
            return False
        except CacheError as exc:
            log_event(
                many_log, "warning", "refresh_not_repaired", file=refresh.name, reason=str(exc)
            )
            # no verdict on the repaired copy (it falls short of what vouches for it): the
            # failed check stands, carried as where the comparison left a range undecided
            self._narrow(found)
            return False
        return self._named(found)

    async def _judge_alone(self, word: Source, found: Findings, failed: ArchiveInvalid) -> bool:
        """Every byte of the copy is now ``word``'s, the one source that could be asked
        (:func:`~tracker.multisource.piececheck.sole_word`): its check judges that source.
        Passed, every source whose bytes differed from it lied (named, as where a third
        source decided); failed, ``word`` alone carries it, as a copy from it alone would
        have (a fast liar beside an honest laggard, dropped and so never asked, held them
        both back: the honest one kept from the fleet on the liar's word). Nothing rewritten:
        the copy is the one that failed."""
        refresh = self.refresh
        if found.rewritten:
            try:
                await refresh.recheck()
            except ArchiveInvalid as exc:
                failed = exc
            except CacheError as exc:  # no verdict on its bytes: as where nothing was proven
                log_event(
                    many_log, "warning", "refresh_not_repaired", file=refresh.name, reason=str(exc)
                )
                self._narrow(found)
                return False
            else:
                found.provisional.clear()  # the check proved them
                return self._named(found)
        reason = (
            f"the copy made of {redact_text(word.url)}'s bytes alone (no other source could "
            f"be asked) fails its check: {failed.reason}"
        )
        log_event(many_log, "warning", "refresh_not_repaired", file=refresh.name, reason=reason)
        self.blame[:] = [self.outcome.key_of(word)]
        return False

    def _narrow(self, found: Findings, *, refuted: bool = False) -> None:
        """Who carries the failed check now that the repair did not pass (:attr:`blame`;
        ``refuted``: the copy with the votes' bytes failed its check again)."""
        outcome = self.outcome
        kept = held_back(list(outcome.sources), outcome.written, found, refuted=refuted)
        self.blame[:] = [outcome.key_of(s) for s in kept]

    def _named(self, found: Findings) -> bool:
        """Name the liars of a copy that passed its check again; True."""
        refresh, outcome = self.refresh, self.outcome
        for liar, ranges in found.liars.items():
            shown = ", ".join(f"{start}-{end - 1}" for start, end in ranges[:4])
            reason = (
                f"sent bytes {shown} of {refresh.name} that differ from the other sources' "
                "(the copy passed its check without them)"
            )
            log_event(many_log, "warning", "refresh_source_lied", url=liar.url, reason=reason)
            self.liar_found(outcome.key_of(liar), reason)
        log_event(
            many_log, "info", "refresh_repaired", file=refresh.name, rewritten=found.rewritten
        )
        return True

    async def _judge_two(
        self,
        sources: list[Source],
        live: list[int],
        voice: list[str],
        differing: list[Difference],
        fd: int,
        ask: Opener,
    ) -> dict[Source, list[tuple[int, int]]] | None:
        """Two live voices (sources, or hosts: :func:`~tracker.multisource.piececheck.voices`)
        that differ: the differing ranges taken from the first and the copy checked again,
        then (when that fails) from the second; the side whose bytes pass is honest, the
        other one lied (:func:`two_source_liar`, :func:`blamed`). None (not repaired) when
        neither passes. Only the differing bytes are fetched again, each range from the
        side's source that took part in it."""
        refresh = self.refresh
        holders = {(d.start, d.end): d.owner for d in differing}  # whose bytes are on disk
        sides = list(dict.fromkeys(voice[i] for i in live))
        passed: list[bool | None] = []
        for side in sides:
            wanted = side_spans(differing, holders, side, voice, live)
            if not wanted:
                passed.append(False)  # the copy as it failed: every differing byte is its
                continue
            sent = True
            for sender, spans in wanted.items():
                whole = await rewrite(sources[sender], spans, fd, ask, self.peers.read_timeout)
                # what it wrote before it failed is on disk too: its spans are no longer
                # the other side's, which rewrites them all in its turn
                holders.update(dict.fromkeys(spans, sender))
                if not whole:
                    sent = False
                    break
            if not sent:
                passed.append(None)
                continue
            try:
                await refresh.recheck()
            except ArchiveInvalid as exc:
                url = sources[next(iter(wanted))].url  # a source of the side that failed
                log_event(many_log, "warning", "refresh_side_failed", url=url, reason=exc.reason)
                passed.append(False)
                continue
            except CacheError as exc:  # short of what vouches for it: no verdict on the side
                url = sources[next(iter(wanted))].url
                log_event(many_log, "warning", "refresh_side_failed", url=url, reason=str(exc))
                passed.append(None)
                continue
            passed.append(True)
            break
        liar = two_source_liar(passed)
        if liar is None:
            log_event(
                many_log, "warning", "refresh_not_repaired", file=refresh.name, sides=len(passed)
            )
            return None
        honest = {i for i, v in enumerate(voice) if v == sides[1 - liar]}
        return {sources[i]: ranges for i, ranges in blamed(differing, honest).items()}
