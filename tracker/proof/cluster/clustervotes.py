"""The cluster level: the stake whose votes carry an archive's bank hash, or the finality
certificate of its block, asked of the RPC (docs/architecture.md, "The cluster level";
docs/http-api.md, "The cluster level").

Each RPC is first asked ``getAgGenesisCert`` (:mod:`tracker.proof.cluster.consensus`; an
answer that reports the migration is kept for good): a slot at or before the Alpenglow
genesis is proven by votes, read only from the blocks up to the genesis; a slot after it
only by a finality certificate (:mod:`tracker.proof.cluster.finality`), vote transactions
counting for nothing there.

For an archive at slot S with bank hash H (its ``manifest`` proof), :class:`ClusterVotes`
asks each configured RPC (``rpc`` and every ``cluster_proof.also_rpc``) for the blocks
S+1 .. S+``blocks`` (``getBlock``, json encoding: raw instruction data; a skipped slot
answers an error and is passed over) and for the current epoch's stakes
(``getVoteAccounts``), and weighs the votes for (S, H) (:mod:`tracker.proof.formats.tally`). The
archive reaches ``cluster`` when every RPC's votes carry at least 2/3 of its active stake;
an RPC that fails, lies in a way that shows (a malformed answer) or disagrees with another
leaves the archive at ``manifest`` with the reason in its note.

Bounded: each answer read up to a size cap and decoded one transaction at a time in a worker
thread (at most :data:`PARSE_THREADS` at once), in text of one byte a character
(:func:`~tracker.net.limits.narrow_text`); the answers held at once, read or waiting for a
worker thread, within :data:`ANSWERS_HELD` bytes for the whole tracker, whatever the lifts
and RPCs at once; at most ``blocks`` getBlock calls per RPC, :data:`CONCURRENT_BLOCKS` at
once, all within ``deadline`` seconds per archive; a tally kept per (slot, hash) (at most
:data:`MAX_KEPT`), a failure (an RPC's rank map's too) tried again after a back-off that
doubles from ``retry_after`` up to :data:`MAX_BACKOFF` (:func:`backoff_wait`).
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from contextlib import nullcontext
from typing import Any, TypeVar

import attrs
import base58
import httpx
import trio

from tracker.config.schema import Config
from tracker.core.text import one_line
from tracker.errors import (
    CertificateInvalid,
    ProbeError,
    RpcError,
    TransportError,
    first_leaf,
)
from tracker.net.bodyreads import BodyBudget, BodyShare, body_chunks, body_share
from tracker.net.exchange import stream
from tracker.net.httpclients import origin
from tracker.net.limits import status_reason
from tracker.observability.logs import log_event
from tracker.observability.redact import redact_url
from tracker.proof.cluster.certrelays import relays_decide, weakest
from tracker.proof.cluster.consensus import (
    MAX_GENESIS_ANSWER,
    Genesis,
    by_certificate,
    genesis_answer,
    migration_known,
    migration_of,
    tally_holds,
    vote_blocks,
)
from tracker.proof.cluster.finality import (
    MAX_DOCUMENT,
    Document,
    EpochRanks,
    Finality,
    candidates,
    document,
    epoch_rank_map,
    epoch_ranks,
    judge_rpc,
    signers,
    vote_accounts_data,
)
from tracker.proof.cluster.voteanswers import block_votes, epoch_vote_stakes, vote_stakes
from tracker.proof.formats.alpenglow import EpochVoters, voters_digest
from tracker.proof.formats.tally import (
    SlotVotes,
    Tally,
)
from tracker.proof.levels import Level, Proof

log = logging.getLogger("tracker.proof")

#: The largest getBlock answer read (a busy mainnet block in json is a few MB).
MAX_BLOCK = 64 * 1024**2
#: The largest getVoteAccounts answer read (mainnet's ~1,500 accounts are ~1 MB).
MAX_VOTE_ACCOUNTS = 32 * 1024**2
#: getBlock calls in flight at once per RPC (the blocks are read in batches of this many).
CONCURRENT_BLOCKS = 4
#: Answers decoded at once in worker threads (for the whole tracker).
PARSE_THREADS = 2
#: Bytes of RPC answers held at once, being read or waiting for a worker thread (for the
#: whole tracker; at least :data:`MAX_BLOCK`): each read takes its answer's Content-Length
#: once its head is read (its cap when it has none) and gives back what its answer did not
#: need once read. Each lift holds up to :data:`CONCURRENT_BLOCKS` getBlock answers per
#: RPC, and lifts run at once (the head reads', the held copies', refreshes'): without one
#: budget, lifts times RPCs times 64 MiB (docs/http-api.md, "Limits").
ANSWERS_HELD = 256 * 1024**2
#: The part of :data:`ANSWERS_HELD` one RPC's server holds at once (at least
#: :data:`MAX_BLOCK`): one that draws its answers out until the deadline leaves the rest to
#: the others' reads, of every lift and group.
ANSWERS_HELD_BY_ONE = ANSWERS_HELD // 2
#: (slot, hash) tallies remembered (the oldest forgotten first).
MAX_KEPT = 4096
#: The epochs' stakes whose digests are kept (each at most 4 MiB, held while kept): an
#: epoch's copies share one; two epochs meet at a boundary.
_DIGESTS_KEPT = 8
#: The first wait before a failed (slot, hash) is asked again; it doubles to MAX_BACKOFF.
RETRY_AFTER = 60.0
MAX_BACKOFF = 3600.0

#: How long an RPC's rank map is used again before it is read anew (seconds).
RANKS_FOR = 600.0
#: How long an RPC's answer that it has not migrated (or has no ``getAgGenesisCert``) is
#: believed (seconds): a copy the cluster level cannot lift now is lifted again every second,
#: and each lift asked every such RPC again.
NOT_MIGRATED_FOR = 10.0

_PARSE = trio.CapacityLimiter(PARSE_THREADS)
_ANSWERS = BodyBudget(ANSWERS_HELD, per_owner=ANSWERS_HELD_BY_ONE)
Key = tuple[int, str]
#: A question, the RPC URLs that were asked it and the certificate relays read for it (none
#: for the votes): what is kept and what backs off, so that a reload that changes either asks
#: again.
AskedOfRpcs = tuple[Key, tuple[str, ...], tuple[str, ...]]
_T = TypeVar("_T")
_V = TypeVar("_V")


@attrs.frozen
class _Failure:
    reason: str
    until: float
    wait: float


class ClusterVotes:
    """The cluster level of archives, asked of the configured RPCs and kept per (slot, hash)."""

    def __init__(
        self,
        config: Callable[[], Config],
        client: httpx.AsyncClient,
        *,
        retry_after: float | None = None,
    ) -> None:
        self._config = config
        self._client = client
        #: The first wait after a failure (None: :data:`RETRY_AFTER`, read when built).
        self._retry_after = RETRY_AFTER if retry_after is None else retry_after
        # What the RPCs in force answered, kept by (slot, hash) and by those RPCs: what
        # others said is no answer of the ones configured now (a reload that drops a lying
        # RPC, or adds one, asks again; their count is the answers' count)
        # (a tally is kept with the genesis the RPCs reported when it was read: one read
        # before the migration counted blocks the cluster cleared since, tally_holds)
        self._kept: OrderedDict[AskedOfRpcs, tuple[Genesis | None, tuple[Tally, ...]]] = (
            OrderedDict()
        )
        self._certified: OrderedDict[AskedOfRpcs, tuple[Finality, ...]] = OrderedDict()
        self._failed: OrderedDict[AskedOfRpcs, _Failure] = OrderedDict()
        # the digests of the stakes lifted last, by the object (copies of one epoch share
        # one: heads.SharedStakes), so that a lift backing off hashes no megabyte again
        self._digests: OrderedDict[int, tuple[bytes, str]] = OrderedDict()
        #: The questions being asked now, each once: another lift of one waits for it.
        self._asking: dict[AskedOfRpcs, trio.Event] = {}
        #: Each RPC's report of the migration, kept once it is one (it never changes).
        self._genesis: dict[str, Genesis] = {}
        #: RPCs whose kept report another RPC contradicted: asked again at the next question
        #: (after its back-off), not believed for good (one wrong answer, another cluster's
        #: node behind a load balancer, held every archive below cluster until a restart).
        self._contradicted: set[str] = set()
        #: Each RPC's answer that it has not migrated (None) or cannot say (UNSUPPORTED),
        #: and when it was read (believed for :data:`NOT_MIGRATED_FOR`).
        self._unmigrated: dict[str, tuple[str | None, float]] = {}
        #: Each RPC's rank map and when it was read.
        self._ranks: dict[str, tuple[EpochRanks, float]] = {}
        #: Each RPC's rank map that could not be read: why, until when it is not read again
        #: and the wait that was (a hostile RPC's 20,000 keys cost seconds of a parse thread
        #: to decode: the wait doubles, :func:`backoff_wait`).
        self._ranks_failed: dict[str, _Failure] = {}
        #: RPC calls made (tests count them).
        self.calls = 0

    def rpcs(self, group: str | None = None) -> tuple[str, ...]:
        """The RPC URLs asked for ``group``'s archives: its cluster's ``rpc`` then each of
        its witnesses, each RPC once (:meth:`tracker.config.schema.Config.cluster_rpcs`;
        None: the top-level ``rpc`` and ``cluster_proof.also_rpc``)."""
        return self._config().cluster_rpcs(group)

    def of(self, group: str) -> GroupVotes:
        """The voter of ``group``'s archives: these votes, asked of that group's cluster's
        RPCs (its tallies and back-off are these, kept by the RPCs asked)."""
        return GroupVotes(self, group)

    async def lift(self, slot: int, proof: Proof, group: str | None = None) -> Proof:
        """``proof`` at ``cluster`` when the votes for (``slot``, its bank hash) carry 2/3
        of the stake (TowerBFT), or when a finality certificate for its block checks
        against every RPC's rank map (after the Alpenglow migration); else ``proof`` with
        ``voted_stake`` (when known) and a note saying why not. A proof below ``manifest``
        or without a bank hash is returned as it is. Asked of ``group``'s cluster's RPCs
        (:meth:`rpcs`), its certificates read from its cluster's relays, which must agree
        (:meth:`~tracker.config.schema.Config.group_certificates`): another cluster's votes
        or certificates prove nothing of its archives."""
        if proof.level < Level.MANIFEST or proof.bank_hash is None:
            return proof
        urls = self.rpcs(group)
        if not urls:
            return attrs.evolve(proof, note="cluster not proven: no rpc configured")
        bank_hash = _hash_bytes(proof.bank_hash)
        if bank_hash is None:
            return attrs.evolve(proof, note="cluster not proven: the bank hash is not base58")
        # the group's own cluster's certificates: another cluster's never verify here
        relays = self._config().group_certificates(group)
        by_votes: AskedOfRpcs = ((slot, proof.bank_hash), urls, ())
        by_cert: AskedOfRpcs = (self._certificate_key(slot, proof), urls, relays)
        kept = self._kept.get(by_votes)
        if kept is not None:  # asked before: it stands while the migration left it so
            genesis, failed = await self._migration_for(urls, kept[0])
            blocks = self._config().cluster_proof.blocks
            if tally_holds(slot, blocks, kept[0], genesis):
                return judged(proof, kept[1], urls)
            if failed is not None:
                return attrs.evolve(proof, note=f"cluster not proven: {failed}")
            self._kept.pop(by_votes, None)
        finals = self._certified.get(by_cert)
        if finals is not None:  # kept only once it reached cluster
            return judged_finality(proof, finals, urls)
        now = trio.current_time()
        for asked in (by_votes, by_cert):
            failure = self._failed.get(asked)
            if failure is not None and now < failure.until:  # backing off: ask nothing
                left = f"asked again in {failure.until - now:.0f}s"
                return attrs.evolve(proof, note=f"cluster not proven: {failure.reason} ({left})")
        asking = self._asking.get(by_votes)
        if asking is not None:  # the same question is out: its answer is this one's
            await asking.wait()
            return await self.lift(slot, proof, group)
        self._asking[by_votes] = trio.Event()
        try:
            return await self._lift(slot, proof, bank_hash, urls, relays)
        finally:
            self._asking.pop(by_votes).set()

    async def holds(self, slot: int, proof: Proof, group: str | None = None) -> bool:
        """True while the tally of the votes for (``slot``, its bank hash) that ``proof``
        carries (``cluster`` by votes, or a minority; kept here, or read back from a cached
        copy's proof file) still proves what it did: the Alpenglow migration the RPCs of
        ``group`` report leaves the blocks it was read from as they were
        (:func:`~tracker.proof.cluster.consensus.tally_holds`; one read back from a file was
        read before any migration known, as far as anything says). An RPC that cannot say
        now changes nothing (:func:`~tracker.proof.cluster.consensus.migration_known`).
        False: weigh the archive again (:meth:`lift`, from what its check proved)."""
        urls = self.rpcs(group)
        if not urls or proof.bank_hash is None:
            return True  # nothing asked: nothing learned that it rested on
        key: AskedOfRpcs = ((slot, proof.bank_hash), urls, ())
        kept = self._kept.get(key)
        then = kept[0] if kept is not None else None
        genesis, _failed = await self._migration_for(urls, then)
        if tally_holds(slot, self._config().cluster_proof.blocks, then, genesis):
            return True
        self._kept.pop(key, None)
        return False

    async def _migration_for(
        self, urls: tuple[str, ...], then: Genesis | None
    ) -> tuple[Genesis | None, RpcError | None]:
        """The migration a tally read while ``urls`` reported ``then`` is judged by, within
        ``cluster_proof.deadline``: theirs now, else (with the failure) what is known of it
        (:func:`~tracker.proof.cluster.consensus.migration_known`: a proven archive is not
        unproven by this tracker's own outage, docs/http-api.md, "Two consensus kinds")."""
        ends = trio.current_time() + self._config().cluster_proof.deadline
        try:
            return await self.migration(urls, ends), None  # kept, or believed a while
        except RpcError as exc:
            reported = [self._genesis[u] for u in urls if u in self._genesis]
            return migration_known(then, reported), exc

    async def _lift(
        self,
        slot: int,
        proof: Proof,
        bank_hash: bytes,
        urls: tuple[str, ...],
        relays: tuple[str, ...],
    ) -> Proof:
        """:meth:`lift`'s questions, asked: all of them within one ``cluster_proof.deadline``
        (the migration, the relays' certificate documents, every RPC's answer)."""
        ends = trio.current_time() + self._config().cluster_proof.deadline
        assert proof.bank_hash is not None
        key = (slot, proof.bank_hash)
        try:
            genesis = await self.migration(urls, ends)
        except RpcError as exc:
            return attrs.evolve(proof, note=f"cluster not proven: {exc}")
        if by_certificate(slot, genesis):
            assert genesis is not None
            return await self._lift_by_certificate(
                slot, proof, bank_hash, genesis, (urls, relays), ends
            )
        if genesis is not None and slot == genesis.slot:
            note = (
                f"cluster not proven: slot {slot} is the last TowerBFT block (the Alpenglow"
                " genesis); its votes are due in blocks after the migration, which count"
                " for nothing"
            )
            return attrs.evolve(proof, note=note)

        def votes_of(url: str) -> Awaitable[Tally]:
            return self.ask(url, slot, bank_hash, genesis)

        asked: AskedOfRpcs = (key, urls, ())
        try:
            tallies = await self._ask_all(asked, votes_of, "votes", ends)
        except RpcError as exc:
            return attrs.evolve(proof, note=f"cluster not proven: {exc}")
        _keep(self._kept, asked, (genesis, tallies))
        return judged(proof, tallies, urls)

    async def migration(self, urls: tuple[str, ...], ends: float) -> Genesis | None:
        """The Alpenglow genesis the RPCs report (None: not migrated), asked until ``ends``
        (trio's clock); an RPC's report is kept once it is one. RpcError (one line) when
        one fails or they disagree."""
        answers: dict[str, Genesis | str | None] = {}
        failed: list[RpcError] = []

        async def ask(url: str) -> None:
            kept = self._genesis.get(url)
            if kept is not None and url not in self._contradicted:
                answers[url] = kept
                return
            said = self._unmigrated.get(url)
            if said is not None and trio.current_time() < said[1] + NOT_MIGRATED_FOR:
                answers[url] = said[0]
                return
            try:
                answer = await self._answer(url, _GET_GENESIS, MAX_GENESIS_ANSWER, genesis_answer)
            except RpcError as exc:
                failed.append(RpcError(one_line(f"{redact_url(url)}: {exc}")))
                return
            self._contradicted.discard(url)
            if isinstance(answer, Genesis):
                self._genesis[url] = answer
                self._unmigrated.pop(url, None)
            else:
                self._genesis.pop(url, None)  # its report now is that it has not migrated
                self._unmigrated[url] = (answer, trio.current_time())
            answers[url] = answer

        key: AskedOfRpcs = ((-1, "getAgGenesisCert"), urls, ())
        failure = self._failed.get(key)
        now = trio.current_time()
        if failure is not None and now < failure.until:
            raise RpcError(f"{failure.reason} (asked again in {failure.until - now:.0f}s)")
        with trio.move_on_at(ends) as within:
            async with trio.open_nursery() as nursery:
                for url in urls:
                    nursery.start_soon(ask, url)
        if within.cancelled_caught and not failed:
            failed.append(RpcError(f"getAgGenesisCert was not answered within {self._deadline()}"))
        try:
            if failed:
                raise failed[0]
            try:
                genesis = migration_of({u: answers[u] for u in urls})
            except RpcError:
                # a report another contradicts is one RPC's word, not the genesis: each is
                # asked again (docs/http-api.md, "Two consensus kinds")
                self._contradicted.update(u for u in urls if u in self._genesis)
                raise
        except RpcError as exc:  # a disagreement too: asked again after the back-off
            self._back_off(key, failure, exc)
            raise
        self._failed.pop(key, None)
        return genesis

    async def _lift_by_certificate(
        self,
        slot: int,
        proof: Proof,
        bank_hash: bytes,
        genesis: Genesis,
        scope: tuple[tuple[str, ...], tuple[str, ...]],
        ends: float,
    ) -> Proof:
        urls, relays = scope
        block_id = _hash_bytes(proof.block_id) if proof.block_id is not None else None
        if block_id is None:
            note = (
                f"cluster not proven: slot {slot} is after the Alpenglow migration (slot"
                f" {genesis.slot}) and the manifest has no block id"
            )
            return attrs.evolve(proof, note=note)
        if not relays:
            note = f"cluster not proven: the RPC serves no finality certificate for slot {slot}"
            return attrs.evolve(proof, note=note)
        if proof.epoch_stakes is None:
            note = (
                f"cluster not proven: the manifest holds no stakes of slot {slot}'s epoch (the"
                " rank map its certificate is read in)"
            )
            return attrs.evolve(proof, note=note)
        try:
            voters = await trio.to_thread.run_sync(
                EpochVoters.from_bytes, proof.epoch_stakes, limiter=_PARSE
            )
        except CertificateInvalid as exc:
            return attrs.evolve(proof, note=f"cluster not proven: {exc}")
        asked: AskedOfRpcs = (self._certificate_key(slot, proof), urls, relays)
        before = self._failed.get(asked)  # a short certificate's wait doubles as a failure's
        try:
            docs = await self._documents(asked, slot, block_id, bank_hash, ends)

            async def finality_of(url: str) -> Finality:
                # each relay vouches for the block through its own certificate: every
                # distinct one must hold at every RPC (identical ones are weighed once)
                finals = [await self.certify(url, doc, voters, ends) for doc in docs]
                return weakest(finals)

            finals = await self._ask_all(asked, finality_of, "certificate", ends)
        except RpcError as exc:
            return attrs.evolve(proof, note=f"cluster not proven: {exc}")
        lifted = judged_finality(proof, finals, urls)
        if lifted.level == Level.CLUSTER:
            _keep(self._certified, asked, finals)
        else:  # a certificate short of its stake may be followed by one that is not: read again
            reason = (lifted.note or "").removeprefix("cluster not proven: ")
            self._back_off(asked, before, RpcError(reason))
        return lifted

    async def _documents(
        self, key: AskedOfRpcs, slot: int, block_id: bytes, bank_hash: bytes, ends: float
    ) -> tuple[Document, ...]:
        """The certificate documents of ``slot`` from every relay of ``key`` at once, each
        read until ``ends``, decided together against the manifest's block id and bank hash
        (:func:`~tracker.proof.cluster.certrelays.relays_decide`: every relay answered and
        all agree): the distinct ones to weigh, else RpcError (one line, backed off)."""
        relays = key[2]
        failure = self._failed.get(key)
        now = trio.current_time()
        if failure is not None and now < failure.until:
            raise RpcError(f"{failure.reason} (asked again in {failure.until - now:.0f}s)")
        answers: dict[str, Document | str] = {}
        with trio.move_on_at(ends):
            async with trio.open_nursery() as nursery:
                for prefix in relays:
                    nursery.start_soon(self._read_document, prefix, slot, answers)
        said = [
            (_relay_name(prefix), answers.get(prefix, _too_late(prefix, slot))) for prefix in relays
        ]
        verdict = relays_decide(said, slot, block_id, bank_hash)
        if verdict.refused is None:
            return verdict.documents
        error = RpcError(one_line(verdict.refused))
        self._back_off(key, failure, error)
        raise error

    async def _read_document(
        self, prefix: str, slot: int, answers: dict[str, Document | str]
    ) -> None:
        """The document of ``slot`` from the relay ``prefix`` into ``answers``: at most
        :data:`~tracker.proof.cluster.finality.MAX_DOCUMENT` bytes, held within
        :data:`ANSWERS_HELD` (its server's share) as every RPC answer is, decoded; or why
        not (one line naming its URL). Cancelled at the lift's deadline."""
        url = _document_url(prefix, slot)
        try:
            async with _ANSWERS.held(owner=_server(url)) as share:
                body = await self._call(url, None, MAX_DOCUMENT, share)
                try:
                    answers[prefix] = document(body, slot)  # 64 KiB of JSON at most
                finally:
                    body.clear()
        except (RpcError, CertificateInvalid) as exc:
            answers[prefix] = one_line(f"{redact_url(url)}: {exc}")
        except Exception as exc:
            # the last guard of hostile input, as for an RPC's answer (_ask_into): what a
            # relay's bytes made fail that no rule names costs this lift, never the tasks
            log_event(log, "error", "cluster_proof_error", url=redact_url(url), exc_info=exc)
            what = type(first_leaf(exc)).__name__
            answers[prefix] = f"{redact_url(url)}: not read: {what}"

    def _certificate_key(self, slot: int, proof: Proof) -> Key:
        """What a certificate's verdict is kept by: the slot, the bank hash, the block id
        and the epoch's stakes (a copy whose manifest holds other stakes is weighed anew)."""
        data = proof.epoch_stakes
        if data is None:
            return (slot, f"{proof.bank_hash}/{proof.block_id}/")
        kept = self._digests.get(id(data))
        if kept is not None and kept[0] is data:
            digest = kept[1]
        else:
            digest = voters_digest(data)
            self._digests[id(data)] = (data, digest)
            while len(self._digests) > _DIGESTS_KEPT:
                self._digests.popitem(last=False)
        self._digests.move_to_end(id(data))
        return (slot, f"{proof.bank_hash}/{proof.block_id}/{digest}")

    def _back_off(self, key: AskedOfRpcs, failure: _Failure | None, error: RpcError) -> None:
        wait = backoff_wait(None if failure is None else failure.wait, self._retry_after)
        self._failed[key] = _Failure(str(error), trio.current_time() + wait, wait)
        self._failed.move_to_end(key)
        while len(self._failed) > MAX_KEPT:  # each forged stakes' is a key: the oldest go
            self._failed.popitem(last=False)
        log_event(log, "info", "cluster_proof_failed", slot=key[0][0], reason=error)

    def _deadline(self) -> str:
        """``cluster_proof.deadline`` as a reason says it."""
        return f"{self._config().cluster_proof.deadline:g}s"

    async def _ask_all(
        self,
        key: AskedOfRpcs,
        ask: Callable[[str], Awaitable[_T]],
        what: str,
        ends: float,
    ) -> tuple[_T, ...]:
        """``ask`` of every RPC of ``key`` at once, until ``ends``; their answers in order,
        or the first failure (RpcError, one line, backed off)."""
        urls = key[1]
        failure = self._failed.get(key)
        now = trio.current_time()
        if failure is not None and now < failure.until:
            raise RpcError(f"{failure.reason} (asked again in {failure.until - now:.0f}s)")
        results: dict[str, _T] = {}
        failed: list[RpcError] = []
        with trio.move_on_at(ends) as within:
            async with trio.open_nursery() as nursery:
                for url in urls:
                    nursery.start_soon(self._ask_into(results, failed, url, ask))
        if within.cancelled_caught and not failed:
            failed.append(RpcError(f"the {what} were not read within {self._deadline()}"))
        if failed:
            self._back_off(key, failure, failed[0])
            raise failed[0]
        self._failed.pop(key, None)
        return tuple(results[u] for u in urls)

    def _ask_into(
        self,
        results: dict[str, _T],
        failed: list[RpcError],
        url: str,
        ask: Callable[[str], Awaitable[_T]],
    ) -> Callable[[], Awaitable[None]]:
        """The task asking ``url``: its answer into ``results``, or its failure into
        ``failed`` (one line, no exception group). A failure cancels nothing: httpx leaves
        a request cancelled while its body is sent half unwound; the deadline bounds all."""

        async def asking() -> None:
            try:
                results[url] = await ask(url)
            except RpcError as exc:
                failed.append(RpcError(one_line(f"{redact_url(url)}: {exc}")))
            except Exception as exc:
                # the last guard of hostile input: what an archive's or an RPC's bytes made
                # fail that no rule names costs this copy's lift, never the service's tasks
                log_event(log, "error", "cluster_proof_error", url=redact_url(url), exc_info=exc)
                what = type(first_leaf(exc)).__name__  # ValueError, not ExceptionGroup
                failed.append(RpcError(f"{redact_url(url)}: not weighed: {what}"))

        return asking

    async def ask(
        self, url: str, slot: int, bank_hash: bytes, genesis: Genesis | None = None
    ) -> Tally:
        """The tally of the votes for (``slot``, ``bank_hash``) in the blocks after it that
        ``url`` gives (none past the Alpenglow genesis), weighed by its
        ``getVoteAccounts``. The blocks are read in order, :data:`CONCURRENT_BLOCKS` at a
        time, until 2/3 voted the hash or ``blocks`` were read (most votes for S land in
        the next few blocks: a busy mainnet block in json is ~10 MB and ~0.3 s of
        decoding). Raises RpcError (one line)."""
        stakes = await self._answer(url, _GET_VOTE_ACCOUNTS, MAX_VOTE_ACCOUNTS, _stakes_of)
        # each voter kept once, not each vote read (a liar's blocks repeat one): bounded by
        # the stakes whatever the blocks and the deadline (docs/http-api.md, "Limits")
        votes = SlotVotes(slot, bank_hash, stakes)
        failed: list[RpcError] = []

        def read(answer: bytearray) -> None:
            # the decode stops at the deadline (a block of a liar's votes, near its size
            # bound, takes minutes of decoding: both parse threads of every lift); the block
            # is folded as it is decoded and counts once it was read whole
            votes.merge(block_votes(answer, votes, trio.from_thread.check_cancelled))

        async def one_block(at: int) -> None:
            try:
                await self._answer(url, _get_block(at), MAX_BLOCK, read)
            except RpcError as exc:
                failed.append(RpcError(one_line(f"slot {at}: {exc}")))

        blocks = vote_blocks(slot, self._config().cluster_proof.blocks, genesis)
        result = votes.tally()
        for first in range(blocks.start, blocks.stop, CONCURRENT_BLOCKS):
            async with trio.open_nursery() as nursery:
                for at in range(first, min(first + CONCURRENT_BLOCKS, blocks.stop)):
                    nursery.start_soon(one_block, at)
            if failed:
                raise failed[0]
            result = votes.tally()
            if result.supermajority:
                break
        return result

    async def certify(
        self, url: str, doc: Document, voters: EpochVoters, ends: float = math.inf
    ) -> Finality:
        """What ``doc``'s certificate shows by ``url``: its bitmaps read in the rank map of
        the archive's epoch (``voters``, from its manifest), the signers' keys and stakes
        bounded by ``url``'s (its rank map read again after :data:`RANKS_FOR` seconds or
        for a slot past its epoch; one that failed, or that the lift's deadline ``ends``
        cut, after a back-off). Raises RpcError (one line)."""
        kept = self._ranks.get(url)
        now = trio.current_time()
        if kept is None or now - kept[1] > RANKS_FOR or doc.slot > kept[0].last:
            failed = self._ranks_failed.get(url)
            if failed is not None and now < failed.until:
                raise RpcError(f"{failed.reason} (read again in {failed.until - now:.0f}s)")
            try:
                rpc = await epoch_ranks(
                    self._answer, url, epoch_vote_stakes, MAX_VOTE_ACCOUNTS, _PARSE
                )
            except RpcError as exc:
                self._rank_map_failed(url, failed, str(exc))
                raise
            except trio.Cancelled:
                if trio.current_time() >= ends:
                    # cut by the deadline: read again at once, each new archive's question
                    # would cost its keys' decoding again (docs/http-api.md, "After the
                    # migration: finality certificates")
                    reason = f"the rank map was not read within {self._deadline()}"
                    self._rank_map_failed(url, failed, reason)
                raise
            self._ranks_failed.pop(url, None)
            self._ranks[url] = (rpc, now)
        else:
            rpc = kept[0]
        try:
            ranks, points = await trio.to_thread.run_sync(
                epoch_rank_map, voters, rpc, limiter=_PARSE
            )
            # the signers' keys where the RPC stakes them not (stake gone since the epoch
            # began): read for the signers it does not hold, counted at no stake
            named = await trio.to_thread.run_sync(signers, doc, ranks, limiter=_PARSE)
            unstaked = list(
                dict.fromkeys(
                    ranks.votes[r] for r in sorted(named) if ranks.votes[r] not in rpc.keys
                )
            )
            data = await vote_accounts_data(self._answer, url, unstaked)
            more = {c.vote: c.bls_key for c in candidates(dict.fromkeys(unstaked, 0), data)}
            return await trio.to_thread.run_sync(
                judge_rpc, doc, voters, ranks, points, rpc, more, limiter=_PARSE
            )
        except CertificateInvalid as exc:
            raise RpcError(str(exc)) from exc

    def _rank_map_failed(self, url: str, before: _Failure | None, reason: str) -> None:
        """``url``'s rank map not read again for a wait that doubles while it fails."""
        wait = backoff_wait(None if before is None else before.wait, self._retry_after)
        self._ranks_failed[url] = _Failure(reason, trio.current_time() + wait, wait)

    async def _answer(
        self,
        url: str,
        payload: dict[str, Any] | None,
        max_body: int,
        parse: Callable[[bytearray], _T],
    ) -> _T:
        """``parse(body)`` of ``payload``'s answer from ``url`` (:meth:`_call`), in a worker
        thread, the answer held within :data:`ANSWERS_HELD` with every other (at most
        :data:`ANSWERS_HELD_BY_ONE` by ``url``'s server): its length taken once its head is
        read (``max_body`` without one), what it did not need given back once read (while
        it waits for a worker thread), the rest once parsed; cut while another read waits
        for room once its pace would not bring it in by the deadline (docs/http-api.md,
        "Limits")."""
        async with _ANSWERS.held(owner=_server(url)) as share:
            body = await self._call(url, payload, max_body, share)
            try:
                share.keep(len(body))
                return await trio.to_thread.run_sync(parse, body, limiter=_PARSE)
            finally:
                body.clear()  # freed before its share is given back

    async def _call(
        self,
        url: str,
        payload: dict[str, Any] | None,
        max_body: int,
        share: BodyShare | None = None,
    ) -> bytearray:
        """``payload``'s answer from ``url`` (a GET of ``url`` when None), at most
        ``max_body`` bytes, read so that a cancelled read (the deadline, another call
        failed) unwinds httpx's generators; ``share`` taken for it once its head is read
        (:func:`~tracker.net.bodyreads.body_share`): a question waits for no room, nor holds
        any while its RPC has not answered."""
        self.calls += 1
        method = payload["method"] if payload is not None else "GET"
        headers = {"accept-encoding": "identity"}
        if payload is not None:
            headers["content-type"] = "application/json"
        body = bytearray()
        verb = "POST" if payload is not None else "GET"
        try:
            async with stream(self._client, verb, url, json=payload, headers=headers) as r:
                if r.status_code != 200:
                    raise RpcError(f"{method}: {status_reason(r)}")
                size = body_share(r.headers, max_body)
                if size is None:  # said longer than it may be: refused unread
                    raise RpcError(f"{method}: body exceeds the limit of {max_body} bytes")
                if share is not None:
                    await share.take(size)
                # revoked when its pace would not bring it in by the deadline while another
                # read waits for its room (docs/http-api.md, "Limits")
                with share.reading() if share is not None else nullcontext():
                    async with body_chunks(r) as chunks:
                        async for chunk in chunks:
                            if len(body) + len(chunk) > size:
                                raise RpcError(f"{method}: body exceeds the limit of {size} bytes")
                            body += chunk
                            if share is not None:
                                share.received = len(body)
        except (TransportError, ProbeError) as exc:
            raise RpcError(one_line(f"{method}: {exc}")) from exc
        return body


@attrs.frozen
class GroupVotes:
    """:class:`ClusterVotes` for one group's archives: asked of that group's cluster's RPCs
    (:meth:`tracker.config.schema.Config.cluster_rpcs`), as the config in force says at
    each question (a reload that gives the group its own ``rpc`` asks that one next)."""

    votes: ClusterVotes
    group: str

    def rpcs(self) -> tuple[str, ...]:
        """The RPC URLs asked for the group's archives (empty: none, nothing asked)."""
        return self.votes.rpcs(self.group)

    async def lift(self, slot: int, proof: Proof) -> Proof:
        """:meth:`ClusterVotes.lift` asked of the group's cluster's RPCs."""
        return await self.votes.lift(slot, proof, self.group)

    async def holds(self, slot: int, proof: Proof) -> bool:
        """:meth:`ClusterVotes.holds` asked of the group's cluster's RPCs."""
        return await self.votes.holds(slot, proof, self.group)


def backoff_wait(previous: float | None, first: float) -> float:
    """The wait after a failure, ``previous`` the wait after the one before it in a row
    (None: the first): ``first``, then twice the one before, up to :data:`MAX_BACKOFF`.
    Pure."""
    return first if previous is None else min(2 * previous, MAX_BACKOFF)


def _keep(kept: OrderedDict[AskedOfRpcs, _V], key: AskedOfRpcs, value: _V) -> None:
    kept[key] = value
    while len(kept) > MAX_KEPT:
        kept.popitem(last=False)


def judged(proof: Proof, tallies: tuple[Tally, ...], urls: tuple[str, ...]) -> Proof:
    """``proof`` lifted to ``cluster`` when every RPC's tally reaches 2/3, else kept at its
    level with the reason; ``voted_stake`` is the least any RPC saw. Pure."""
    return _judged(proof, tallies, urls, "votes")


def judged_finality(proof: Proof, finals: tuple[Finality, ...], urls: tuple[str, ...]) -> Proof:
    """``proof`` lifted to ``cluster`` when the certificate reaches its thresholds in every
    RPC's rank map, else kept at its level with the reason; ``voted_stake`` is the least
    stake behind it any RPC saw, and ``cluster_proof`` says it is a certificate's: one short
    of its stake is no final tally (:attr:`~tracker.proof.levels.Proof.tallied`), a better
    one may follow. Pure."""
    return attrs.evolve(_judged(proof, finals, urls, "certificate"), cluster_proof="certificate")


def _judged(
    proof: Proof, weighed: Sequence[Tally | Finality], urls: tuple[str, ...], kind: str
) -> Proof:
    """The one rule of both kinds of proof: every RPC must see the stake reach its
    threshold; RPCs that disagree are named each with what it saw; else the weakest
    RPC's figure and what was needed."""
    voted = min(w.fraction for w in weighed)
    if all(w.supermajority for w in weighed):
        return attrs.evolve(
            proof, level=Level.CLUSTER, voted_stake=voted, note=None, cluster_proof=kind
        )
    if any(w.supermajority for w in weighed):
        seen = "; ".join(
            f"{redact_url(u)}: {w.describe()}" for u, w in zip(urls, weighed, strict=True)
        )
        note = one_line(f"cluster not proven: the RPCs disagree ({seen})")
    else:
        worst = min(weighed, key=lambda w: w.fraction)
        note = f"cluster not proven: {worst.describe()}, {worst.needed}"
    return attrs.evolve(proof, voted_stake=voted, note=note)


def _server(url: str) -> tuple[str, str, int | None] | str:
    """The server of ``url`` whose answers hold one part of the budget (its origin; the URL
    itself when its port is no number: asking it fails)."""
    try:
        return origin(url)
    except ValueError:
        return url


def _document_url(prefix: str, slot: int) -> str:
    """The URL of ``slot``'s certificate document at the relay ``prefix``."""
    return f"{prefix.rstrip('/')}/{slot}.json"


def _relay_name(prefix: str) -> str:
    """A relay as a note names it (its credentials masked)."""
    return redact_url(prefix.rstrip("/"))


def _too_late(prefix: str, slot: int) -> str:
    """Why a relay whose document was not read by the lift's deadline counts for none."""
    return f"{redact_url(_document_url(prefix, slot))}: not read within the deadline"


def _hash_bytes(text: str) -> bytes | None:
    try:
        raw = base58.b58decode(text) if len(text) <= 64 else b""
    except ValueError:
        return None
    return raw if len(raw) == 32 else None


def _get_block(slot: int) -> dict[str, Any]:
    config = {
        "encoding": "json",
        "transactionDetails": "full",
        "rewards": False,
        "maxSupportedTransactionVersion": 0,
        "commitment": "finalized",
    }
    return {"jsonrpc": "2.0", "id": 1, "method": "getBlock", "params": [slot, config]}


_GET_GENESIS = {"jsonrpc": "2.0", "id": 1, "method": "getAgGenesisCert"}

_GET_VOTE_ACCOUNTS = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "getVoteAccounts",
    "params": [{"commitment": "finalized"}],
}


def _stakes_of(body: bytearray) -> dict[str, int]:
    """:func:`vote_stakes` in a worker thread, stopped when its caller is cancelled."""
    return vote_stakes(body, trio.from_thread.check_cancelled)
