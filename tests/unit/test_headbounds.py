"""What redirect mode's head reads remember is bounded (docs/http-api.md, "Proven archives";
docs/architecture.md, "Proven archives"): a failed read is forgotten once its retry is due, a
copy awaiting its votes pushed out past ``MAX_KEPT`` leaves the index's refusals, and a
dropped target's refusals leave with it. The real Index and HeadProofs on a fake clock, with
a fake head read (``prove_copy``) and fake votes: no network."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import attrs
import base58
import pytest

import tracker.proof.background.heads as heads_module
from tracker.config.schema import Config, TargetGroup, Trust
from tracker.core.snapshots import SnapshotFile, info_from_files, parse_archive_name
from tracker.errors import ArchiveInvalid, SourceFailed
from tracker.ordering.index import Index, SnapshotSource, TargetKey
from tracker.ordering.screens import NOT_YET
from tracker.proof.background.headreads import failures_kept, heads_due
from tracker.proof.background.heads import HeadProofs
from tracker.proof.levels import Level, Proof
from tracker.proxy.upstream import DownloadClients, ProxySettings

GROUP = "g"
HASH = base58.b58encode(bytes(32)).decode()
BASE = 1000
FULL = f"snapshot-{BASE}-{HASH}.tar.zst"
T0 = datetime(2026, 11, 25, tzinfo=UTC)
MANIFEST = Proof(Level.MANIFEST, snapshot_hash=HASH, bank_hash=HASH)
RETRY = 60.0


def incremental(minute: int) -> str:
    """The incremental a node makes at ``minute``: one a minute, each on the same full."""
    return f"incremental-snapshot-{BASE}-{BASE + 150 * minute}-{HASH}.tar.zst"


def file_at(name: str, base: str) -> SnapshotFile:
    parsed = parse_archive_name(name)
    assert parsed is not None
    return SnapshotFile(parsed, name, 100, url=f"{base}/{name}")


def advertise(index: Index, base: str, inc: str | None) -> TargetKey:
    """``base`` advertises the full and, on it, ``inc`` (None: the full alone)."""
    key = TargetKey(GROUP, base)
    infos = [info_from_files([file_at(FULL, base)])]
    if inc is not None:
        infos.append(info_from_files([file_at(inc, base), file_at(FULL, base)]))
    index.apply(key, infos, T0)
    return key


class Reads:
    """A fake head read: each source's answer (a proof, or what it raises) and every read."""

    def __init__(self, answers: dict[str, Proof | Exception]) -> None:
        self.answers = answers
        self.read: list[tuple[str, str]] = []

    async def __call__(self, clients: Any, group: Any, read: Any, prove: Any, limit: int) -> Proof:
        base = read.file.url.rsplit("/", 1)[0]
        self.read.append((base, read.file.bare_name))
        answer = self.answers[base]
        if isinstance(answer, Exception):
            raise answer
        return answer

    def of(self, base: str) -> int:
        return sum(b == base for b, _name in self.read)


@asynccontextmanager
async def head_proofs(
    config: Config, reads: Reads, monkeypatch: pytest.MonkeyPatch, **options: Any
) -> AsyncIterator[tuple[HeadProofs, Index, list[float]]]:
    """HeadProofs over a real Index whose clock is the list's one value (seconds)."""
    monkeypatch.setattr(heads_module, "prove_copy", reads)
    now = [0.0]
    index = Index(clock=lambda: now[0])
    clients = DownloadClients(ProxySettings())
    try:
        yield HeadProofs(lambda: config, index, clients, _unused, **options), index, now
    finally:
        await clients.aclose()


def _unused(read: Callable[[int], bytes], name: str, limit: int) -> Proof:
    raise AssertionError("the fake head read proves nothing itself")


def requiring(level: Level, **more: Any) -> Config:
    return Config(target_groups=(TargetGroup(group=GROUP, trust=Trust(require=level)),), **more)


def refusals(index: Index) -> dict[tuple[TargetKey, str], str]:
    """The index's refusals by a proof (not the copies only awaiting one)."""
    return {
        (key, name): reason
        for key, names in index.disproven().items()
        for name, reason in names.items()
        if reason != NOT_YET
    }


# Failed reads: remembered while they hold their copy back, at most MAX_KEPT.


def source_of(target: str) -> SnapshotSource:
    return SnapshotSource(
        info_from_files([file_at(FULL, f"http://{target}")]), TargetKey(GROUP, target), T0
    )


@pytest.mark.parametrize(
    ("tried", "now", "most", "kept"),
    [
        pytest.param({}, 100.0, 8, {}, id="nothing failed"),
        pytest.param({"a": 50.0}, 100.0, 8, {"a": 50.0}, id="within its retry: kept"),
        pytest.param({"a": 40.0}, 100.0, 8, {}, id="its retry due: forgotten"),
        pytest.param({"a": 40.0, "b": 41.0}, 100.0, 8, {"b": 41.0}, id="each by its own time"),
        pytest.param(
            {"c": 99.0, "a": 90.0, "b": 95.0}, 100.0, 2, {"c": 99.0, "b": 95.0}, id="the newest"
        ),
        pytest.param({"a": 90.0}, 100.0, 0, {}, id="none kept"),
    ],
)
def test_failures_kept(
    tried: dict[str, float], now: float, most: int, kept: dict[str, float]
) -> None:
    assert failures_kept(tried, now=now, retry_after=RETRY, most=most) == kept


@pytest.mark.parametrize("now", [100.0, 110.0, 149.0, 150.0, 151.0, 200.0])
def test_a_failure_forgotten_changes_no_read(now: float) -> None:
    """What :func:`failures_kept` forgets holds back no read of :func:`heads_due`: the reads
    due are the same with all failures as with those kept."""
    sources = [source_of(t) for t in "abcd"]
    tried = {(s.key, FULL): at for s, at in zip(sources, [50.0, 90.0, 120.0, 149.5], strict=True)}
    kept = failures_kept(tried, now=now, retry_after=RETRY, most=len(tried))

    def due(failed: dict[tuple[TargetKey, str], float]) -> list[Any]:
        return heads_due([sources], done=set(), tried=failed, retry_after=RETRY, now=now)

    assert due(kept) == due(tried)


async def test_failed_reads_of_archives_that_moved_on_are_forgotten(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One source of three refuses connections; the nodes make an incremental a minute.
    Each failed read was remembered for good (its archive is never read again once a newer
    one is the best): one entry a minute, ever. Now only those whose retry is not due yet
    are, and the failing source is still tried once per ``retry_after``, no sooner."""
    bases = [f"http://127.0.0.1:{port}" for port in (9001, 9002, 9003)]
    down = bases[2]
    reads = Reads({b: MANIFEST for b in bases} | {down: SourceFailed(f"{down}: refused")})
    config = requiring(Level.MANIFEST)
    async with head_proofs(config, reads, monkeypatch, retry_after=RETRY) as (heads, index, now):
        kept = []
        for minute in range(1, 31):
            for base in bases:
                advertise(index, base, incremental(minute))
            tries = reads.of(down)
            for _second in range(int(RETRY)):  # a round a second, as the service runs them
                await heads.round()
                now[0] += 1.0
            # the failing source's copies of the best chain: tried once this minute
            assert reads.of(down) - tries == len({FULL, incremental(minute)})
            kept.append(heads.kept()["tried"])
            best = index.best_incremental(GROUP)
            assert best is not None and best.info.files[0].bare_name == incremental(minute)
    # only this minute's failures: the failing source's copies of the best chain
    assert max(kept) <= len({FULL, incremental(1)})


async def test_failed_reads_are_at_most_max_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    """Many sources failing within ``retry_after`` (discovered nodes refusing connections):
    the oldest failures are forgotten past ``MAX_KEPT``."""
    monkeypatch.setattr(heads_module, "MAX_KEPT", 4)
    bases = [f"http://127.0.0.1:{port}" for port in range(9001, 9021)]
    reads = Reads({b: SourceFailed(f"{b}: refused") for b in bases})
    config = requiring(Level.MANIFEST)
    async with head_proofs(config, reads, monkeypatch, retry_after=RETRY) as (heads, index, now):
        for base in bases:
            advertise(index, base, None)
        for _second in range(10):
            await heads.round()
            now[0] += 1.0
            assert heads.kept()["tried"] <= heads_module.MAX_KEPT
    assert len(set(reads.read)) > heads_module.MAX_KEPT  # more failed than are remembered


# Refusals: each has a record of the head reads that clears it when forgotten.


@attrs.define
class NoVotesYet:
    """:class:`ClusterVotes` whose RPC fails for every incremental (no tally: asked again
    each round); the full is lifted."""

    asked: int = 0

    def of(self, group: str) -> Any:
        """The voter of ``group``'s archives: one cluster here, these votes."""
        return self

    async def lift(self, slot: int, proof: Proof) -> Proof:
        self.asked += 1
        if slot == BASE:
            return attrs.evolve(proof, level=Level.CLUSTER, voted_stake=0.9)
        return proof  # what lift gives when the RPC failed: no voted_stake


async def test_copies_pushed_out_of_those_awaiting_votes_leave_the_index_refusals(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With ``trust.require: cluster`` an incremental whose votes cannot be read yet is
    refused meanwhile and asked again each round; past ``MAX_KEPT`` such copies the oldest
    was forgotten but stayed refused in the index for good (one entry a minute). It leaves
    the refusals now, and is never ranked for it: unproven, it stays out."""
    monkeypatch.setattr(heads_module, "MAX_KEPT", 4)
    base = "http://127.0.0.1:9001"
    reads = Reads({base: MANIFEST})
    config = requiring(Level.CLUSTER, rpc="http://127.0.0.1:8899")
    votes: Any = NoVotesYet()
    async with head_proofs(config, reads, monkeypatch, votes=votes) as (heads, index, now):
        for minute in range(1, 21):
            key = advertise(index, base, incremental(minute))
            await heads.round()
            now[0] += RETRY
            refused = refusals(index)
            assert len(refused) == heads.kept()["voting"] <= heads_module.MAX_KEPT
            assert (key, incremental(minute)) in refused  # the newest: awaiting its votes
            assert index.best_incremental(GROUP) is None  # never ranked unproven
        full = index.best_full(GROUP)
        assert full is not None and full.key == key  # the full is proven: lifted


async def test_a_dropped_targets_refusals_leave_the_index_and_it_is_read_again_when_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A target the index drops (dead, or no longer configured) left its refusals in the
    index for good. They leave at the next round; should it come back, its refused copy is
    out (unproven) until read again, and refused again. Its proven copies are kept: a
    target back after an outage is ranked at once, not read again."""
    honest, liar = "http://127.0.0.1:9001", "http://127.0.0.1:9002"
    why = "manifest: bank hash X, its fields give Y"
    reads = Reads({honest: MANIFEST, liar: ArchiveInvalid(why)})
    config = requiring(Level.MANIFEST)
    async with head_proofs(config, reads, monkeypatch) as (heads, index, _now):
        good, bad = advertise(index, honest, None), advertise(index, liar, None)
        await heads.round()
        assert refusals(index) == {(bad, FULL): why}
        for key in (good, bad):
            index.drop(key)
        await heads.round()
        assert refusals(index) == {}
        assert heads.kept()["refused"] == 0
        advertise(index, liar, None)
        advertise(index, honest, None)
        # back: the honest copy ranked at once, the liar's out (unproven) until read again
        assert [s.key for s in index.sources(GROUP)] == [good]
        assert index.disproven()[bad] == {FULL: NOT_YET}
        await heads.round()
        assert refusals(index) == {(bad, FULL): why}
        assert [s.key for s in index.sources(GROUP)] == [good]
    assert (reads.of(honest), reads.of(liar)) == (1, 2)


@attrs.define
class VotesFailingAsNoRuleForesaw:
    """:class:`ClusterVotes` with no tally the first time, raising the next."""

    asked: int = 0

    def of(self, group: str) -> Any:
        """The voter of ``group``'s archives: one cluster here, these votes."""
        return self

    async def lift(self, slot: int, proof: Proof) -> Proof:
        self.asked += 1
        if self.asked > 1:
            raise RuntimeError("unforeseen")
        return proof


async def test_a_refusal_whose_decision_raised_leaves_the_index(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A copy awaiting its votes is refused meanwhile; when asking them again raised what no
    rule foresaw, the copy had no record left to clear its refusal (it stayed for good once
    its archive moved on). It is unproven now, out of the ranking until read again."""
    base = "http://127.0.0.1:9001"
    reads = Reads({base: MANIFEST})
    config = requiring(Level.CLUSTER, rpc="http://127.0.0.1:8899")
    votes: Any = VotesFailingAsNoRuleForesaw()
    async with head_proofs(config, reads, monkeypatch, votes=votes) as (heads, index, _now):
        key = advertise(index, base, None)
        await heads.round()
        assert list(refusals(index)) == [(key, FULL)]  # awaiting its votes
        await heads.round()  # asked again: raised
        assert refusals(index) == {}
        assert index.disproven()[key] == {FULL: NOT_YET} and index.best_full(GROUP) is None
