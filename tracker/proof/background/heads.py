"""Head reads: redirect mode's proof of the copies it could hand out (docs/architecture.md,
"Proven archives").

In redirect mode the tracker never holds the bytes, but an archive's manifest comes before
its accounts. A group that sets ``trust.require`` above ``structure`` (:func:`proven_only`)
ranks only the copies proven here (:class:`tracker.ordering.screens.ProvenOnly`). Every second
:class:`HeadProofs` asks :func:`tracker.proof.background.headreads.heads_due` which copies of the
best full and incremental such a group would rank were every copy proven have not been read yet, and
reads each from the start, through the archive check with its proof (``prove``, the files layer's
head check, passed in), until the manifest ends or ``manifest_read`` bytes came. A copy
below its group's level (a manifest that does not decode, a name its lattice hash does not
give, a bank hash that does not recompute) is kept out of the ranking
(:meth:`tracker.ordering.index.Index.disprove`) and its source shows the reason; a copy that
reaches it is kept as proven and ranked (:meth:`tracker.ordering.index.Index.prove`), once per
archive and source. A reload that lowers the level brings back the copies refused only for
the old one, with the proof their read gave. A read that fails for a reason
that is not the archive's (the source busy, unreachable, an answer that is not the file) is
tried again later. Every read goes through the proxy's upstream client (credentials only to
their origin, the egress policy) within the source's ``source_limits``, like a speed test.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from typing import TypeVar

import attrs
import trio

from tracker.config.schema import Config, TargetGroup
from tracker.errors import (
    ArchiveInvalid,
    SourceBusy,
    SourceFailed,
    TransportError,
    UpstreamError,
)
from tracker.net.bodyreads import body_chunks
from tracker.net.exchange import source_failures
from tracker.observability.logs import log_event
from tracker.ordering.index import Index, TargetKey
from tracker.proof.background.headreads import HeadRead, failures_kept, heads_due
from tracker.proof.background.rounds import CHECK_EVERY, RETRY_AFTER, Rounds
from tracker.proof.cluster.clustervotes import ClusterVotes
from tracker.proof.levels import NOT_LOADABLE, Level, Proof, not_loadable, shortfall
from tracker.proxy.upstream import DownloadClients, ask_source, group_asking, size_problem

log = logging.getLogger("tracker.proof")

Copy = tuple[TargetKey, str]
#: A read or a decision of one copy, given the config and the copy's group as they are when
#: its turn comes (:meth:`HeadProofs._step`).
Work = Callable[[Config, TargetGroup], Awaitable[int]]
_V = TypeVar("_V")

#: ``prove(read, name, limit)``: the proof of the archive ``name`` whose raw bytes
#: ``read(n)`` returns, from at most ``limit`` of them (ArchiveInvalid: it fails).
Prove = Callable[[Callable[[int], bytes], str, int], Proof]

#: Copies remembered as proven, refused, awaiting their votes, or whose read failed lately
#: (each the oldest forgotten first, and out of the index's marks with it).
MAX_KEPT = 4096
#: Longest one head read may take, whatever its size.
READ_FOR = 300.0
#: Head reads (or questions of votes) in flight at once, over every group.
READS_AT_ONCE = 4


#: Bytes of distinct epoch stakes the head reads' proofs hold at most (a cluster's fulls and
#: incrementals of one epoch share one block, ~180 KB on mainnet; forged copies each bring
#: their own, up to ~1.2 MB).
MAX_HELD_STAKES = 64 * 1024**2
#: What a proof's epoch stakes become when they were let go for room: a copy whose lift
#: needs them is read again.
DROPPED = b""


class SharedStakes:
    """One object for equal epoch stakes (:attr:`Proof.epoch_stakes`), and a bound on the
    bytes of distinct ones held: the copies of one archive, and the archives of one epoch,
    read from hundreds of sources hold one block between them, not one each; past
    :data:`MAX_HELD_STAKES`, the least recently seen are let go (:meth:`shared` says which,
    for their holders to drop)."""

    def __init__(self, most: int | None = None) -> None:
        self._held: OrderedDict[bytes, bytes] = OrderedDict()
        self._bytes = 0
        self._most = MAX_HELD_STAKES if most is None else most

    def shared(self, proof: Proof) -> tuple[Proof, list[bytes]]:
        """``proof`` with the epoch stakes equal ones held before are (itself otherwise),
        and the stakes let go to make room for its own."""
        stakes = proof.epoch_stakes
        if not stakes:
            return proof, []
        held = self._held.get(stakes)
        if held is not None:
            self._held.move_to_end(stakes)
            return attrs.evolve(proof, epoch_stakes=held), []
        self._held[stakes] = stakes
        self._bytes += len(stakes)
        gone = []
        while self._bytes > self._most and len(self._held) > 1:
            _, old = self._held.popitem(last=False)
            self._bytes -= len(old)
            gone.append(old)
        return proof, gone


class HeadProofs(Rounds):
    """The head-read loop of one tracker in redirect mode; started by the service."""

    def __init__(
        self,
        config: Callable[[], Config],
        index: Index,
        clients: DownloadClients,
        prove: Prove,
        *,
        every: float = CHECK_EVERY,
        retry_after: float = RETRY_AFTER,
        votes: ClusterVotes | None = None,
    ) -> None:
        super().__init__(config, index, every, retry_after)
        self._votes = votes
        #: Copies whose manifest is proven, awaiting the cluster's votes (an RPC failed):
        #: out of the ranking meanwhile, asked again each round (the votes' own back-off).
        self._voting: dict[Copy, tuple[HeadRead, Proof]] = {}
        self._clients = clients
        self._prove = prove
        #: What each copy read was proven to (bounded; the oldest forgotten first).
        self.proven: OrderedDict[tuple[TargetKey, str], Proof] = OrderedDict()
        #: The read of each proven copy, to decide it again under a raised level.
        self._proven_reads: OrderedDict[Copy, HeadRead] = OrderedDict()
        self._refused: OrderedDict[tuple[TargetKey, str], str] = OrderedDict()
        #: The refused copies whose proof was only below the level (not a failed check),
        #: with their read and proof: a reload that lowers the level brings them back.
        self._short: OrderedDict[Copy, tuple[HeadRead, Proof]] = OrderedDict()
        #: When each copy's read last failed for the source's reason: within ``retry_after``
        #: only, at most MAX_KEPT (:func:`~tracker.proof.background.headreads.failures_kept`).
        self._tried: dict[tuple[TargetKey, str], float] = {}
        self._stakes = SharedStakes()
        #: Copies whose read (or votes) is in flight, and how many may be at once.
        self._reading: set[Copy] = set()
        # Each read in the background, at most READS_AT_ONCE at once: a slow source holds
        # back its own copy, never the next round's.
        self._at_once = trio.CapacityLimiter(READS_AT_ONCE)

    async def round(self, nursery: trio.Nursery | None = None) -> int:
        """Read every head due now: in ``nursery`` (None: one after another, awaited); how
        many copies were decided by the reads awaited."""
        decided = 0
        config = self._config()
        step = partial(self._step, nursery)
        self._forget_stale()
        for group in config.target_groups:
            gated = proven_only(config, group)
            self._index.rank_proven_only(group.group, gated)
            if not gated:
                self._lowered(None, group.group)
                continue
            loadable_by = group.trust.loadable_by
            self._below_now(config.required_level(group), group.group, loadable_by)
            self._lowered(config.required_level(group), group.group, loadable_by)
            for read, proof in [v for v in self._voting.values() if v[0].key.group == group.group]:
                if read.copy not in self._reading:
                    decided += await step(read, partial(self._decide, read=read, proof=proof))
            for read in self.due(group):
                decided += await step(read, partial(self._read, read=read))
        self.rounds += 1
        return decided

    async def _step(self, nursery: trio.Nursery | None, read: HeadRead, work: Work) -> int:
        """Run ``work`` on ``read``'s copy: awaited (None) or started in ``nursery``, the copy
        in flight meanwhile (not read again, counted among its archive's sources). Its turn
        may come long after the round (:data:`READS_AT_ONCE`, each read up to
        :data:`READ_FOR`): it is given the config of then (:meth:`_in_force`)."""
        self._reading.add(read.copy)

        async def done() -> int:
            try:
                async with self._at_once:
                    now = self._in_force(read)
                    return 0 if now is None else await work(*now)
            except Exception as exc:
                # the last guard: what no rule of the read or the decision foresaw costs
                # this copy (tried again after retry_after), never the reads beside it
                self._failed(read.copy)
                if read.copy not in self._refused and read.copy not in self._voting:
                    # a refusal of a decision that raised half way (its votes) has no
                    # record left to clear it: the copy is unproven (out) until read again
                    self._index.disprove(*read.copy, None)
                log_event(log, "error", "head_read_error", url=read.file.url, exc_info=exc)
                return 0
            finally:
                self._reading.discard(read.copy)

        if nursery is None:
            return await done()
        nursery.start_soon(done)
        return 0

    def _in_force(self, read: HeadRead) -> tuple[Config, TargetGroup] | None:
        """The config in force and ``read``'s group in it, for a read or a decision whose
        turn came; None (skipped, logged) once a reload since its round removed the group or
        the source, or made the group read no heads. Never the group of the round: a read
        waiting its turn across a reload would send the old credentials, to a source the
        config may no longer have (docs/configuration.md: credentials go to the group's
        configured sources only)."""
        config = self._config()
        try:
            group = group_asking(config, read.key.group, self._index.lists(read.key))
        except UpstreamError as exc:
            log_event(log, "info", "head_read_skipped", url=read.file.url, reason=exc)
            return None
        # a reload made the group rank its copies unread: nothing to prove any more
        return (config, group) if proven_only(config, group) else None

    def _below_now(self, required: Level, group: str, loadable_by: str | None) -> None:
        """Put every proven copy of ``group`` below ``required`` (a reload raised its
        ``trust.require``, or set ``trust.loadable_by``) back to be decided, with the proof its
        read gave: out of the ranking until the votes (``cluster``) carry it, if they can."""
        for copy, proof in list(self.proven.items()):
            read = self._proven_reads.get(copy)
            if copy[0].group != group or read is None:
                continue
            full = read.file.name.is_full
            if shortfall(proof, required, is_full=full, loadable_by=loadable_by) is not None:
                del self.proven[copy]
                self._index.prove(*copy, proven=False)
                self._await_votes(read, proof)

    def _lowered(self, required: Level | None, group: str, loadable_by: str | None = None) -> None:
        """Bring back every copy of ``group`` refused only for being below a level that a
        reload lowered to ``required`` (None: the group requires nothing any more), or for a
        ``trust.loadable_by`` it dropped, and those awaiting votes no longer required: proven
        as their head read gave them."""
        short = [*self._short.items(), *(() if required is not None else self._voting.items())]
        for copy, (read, proof) in short:
            if copy[0].group != group:
                continue
            full = read.file.name.is_full
            if (
                required is None
                or shortfall(proof, required, is_full=full, loadable_by=loadable_by) is None
            ):
                self._short.pop(copy, None)
                self._refused.pop(copy, None)
                self._voting.pop(copy, None)
                self._proved(read, proof)
            elif self._refused.get(copy, "").startswith(NOT_LOADABLE) and not not_loadable(
                proof, loadable_by
            ):
                # Refused for a `trust.loadable_by` the group dropped: decided again (the
                # votes are asked then, where its level needs them).
                self._short.pop(copy, None)
                self._refused.pop(copy, None)
                self._await_votes(read, proof)

    def due(self, group: TargetGroup) -> list[HeadRead]:
        """The head reads of ``group`` due now."""
        done = self.proven.keys() | self._refused.keys() | self._voting.keys() | self._reading
        return heads_due(
            self._index.unproven_best(group.group),
            done=done,
            tried=self._tried,
            retry_after=self._retry_after,
            now=self._index.clock(),
        )

    async def _read(self, config: Config, group: TargetGroup, read: HeadRead) -> int:
        """Prove ``read``'s copy; 1 when decided (proven or refused), 0 when the read failed
        for the source's reason (logged; tried again after ``retry_after``)."""
        url = read.file.url
        try:
            proof = await prove_copy(self._clients, group, read, self._prove, config.manifest_read)
        except ArchiveInvalid as exc:
            self._keep(self._refused, read.copy, str(exc))
            self._index.disprove(read.key, read.file.bare_name, str(exc))
            log_event(log, "warning", "archive_disproven", url=url, reason=exc)
            return 1
        except (SourceBusy, SourceFailed, TransportError) as exc:
            self._failed(read.copy)
            log_event(log, "info", "head_read_failed", url=url, reason=exc)
            return 0
        return await self._decide(config, group, read, proof)

    async def _decide(
        self, config: Config, group: TargetGroup, read: HeadRead, proof: Proof
    ) -> int:
        """Keep ``read``'s copy as proven or refuse it; with ``require: cluster``, after
        the cluster's votes (:class:`ClusterVotes`). 1 when decided, 0 when the votes could
        not be read yet (the copy stays out of the ranking with the reason meanwhile)."""
        url = read.file.url
        required, loadable_by = config.required_level(group), group.trust.loadable_by
        self._voting.pop(read.copy, None)
        if required >= Level.CLUSTER and proof.epoch_stakes == DROPPED:
            # its stakes were let go for room: read again when due (unproven meanwhile)
            self._index.disprove(read.key, read.file.bare_name, None)
            return 0
        proof = self._shared(proof)
        # A copy its group's validators cannot load is refused whatever the votes say.
        unloadable = not_loadable(proof, loadable_by) is not None
        if required >= Level.CLUSTER and not unloadable:
            if self._votes is not None:
                # the group's own cluster's votes (its rpc, else the top-level one)
                voter = self._votes.of(group.group)
                proof = await voter.lift(read.file.name.slot, proof)
                # other reads may have let its stakes go meanwhile: held (and counted) again
                proof = self._shared(proof)
            elif proof.level < Level.CLUSTER:
                proof = attrs.evolve(proof, note="cluster not proven: no votes read here")
        full = read.file.name.is_full
        reason = shortfall(proof, required, is_full=full, loadable_by=loadable_by)
        if reason is not None:
            self._index.disprove(read.key, read.file.bare_name, reason)
            if proof.level >= Level.MANIFEST and not proof.tallied and not unloadable:
                self._await_votes(read, proof)  # no tally yet: ask again
                return 0
            self._keep(self._refused, read.copy, reason)
            self._keep(self._short, read.copy, (read, proof))
            log_event(log, "warning", "archive_disproven", url=url, reason=reason)
            return 1
        self._proved(read, proof)
        log_event(log, "info", "archive_proven", url=url, proven=proof.level.label)
        return 1

    def _await_votes(self, read: HeadRead, proof: Proof) -> None:
        """Keep ``read``'s copy (refused meanwhile, or unproven) to ask its votes again each
        round; past :data:`MAX_KEPT` the oldest such copy is forgotten and out of the index's
        refusals too: unproven, so out of the ranking until read again when due (its
        refusal had no record left to clear it, and stayed in the index for good)."""
        self._voting.pop(read.copy, None)  # the newest: the last forgotten
        self._voting[read.copy] = (read, proof)
        while len(self._voting) > MAX_KEPT:
            old = next(iter(self._voting))
            del self._voting[old]
            self._index.disprove(*old, None)

    def _failed(self, copy: Copy) -> None:
        """``copy``'s read failed for the source's reason now: not read again within
        ``retry_after``; what is remembered of failures pruned once past :data:`MAX_KEPT`
        (a round's reads, thousands of discovered nodes refusing connections, come between
        two rounds' prunings)."""
        self._tried.pop(copy, None)  # the newest: the last forgotten
        self._tried[copy] = now = self._index.clock()
        if len(self._tried) > MAX_KEPT:
            self._tried = failures_kept(
                self._tried, now=now, retry_after=self._retry_after, most=MAX_KEPT
            )

    def _forget_stale(self) -> None:
        """Forget what no read will need: failures past their retry (or past
        :data:`MAX_KEPT`), and the refusals (and copies awaiting votes) of targets the
        index no longer lists (dead, or no longer configured), out of its refusals with
        them. A target back later has those copies read again, unproven (out of the
        ranking) meanwhile: a refused copy is never ranked unread. Its proven copies are
        kept (bounded as they are): a target back after an outage is ranked at once."""
        now = self._index.clock()
        self._tried = failures_kept(
            self._tried, now=now, retry_after=self._retry_after, most=MAX_KEPT
        )
        for kept in (self._refused, self._voting):
            for copy in [c for c in kept if not self._index.lists(c[0])]:
                del kept[copy]
                self._short.pop(copy, None)
                self._index.disprove(*copy, None)

    def kept(self) -> dict[str, int]:
        """How many copies each record of the head reads holds (``proven``, ``refused``,
        ``voting``: awaiting votes, ``tried``: failed lately), each at most
        :data:`MAX_KEPT`."""
        return {
            "proven": len(self.proven),
            "refused": len(self._refused),
            "voting": len(self._voting),
            "tried": len(self._tried),
        }

    def _proved(self, read: HeadRead, proof: Proof) -> None:
        """``read``'s copy reached its group's level: ranked (the oldest proven copy past
        :data:`MAX_KEPT` forgotten, out of the ranking until read again)."""
        self._index.disprove(read.key, read.file.bare_name, None)
        self._index.prove(read.key, read.file.bare_name)
        self._keep(self.proven, read.copy, proof)
        self._keep(self._proven_reads, read.copy, read)
        for copy in [c for c in self._proven_reads if c not in self.proven]:
            del self._proven_reads[copy]
            self._index.prove(*copy, proven=False)

    def _shared(self, proof: Proof) -> Proof:
        """``proof`` with its epoch stakes shared (:class:`SharedStakes`); the proofs kept
        whose stakes were let go for room hold :data:`DROPPED` instead."""
        proof, gone = self._stakes.shared(proof)
        for stakes in gone:
            for kept in (self._voting, self._short):
                for copy, (read, held) in list(kept.items()):
                    if held.epoch_stakes is stakes:
                        kept[copy] = (read, attrs.evolve(held, epoch_stakes=DROPPED))
            for copy, held in list(self.proven.items()):
                if held.epoch_stakes is stakes:
                    self.proven[copy] = attrs.evolve(held, epoch_stakes=DROPPED)
        return proof

    def _keep(self, kept: OrderedDict[Copy, _V], copy: Copy, value: _V) -> None:
        kept[copy] = value
        kept.move_to_end(copy)
        while len(kept) > MAX_KEPT:
            old, _ = kept.popitem(last=False)
            if kept is self._refused:  # out of the index's refusals too: read again if due
                self._index.disprove(old[0], old[1], None)
        self._tried.pop(copy, None)


def proven_only(config: Config, group: TargetGroup) -> bool:
    """Whether ``group`` reads heads and ranks only the copies they prove: where no disk
    cache checks the copies handed out (redirect mode, and proxy mode without
    ``proxy_snapshot_cache_dir``, whose every answer is relayed unchecked), when the group
    sets a ``trust.require`` above ``structure`` (redirect mode checks no archive by
    default, as the Go tracker: a head read costs a source up to ``manifest_read`` bytes per
    copy)."""
    asked = group.trust.asked  # `trust.loadable_by` alone asks for `manifest`
    cached = config.proxy_snapshot_downloads and bool(config.proxy_snapshot_cache_dir)
    return not cached and asked is not None and asked > Level.STRUCTURE


async def prove_copy(
    clients: DownloadClients, group: TargetGroup, read: HeadRead, prove: Prove, limit: int
) -> Proof:
    """Read the head of ``read``'s copy and prove it (``prove`` in a worker thread, fed the
    body as it arrives, at most ``limit`` bytes). Raises ArchiveInvalid when the copy fails,
    SourceBusy when its source has no free transfer slot, SourceFailed or TransportError
    when it gives no usable answer; cancellation stops the read and the proof."""
    # with the serving origin's slot (after redirects), freed when the answer closes
    answer = await ask_source(clients, group, read.file, read.source, "GET", {})
    response = answer.response
    try:
        problem = size_problem(response, read.file.size)
        if response.status_code != 200:
            problem = f"answered {response.status_code} to a GET of the archive"
        if problem is not None:
            raise SourceFailed(problem)
        silence = f"the head read took over {READ_FOR:g}s"
        with source_failures("", silence), trio.fail_after(READ_FOR):
            async with body_chunks(response) as chunks:
                name = read.file.bare_name
                return await _prove_stream(chunks, name, prove, limit, answer.pacer.pace)
    finally:
        await answer.aclose()


async def _prove_stream(
    chunks: AsyncIterator[bytes],
    name: str,
    prove: Prove,
    limit: int,
    pace: Callable[[int], Awaitable[None]],
) -> Proof:
    """Run ``prove`` in a worker thread over the chunks as they arrive; the thread's reads
    wait on this task (``trio.from_thread``), so at most one chunk is in memory at a time."""
    pending = bytearray()
    ended = False
    failed: list[BaseException] = []

    async def next_chunk() -> bytes:
        nonlocal ended
        if ended:
            return b""
        try:
            chunk = await chunks.__anext__()
        except StopAsyncIteration:
            ended = True
            return b""
        except BaseException as exc:
            failed.append(exc)  # the source's failure, not the archive's
            raise
        await pace(len(chunk))  # the source's max_rate, as for any transfer
        return chunk

    def read(count: int) -> bytes:
        while len(pending) < count and not ended:
            got = trio.from_thread.run(next_chunk)
            if not got:
                break
            pending.extend(got)
        data = bytes(pending[:count])
        del pending[:count]
        return data

    try:
        return await trio.to_thread.run_sync(prove, read, name, limit)
    except ArchiveInvalid:
        if failed:
            raise failed[0] from None
        raise
