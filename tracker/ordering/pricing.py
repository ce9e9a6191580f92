"""What each archive of a group ranked by time to running is priced at, and the pair each
source stands for, kept between re-rankings (docs/ranking.md, "The formula"). Pure.

The pairs (:func:`tracker.ordering.ranking.rank_pairs`) price every archive at its size
(:func:`priced_sizes`: its voices' lower median) and at its fastest source's throughput, and
pair each incremental with its full. A round of thousands of targets hands results over
several times a second, each time a few dozen of them new, and a measurement changes one
target's figure: weighing every source's listing again at each change cost 25-60 ms at 3,000
targets, on the event loop. :class:`ArchivePrices` keeps each target's part (what it lists,
whose voice it is, its throughput, the pair of each of its sources) and the tallies made of
them, and changes only the parts of the targets whose sources changed, the prices of the
archives they list and, when the typical size of a kind moved, of the archives priced at it.
What it answers is what a fresh one would (tests/unit/test_rerank_reuse.py).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import attrs

from tracker.core.hosts import configured_parties, party_of, voice_of
from tracker.core.snapshots import SnapshotSource, TargetKey
from tracker.ordering.predict import Download, RankingSettings, download_seconds, priced_throughput

#: A pair: the full's archive name, and the incremental's (None: the full alone).
PairKey = tuple[str, str | None]
#: One archive as a source lists it: its name, whether a full, its size (0: not given).
_Listed = tuple[str, bool, int]


class Sources(Protocol):
    """One target's sources, best first, each with its ranking key
    (:class:`tracker.ordering.ranking.Built`)."""

    @property
    def sources(self) -> Sequence[tuple[Any, SnapshotSource]]: ...


def priced_sizes(listed: list[tuple[str, bool, int, str]]) -> dict[str, int]:
    """The size each archive is priced at, from what its sources list (``(name, is_full,
    size, voice)``, 0: not given; ``voice``: :func:`tracker.core.hosts.machine_voices`): the
    lower median of its voices' sizes (each voice's own: the lower median of what its
    targets list), so that neither a source listing another's archive as huge (the newest
    full priced out) nor one listing an older archive as tiny (the fleet sent to it)
    decides, while the honest voices are more than the liars (a lie of a huge size: at
    least as many); with two voices the smaller; a source can misstate freely only the size
    of an archive it alone holds. A voice that lists an archive without a size votes the
    typical size of its kind (full or incremental): the lower median of the voices' own
    typical sizes of that kind, so that a size left out never makes an archive look free,
    nor lets one voice's size decide (the largest on offer was taken: one source listing
    an old archive it alone holds as huge priced out the newest full, which its hosts list
    without a size). 0 when no voice gives a size of that kind. Pure."""
    given: dict[str, dict[str, list[int]]] = {}
    unsized: dict[str, set[str]] = {}
    kinds: dict[str, bool] = {}
    of_kind: dict[tuple[bool, str], list[int]] = {}
    for name, is_full, size, voice in listed:
        kinds[name] = is_full
        if size > 0:
            given.setdefault(name, {}).setdefault(voice, []).append(size)
            of_kind.setdefault((is_full, voice), []).append(size)
        else:
            unsized.setdefault(name, set()).add(voice)
    typical = {
        kind: _lower_median(
            [_lower_median(sizes) for (k, _voice), sizes in of_kind.items() if k == kind] or [0]
        )
        for kind in (True, False)
    }
    priced: dict[str, int] = {}
    for name, kind in kinds.items():
        voices = given.get(name, {})
        said = [_lower_median(sizes) for sizes in voices.values()]
        # a voice that gave a size for it, by one of its targets, says that size
        said += [typical[kind] for voice in unsized.get(name, ()) if voice not in voices]
        priced[name] = _lower_median(said)
    return priced


def _lower_median(values: list[int]) -> int:
    """The middle of ``values`` (not empty), the lower of the two middles when even."""
    ordered = sorted(values)
    return ordered[(len(ordered) - 1) // 2]


def _count(counts: Counter[int], value: int, sign: int) -> None:
    """Add ``sign`` to ``counts[value]``, which goes once at 0: a tally holds only the values
    said now."""
    counts[value] += sign
    if not counts[value]:
        del counts[value]


def _counted_lower_median(counts: Mapping[int, int], extra: int = 0, times: int = 0) -> int:
    """:func:`_lower_median` of the values ``counts`` holds (value: how many times), with
    ``extra`` ``times`` more; 0 when there are none."""
    if times:
        counts = {**counts, extra: counts.get(extra, 0) + times}
    left = (sum(counts.values()) - 1) // 2
    for value, count in sorted(counts.items()):
        if left < count:
            return value
        left -= count
    return 0


@attrs.frozen
class _Voice:
    """What one voice says of the sizes (:func:`priced_sizes`): per archive it lists, the
    lower median of the sizes its targets give (None: it gives none), and per kind (full or
    incremental) the lower median of every size of that kind it gives."""

    names: dict[str, int | None]
    kinds: dict[bool, int]


def _voice_said(listed: Counter[_Listed]) -> _Voice:
    """What a voice listing ``listed`` (each listing: how many times) says."""
    sizes: dict[str, list[int]] = {}
    of_kind: dict[bool, list[int]] = {}
    unsized: list[str] = []
    for (name, is_full, size), times in listed.items():
        if size > 0:
            sizes.setdefault(name, []).extend([size] * times)
            of_kind.setdefault(is_full, []).extend([size] * times)
        else:
            unsized.append(name)
    names: dict[str, int | None] = {name: _lower_median(s) for name, s in sizes.items()}
    for name in unsized:
        names.setdefault(name, None)
    return _Voice(names, {kind: _lower_median(s) for kind, s in of_kind.items()})


@attrs.frozen(eq=False)
class _Part:
    """One target's part: its sources as given (kept while the same list is given), whose
    voice it is, what it lists, the archives' names, its priced throughput, and the ids of
    its sources (whose pairs :class:`ArchivePrices` keeps)."""

    sources: Sequence[tuple[Any, SnapshotSource]]
    host: str
    voice: str
    listed: Counter[_Listed]
    names: frozenset[str]
    speed: float
    ids: tuple[int, ...]


class ArchivePrices:
    """A group's archives priced as :func:`tracker.ordering.ranking.rank_pairs` prices them:
    each one's size (:func:`priced_sizes`) and best throughput (:meth:`speed`), the full each
    slot's incrementals without their own full pair with (:meth:`base_fulls`), and the pair
    each source stands for (:attr:`pair_of`); kept between :meth:`update` calls, which
    change only what the targets whose sources changed touch."""

    def __init__(self) -> None:
        self._reset(None)

    def _reset(self, assumed: float | None) -> None:
        """Forget every part (nothing priced yet); sources priced at ``assumed``."""
        self._assumed = assumed
        self._parts: dict[TargetKey, _Part] = {}
        #: The hosts of the configured targets that list something (a discovered node on one
        #: of them is that machine's voice: :func:`tracker.core.hosts.machine_voices`).
        self._configured: Counter[str] = Counter()
        #: Their parties, each with the voice a discovered node there is
        #: (:func:`tracker.core.hosts.configured_parties`).
        self._parties: dict[str, str] = {}
        #: Per voice: what its targets list, and what it says of the sizes.
        self._listed: dict[str, Counter[_Listed]] = {}
        self._said: dict[str, _Voice] = {}
        #: Per archive: the sizes its voices say (value: how many voices), how many voices
        #: list it without any size, whether a full and its slot, how many targets list it,
        #: their priced throughputs (value: how many targets).
        self._sizes_said: dict[str, Counter[int]] = {}
        self._unsized: Counter[str] = Counter()
        self._kind: dict[str, tuple[bool, int]] = {}
        self._listers: Counter[str] = Counter()
        self._speeds: dict[str, Counter[float]] = {}
        #: Per kind (full: True): each voice's typical size (value: how many voices).
        self._typical_said: dict[bool, Counter[int]] = {True: Counter(), False: Counter()}
        self._typical: dict[bool, int] = {True: 0, False: 0}
        #: The prices: each archive's size and best throughput (absent: none above 0).
        self.sizes: dict[str, int] = {}
        self._best: dict[str, float] = {}
        self._full_names: dict[int, set[str]] = {}
        #: Per source (by ``id``, while its part holds it): the pair it stands for (None: an
        #: incremental with no full on offer), and for an incremental listed without its
        #: full, its base slot and name (paired with :meth:`base_fulls`'s full).
        self.pair_of: dict[int, PairKey | None] = {}
        self._floating: dict[int, tuple[int, str]] = {}
        self._dirty_voices: set[str] = set()
        self._dirty_sizes: set[str] = set()
        self._dirty_speeds: set[str] = set()

    def speed(self, name: str) -> float:
        """The throughput archive ``name`` downloads at: its fastest source's (0: none)."""
        return self._best.get(name, 0.0)

    def slot(self, pair: PairKey) -> int:
        """The slot of ``pair``'s newest archive (its incremental's, else its full's)."""
        return self._kind[pair[1] if pair[1] is not None else pair[0]][1]

    def download(self, name: str) -> Download:
        """Archive ``name``'s download as the prediction prices it."""
        return Download(self.sizes.get(name, 0), self._best.get(name, 0.0))

    def update(self, given: Mapping[TargetKey, Sources], ranking: RankingSettings) -> None:
        """The group's targets are now those ``given``, each with its sources (and their
        ranking keys, one list per target: a list given again, the same object, is a part
        that did not change), priced by ``ranking``."""
        if ranking.assumed_throughput != self._assumed:  # every source priced anew
            self._reset(ranking.assumed_throughput)
        kept = self._parts
        # one pass of identity checks: a batch of a round changes a few dozen of thousands
        changed = [
            key
            for key, part in given.items()
            if (old := kept.get(key)) is None or old.sources is not part.sources
        ]
        new = sum(1 for key in changed if key not in kept)
        gone = [key for key in kept if key not in given] if len(kept) + new != len(given) else []
        hosts = self._configured_after(given, changed, gone)
        if hosts.keys() != self._configured.keys():
            # a configured host came or went: a discovered node's voice may change with it
            self._reset(self._assumed)
            kept, changed, gone = self._parts, list(given), []
        if self._configured is not hosts:
            self._parties = configured_parties(hosts)
        self._configured = hosts
        for key in gone:
            self._remove(kept.pop(key))
        for key in changed:
            old = kept.get(key)
            part = self._part(key, given[key].sources, ranking)
            same = old is not None and old.voice == part.voice and old.listed == part.listed
            if old is not None:
                self._remove(old, keep_listed=same)
            self._add(part, listed=not same)
            kept[key] = part
        self._settle()

    def base_fulls(
        self, fulls: Sequence[SnapshotSource], ranking: RankingSettings
    ) -> dict[int, str]:
        """Per slot of a full on offer, the full an incremental without its own is paired
        with: the one that downloads fastest, of equals the first in ``fulls`` (the
        group's fulls, best first); and the pairs of such incrementals made with them."""
        found: dict[int, str] = {}
        for slot, names in self._full_names.items():
            seconds = {name: download_seconds([self.download(name)], ranking) for name in names}
            least = min(seconds.values())
            tied = {name for name, s in seconds.items() if s == least}
            if len(tied) == 1:
                [found[slot]] = tied
            else:  # rare: equal sizes and speeds, two names of one slot
                found[slot] = next(h for f in fulls if (h := f.info.files[0].bare_name) in tied)
        for i, (base, head) in self._floating.items():
            full = found.get(base)
            self.pair_of[i] = (full, head) if full is not None else None
        return found

    def _configured_after(
        self,
        given: Mapping[TargetKey, Sources],
        changed: list[TargetKey],
        gone: list[TargetKey],
    ) -> Counter[str]:
        """The hosts of the configured targets that list something once ``changed`` and
        ``gone`` are (each with how many such targets)."""
        moved = [key for key in (*changed, *gone) if not key.discovered]
        if not moved:  # the common case: discovered nodes only
            return self._configured
        hosts = Counter(self._configured)
        for key in moved:
            old = self._parts.get(key)
            if old is not None and old.ids:
                hosts[old.host] -= 1
            if key in given and given[key].sources:
                hosts[voice_of(key.target)] += 1
        return +hosts

    def _part(
        self,
        key: TargetKey,
        sources: Sequence[tuple[Any, SnapshotSource]],
        ranking: RankingSettings,
    ) -> _Part:
        """``key``'s part, listing ``sources``: its voice by the configured hosts as they are
        now (:func:`tracker.core.hosts.machine_voices`)."""
        host = voice_of(key.target)
        voice = host
        if key.discovered:
            party = party_of(host)
            voice = self._parties.get(party, party)
        listed: Counter[_Listed] = Counter()
        speed = 0.0
        for _rank, s in sources:
            speed = priced_throughput(s.throughput, ranking)  # one target's sources share it
            for f in s.info.files:
                listed[(f.bare_name, f.name.is_full, f.size)] += 1
                self._kind.setdefault(f.bare_name, (f.name.is_full, f.name.slot))
        names = frozenset(name for name, _full, _size in listed)
        ids = tuple(id(s) for _rank, s in sources)
        return _Part(sources, host, voice, listed, names, speed, ids)

    def _add(self, part: _Part, *, listed: bool) -> None:
        for _rank, s in part.sources:
            info, i = s.info, id(s)
            head = info.files[0].bare_name
            if info.is_full:
                self.pair_of[i] = (head, None)
                continue
            full = next((f.bare_name for f in info.files if f.name.is_full), None)
            if full is not None:
                self.pair_of[i] = (full, head)
            else:  # paired with the full at its base slot: base_fulls
                self.pair_of[i] = None
                self._floating[i] = (info.base_slot, head)
        for name in part.names:
            self._listers[name] += 1
            if part.speed > 0:  # as NaN is not
                self._speeds.setdefault(name, Counter())[part.speed] += 1
        self._dirty_speeds |= part.names
        if listed and part.listed:
            self._listed.setdefault(part.voice, Counter()).update(part.listed)
            self._dirty_voices.add(part.voice)

    def _remove(self, part: _Part, *, keep_listed: bool = False) -> None:
        for i in part.ids:
            del self.pair_of[i]
            self._floating.pop(i, None)
        for name in part.names:
            self._listers[name] -= 1
            if part.speed > 0:
                self._speeds[name][part.speed] -= 1
        self._dirty_speeds |= part.names
        if not keep_listed and part.listed:
            self._listed[part.voice].subtract(part.listed)
            self._dirty_voices.add(part.voice)

    def _settle(self) -> None:
        """Make again what the changed parts touched: the voices' says, the typical sizes,
        the prices of the archives whose say moved."""
        kinds_moved = False
        for voice in self._dirty_voices:
            listed = +self._listed.get(voice, Counter())
            if listed:
                self._listed[voice] = listed
            else:
                self._listed.pop(voice, None)
            old = self._said.pop(voice, None)
            new = _voice_said(listed) if listed else None
            if new is not None:
                self._said[voice] = new
            if old == new:
                continue
            for voice_said, sign in ((old, -1), (new, 1)):
                if voice_said is None:
                    continue
                for name, size in voice_said.names.items():
                    if size is None:
                        self._unsized[name] += sign
                    else:
                        _count(self._sizes_said.setdefault(name, Counter()), size, sign)
                    self._dirty_sizes.add(name)
                for kind, size in voice_said.kinds.items():
                    # a size no voice says any more goes: each voice's typical size moves
                    # with every new archive it lists (an incremental a minute), and the
                    # sizes once said were kept for good, every one copied and sorted at
                    # each move (3,000 nodes: millions of sizes a day)
                    _count(self._typical_said[kind], size, sign)
                    kinds_moved = True
        self._dirty_voices.clear()
        if kinds_moved:
            for kind in (True, False):
                typical = _counted_lower_median(+self._typical_said[kind])
                if typical != self._typical[kind]:
                    self._typical[kind] = typical
                    # every archive of its kind a voice lists without a size is priced anew
                    self._dirty_sizes |= {
                        name
                        for name, n in self._unsized.items()
                        if n and self._kind[name][0] == kind
                    }
        for name in self._dirty_sizes:
            if not self._listers[name]:
                self._forget(name)
                continue
            sizes = +self._sizes_said.get(name, Counter())
            is_full, slot = self._kind[name]
            self.sizes[name] = _counted_lower_median(
                sizes, self._typical[is_full], self._unsized[name]
            )
            if is_full:
                self._full_names.setdefault(slot, set()).add(name)
        self._dirty_sizes.clear()
        for name in self._dirty_speeds:
            speeds = self._speeds.get(name)
            if speeds is not None:
                speeds = +speeds
                self._speeds[name] = speeds
            if speeds:
                self._best[name] = max(speeds)
            else:
                self._best.pop(name, None)
                self._speeds.pop(name, None)
        self._dirty_speeds.clear()

    def _forget(self, name: str) -> None:
        """No target lists archive ``name`` any more."""
        is_full, slot = self._kind.pop(name)
        for table in (self.sizes, self._best, self._sizes_said, self._speeds, self._listers):
            table.pop(name, None)
        self._unsized.pop(name, None)
        if is_full:
            names = self._full_names.get(slot, set())
            names.discard(name)
            if not names:
                self._full_names.pop(slot, None)
