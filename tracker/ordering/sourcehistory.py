"""What transfers taught about each source: the throughputs measured, the rates of the
transfers running now, and the copies that failed their check, held back for ``reject_for``.
Both are kept across restarts (docs/http-api.md#what-the-tracker-learned).

**Throughputs** (docs/ranking.md), on one clock. Two figures per target: what its speed
tests read (*probed*) and what real transfers from it achieved (*achieved*: proxied streams,
refreshes into the cache, prefetches). A speed test is easy to spot (``Range: bytes=0-N``),
so a source could answer it fast and real transfers slowly: the figure the ranking uses is
:func:`combined`, in which a real transfer outweighs the speed tests made after it until it
is old (docs/ranking.md, "Probed and achieved"). Every figure loses half its weight every
:data:`HALF_LIFE` seconds of the clock, toward its group's ``assumed_throughput`` (the
*prior*: what a source never measured counts): an old measurement says less, not that the
source is slow (halving the figure itself priced a source measured fast 20 minutes ago below
one never measured, and a 500 MB/s source measured three hours ago at 60 kB/s).

A discovered node dropped from the index (gone from the cluster's list for a round, or down
past ``max_target_failures``) leaves its measurements with its machine
(:meth:`Throughputs.drop`): the next discovered node of that machine the index takes, the
same or another identity on another port, takes them up (:meth:`Throughputs.resume`). Gossip
identities cost nothing: a node measured slow that dropped out for one round came back
unmeasured, priced at the assumed throughput.

The sources bytes come from right now (:class:`Flowing`), each with the rate it delivers at:
a transfer's throughput reaches the index when the transfer ends (it ranks the source:
docs/http-api.md#trust); a 100 GB download takes an hour, and meanwhile the status page and
``/v1/targets`` show the rate measured while the bytes come, read from there.

**Rejections** (:class:`Rejections`). One bad source must not become fifty failed validator
restarts (docs/http-api.md, "Verified archives"): when the copy a source delivered fails the
archive check, that source is not used for that archive until ``reject_for`` has passed, and
``/v1/targets`` shows why. Times are monotonic seconds passed in by the caller, so the rules
are tested without a clock.

**Busy answers** (:class:`BusyAnswers`). A source that answered 503 or 429 is busy, not slow
(docs/ranking.md, "Busy answers"): it is asked after the others of a file for a short back-off
(:func:`busy_backoff`), and its throughput learns nothing from it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Literal, Protocol, TypeVar

import attrs

from tracker.core.hosts import machine_of, voice_of
from tracker.core.snapshots import SnapshotSource, TargetKey

#: A throughput measurement loses half its weight every this many seconds.
HALF_LIFE = 600.0
#: A real transfer's weight against the speed tests made after it halves every this many
#: seconds between the two: a source that served slower than it probed keeps the figure it
#: served at for hours of fast speed tests, and one that had a bad transfer recovers.
TRUST_HALF_LIFE = 3600.0

#: The ranking ages every figure to the start of the step of this many seconds it re-ranks
#: in (:func:`ranked_at`), as ``/v1/targets`` shows them: within a step an unchanged target
#: keeps its figures, and its part of the ranking is reused (docs/ranking.md, "Probed and
#: achieved"). A figure ages by at most 1.2% of its way to the prior within one.
AGING_STEP = 10.0


def ranked_at(now: float) -> float:
    """The time the ranking ages measured figures to at ``now``: the start of its
    :data:`AGING_STEP`. Pure."""
    return now - now % AGING_STEP


#: Which figure a measurement feeds: a speed test's, or a real transfer's.
Kind = Literal["probed", "achieved"]
KINDS: tuple[Kind, ...] = ("probed", "achieved")
#: (bytes per second, time measured on the clock), undecayed.
Measured = tuple[float, float]
#: What a listing shows of a target: its figure, probed and achieved, in whole bytes a second.
Shown = tuple[int, int, int]


def weight(at: float, now: float) -> float:
    """The weight at ``now`` of a measurement made at ``at``: 1 while new, halved every
    :data:`HALF_LIFE` of its age."""
    return float(0.5 ** (max(0.0, now - at) / HALF_LIFE))


def decayed(measured: Measured | None, now: float, prior: float) -> float:
    """``measured``'s bytes per second at ``now``, as the ranking prices it: the measurement
    and ``prior`` (the group's ``assumed_throughput``) averaged by its :func:`weight`, the
    measurement while new, ``prior`` once old. An arithmetic mean: one of seconds per byte
    is ruled by the slower of the two, and priced a source speed-tested at 500 MB/s every
    10 minutes at 91 MB/s (50 MB/s assumed) just before each test. 0 when nothing is
    measured."""
    if measured is None:
        return 0.0
    rate, at = measured
    fresh = weight(at, now)
    return fresh * rate + (1 - fresh) * prior


def combined(probed: Measured | None, achieved: Measured | None, now: float, prior: float) -> float:
    """A target's figure at ``now`` from its speed tests' (``probed``) and its real
    transfers' (``achieved``) measurements; 0 when neither is known.

    With one of them, that one. With both, their seconds per byte are blended (a harmonic
    mean): the achieved one weighs 1 while no speed test came after it, and its weight
    halves every :data:`TRUST_HALF_LIFE` seconds by which the latest speed test is newer.
    The blend then ages toward ``prior`` by the age of the newer measurement
    (:func:`decayed`).
    """
    if probed is None or achieved is None:
        return decayed(probed or achieved, now, prior)
    (fast, probed_at), (served, achieved_at) = probed, achieved
    trust = 0.5 ** (max(0.0, probed_at - achieved_at) / TRUST_HALF_LIFE)
    per_byte = trust / served + (1 - trust) / fast
    rate = 1 / per_byte if per_byte > 0 else max(fast, served)  # both huge: underflow
    return decayed((rate, max(probed_at, achieved_at)), now, prior)


#: Targets of one kind whose measurements taken from elsewhere (another replica's learned
#: document, a previous run's) are kept: past it, a target not measured yet is not taken.
#: A document holds at most 4,096 a kind; a fleet's targets are a few thousand. Bounds what
#: a replica writing new target names every minute could add (each re-rank reads them all).
MAX_RESTORED = 16_384
#: Machines whose departed discovered nodes' measurements wait for them (the newest kept):
#: more than a round's departures of a cluster of thousands of nodes; an old measurement
#: has aged toward the prior anyway.
MAX_DEPARTED = 4096
#: A machine of a group: (group, :func:`tracker.core.hosts.machine_of` of its host).
Machine = tuple[str, str]


def machine_key(key: TargetKey) -> Machine:
    """The machine of a target's URL in its group (an IPv6 host's /64). Pure."""
    return (key.group, machine_of(voice_of(key.target)))


#: The prior of a group without a ``ranking`` section: the section's default
#: ``assumed_throughput`` (50 MB/s).
DEFAULT_PRIOR = 50_000_000.0


class Throughputs:
    """Per target and kind: (bytes per second, the time measured on :attr:`clock`); each
    group's prior (its ``assumed_throughput``), which measurements age toward."""

    def __init__(self, clock: Callable[[], float]) -> None:
        #: The one clock measurements are recorded and aged on.
        self.clock = clock
        self._measured: dict[Kind, dict[TargetKey, Measured]] = {k: {} for k in KINDS}
        self._priors: dict[str, float] = {}
        self._version = 0  # moves with every change of a measurement (:meth:`shown` keeps)
        self._shown: tuple[float, int, dict[TargetKey, Shown]] | None = None
        #: What :meth:`rates` gave last, at the time asked, and the targets whose
        #: measurements changed since (only theirs are made again at that time).
        self._rates: tuple[float, dict[TargetKey, float]] | None = None
        self._touched: set[TargetKey] = set()
        #: The measurements of discovered nodes dropped, by machine, oldest first (at most
        #: :data:`MAX_DEPARTED`), until a node of that machine is taken again (:meth:`resume`).
        self._departed: dict[Machine, dict[Kind, Measured]] = {}

    def set_prior(self, group: str, prior: float | None) -> bool:
        """Age ``group``'s measurements toward ``prior`` bytes a second (None: the default,
        :data:`DEFAULT_PRIOR`); whether that changed anything."""
        wanted = prior if prior is not None and prior > 0 else DEFAULT_PRIOR
        if self._priors.get(group, DEFAULT_PRIOR) == wanted:
            return False
        self._priors[group] = wanted
        self._version += 1
        self._rates = None  # every figure of the group ages toward another prior
        return True

    def prior(self, group: str) -> float:
        """What ``group``'s measurements age toward (:meth:`set_prior`)."""
        return self._priors.get(group, DEFAULT_PRIOR)

    def record(
        self, key: TargetKey, size: int, seconds: float, now: float | None, kind: Kind
    ) -> bool:
        """A transfer (``kind``) of ``size`` bytes from ``key`` took ``seconds``, ended at
        ``now`` (the clock's reading by default); whether it counted (a transfer of nothing
        does not). It is averaged with the same kind's figure, which weighs its
        :func:`weight` (1 while new: the mean of the two)."""
        if seconds <= 0 or size <= 0:
            return False
        now = self.clock() if now is None else now
        known = self._measured[kind]
        rate, old = size / seconds, known.get(key)
        if old is not None:
            fresh = weight(old[1], now)
            rate = (fresh * old[0] + rate) / (fresh + 1)
        known[key] = (rate, now)
        self._touch(key)
        return True

    def rate(self, key: TargetKey, now: float | None = None) -> float:
        """``key``'s figure at ``now`` (:func:`combined`); 0: never measured."""
        now = self.clock() if now is None else now
        probed, achieved = (self._measured[k].get(key) for k in KINDS)
        return combined(probed, achieved, now, self.prior(key.group))

    def figures(self, key: TargetKey, now: float) -> tuple[float, float]:
        """``key``'s probed and achieved bytes per second at ``now``, each aged (0: none)."""
        prior = self.prior(key.group)
        probed, achieved = (decayed(self._measured[k].get(key), now, prior) for k in KINDS)
        return probed, achieved

    def measured_at(self, key: TargetKey) -> float | None:
        """When ``key``'s newest measurement (of either kind) was taken, on :attr:`clock`;
        None: never measured. Past it, its figures age toward the group's prior."""
        times = [m[1] for kind in KINDS if (m := self._measured[kind].get(key)) is not None]
        return max(times) if times else None

    def shown(self, at: float) -> Mapping[TargetKey, Shown]:
        """Every measured target's figure, probed and achieved figures at ``at`` (each
        :func:`decayed`), rounded to whole bytes per second: what the targets' listing shows.
        Kept while ``at`` and the measurements stay the same: a listing of thousands of
        discovered nodes, rendered again and again during a round, asks for them once a
        tick instead of once a target and a rendering (~2 µs each)."""
        kept = self._shown
        if kept is not None and kept[0] == at and kept[1] == self._version:
            return kept[2]
        probed, achieved = self._measured["probed"], self._measured["achieved"]
        figures = {}
        for key in probed.keys() | achieved.keys():
            fast, served, prior = probed.get(key), achieved.get(key), self.prior(key.group)
            figures[key] = (
                round(combined(fast, served, at, prior)),
                round(decayed(fast, at, prior)),
                round(decayed(served, at, prior)),
            )
        self._shown = (at, self._version, figures)
        return figures

    def rates(self, now: float) -> Mapping[TargetKey, float]:
        """Every measured target's figure at ``now`` (do not keep: changed in place). Asked
        again at the same ``now`` (the ranking's step, :func:`ranked_at`), only the figures
        of the targets measured since are made again: a re-rank of thousands of measured
        targets does not compute each one's figure anew."""
        probed, achieved = self._measured["probed"], self._measured["achieved"]
        kept = self._rates
        if kept is None or kept[0] != now:
            figures = {key: self.rate(key, now) for key in probed.keys() | achieved.keys()}
            self._rates = (now, figures)
        else:
            figures = kept[1]
            for key in self._touched:
                if key in probed or key in achieved:
                    figures[key] = self.rate(key, now)
                else:
                    figures.pop(key, None)
        self._touched.clear()
        return figures

    def _touch(self, key: TargetKey) -> None:
        """``key``'s measurements changed."""
        self._version += 1
        if self._rates is not None:
            self._touched.add(key)

    def measurements(self, kind: Kind) -> dict[TargetKey, Measured]:
        """Every measurement of ``kind`` as (bytes per second, time measured), undecayed."""
        return dict(self._measured[kind])

    def restore(
        self, key: TargetKey, rate: float, at: float, kind: Kind, *, listed: bool = False
    ) -> bool:
        """Take a rate (``kind``) measured elsewhere at ``at`` unless ``key``'s own is as
        recent; whether it was taken. ``listed``: ``key`` is a target the index has, taken
        whatever else was restored (targets that are not may fill :data:`MAX_RESTORED`: a
        replica writing new names at every sync kept an honest one's measurements of this
        tracker's own targets out for good)."""
        measured = self._measured[kind]
        known = measured.get(key)
        if known is None and not listed and len(measured) >= MAX_RESTORED:
            return False
        if rate > 0 and math.isfinite(rate) and (known is None or known[1] < at):
            self._measured[kind][key] = (rate, at)
            self._touch(key)
            return True
        return False

    def drop(self, key: TargetKey) -> None:
        """Forget ``key``'s measurements; a discovered node's wait for its machine
        (:meth:`resume`)."""
        left: dict[Kind, Measured] = {}
        for kind, known in self._measured.items():
            measured = known.pop(key, None)
            if measured is not None:
                left[kind] = measured
                self._touch(key)
        if left and key.discovered:
            machine = machine_key(key)
            self._departed.pop(machine, None)  # the newest last: the oldest go first
            self._departed[machine] = left
            if len(self._departed) > MAX_DEPARTED:
                del self._departed[next(iter(self._departed))]

    def resume(self, key: TargetKey) -> bool:
        """A discovered node the index takes (again): the measurements its machine's last
        dropped node left (:meth:`drop`), each unless ``key`` has a newer one of its own;
        whether any was taken. A node that drops out for a round must not come back
        unmeasured, its slow figure forgotten (docs/ranking.md, "Probed and achieved")."""
        left = self._departed.pop(machine_key(key), None) if key.discovered else None
        taken = False
        for kind, measured in (left or {}).items():
            known = self._measured[kind].get(key)
            if known is None or known[1] < measured[1]:
                self._measured[kind][key] = measured
                taken = True
        if taken:
            self._touch(key)
        return taken


# The transfers running now.

#: A transfer younger than this says nothing yet about its source's rate.
MIN_ELAPSED = 0.2


class OpenTransfer(Protocol):
    """An open upstream answer: bytes it delivered so far since it opened."""

    @property
    def moved(self) -> int:
        """Body bytes that came from the source so far."""
        ...

    @property
    def opened_at(self) -> float:
        """When it opened, on trio's clock (the index's)."""
        ...


class Flowing:
    """The open upstream answers by source (the pumps register theirs)."""

    def __init__(self) -> None:
        self._open: dict[TargetKey, list[OpenTransfer]] = {}

    def start(self, key: TargetKey, source: OpenTransfer) -> Callable[[], None]:
        """``source`` delivers bytes from ``key`` until the returned function is called."""
        self._open.setdefault(key, []).append(source)

        def stop() -> None:
            sources = self._open.get(key, [])
            if source in sources:
                sources.remove(source)
            if not sources:
                self._open.pop(key, None)

        return stop

    @property
    def active(self) -> bool:
        """Whether bytes come from any source now."""
        return bool(self._open)

    def rates(self, now: float) -> dict[TargetKey, float]:
        """:meth:`rate` of every source bytes come from now (the others' is 0)."""
        return {key: self.rate(key, now) for key in self._open}

    def rate(self, key: TargetKey, now: float) -> float:
        """Bytes per second coming from ``key`` at ``now`` (trio's clock), summed over its
        open answers; 0 when none is open (or all are too young to tell)."""
        return float(
            sum(
                source.moved / (now - source.opened_at)
                for source in self._open.get(key, ())
                if now - source.opened_at >= MIN_ELAPSED
            )
        )


# Rejections: copies that failed their check, held back.

#: Rejections kept at once; the oldest go first (bounded whatever a hostile source does).
MAX_REJECTIONS = 4096
#: What ``/v1/targets`` shows as a rejected source's ``last_error``.
PREFIX = "archive failed verification: "


@attrs.frozen
class Rejection:
    """One source's copy of one archive that failed, and until when it is not used."""

    key: TargetKey
    name: str
    reason: str
    until: float


class Rejections:
    """The rejections in force; see the module doc."""

    def __init__(self, max_entries: int = MAX_REJECTIONS) -> None:
        self._max = max_entries
        self._held: dict[tuple[TargetKey, str], Rejection] = {}
        #: The copies whose rejection was taken from elsewhere (:meth:`restore`), oldest first.
        self._restored: dict[tuple[TargetKey, str], None] = {}
        #: Changes whenever what :meth:`errors` would say changes (renderings keyed on it).
        self.version = 0
        #: Called when a copy is held back anew (the index ranks without it:
        #: :meth:`tracker.ordering.index.Index.hold_back`).
        self.on_change: Callable[[], None] | None = None

    def reject(self, key: TargetKey, name: str, reason: str, *, now: float, hold: float) -> None:
        """Hold ``key``'s copy of archive ``name`` back until ``now + hold``. A full list
        makes room by forgetting what ran out, then what was taken from elsewhere, and only
        then the oldest made here (those taken from elsewhere, renewed at every read, pushed
        out this tracker's own, and their sources were used again)."""
        copy = (key, name)
        self._held.pop(copy, None)
        self._restored.pop(copy, None)
        if len(self._held) >= self._max:
            self._make_room(now)
        self._held[copy] = Rejection(key, name, reason, now + hold)
        self.version += 1
        if self.on_change is not None:
            self.on_change()

    def _make_room(self, now: float) -> None:
        """Forget one rejection of a full list, or every one that ran out at ``now``."""
        expired = [copy for copy, r in self._held.items() if r.until <= now]
        for copy in expired or [next(iter(self._restored or self._held))]:
            del self._held[copy]
            self._restored.pop(copy, None)

    def held(self) -> list[Rejection]:
        """Every rejection kept (some may have run out), those made here first: what is kept
        across a restart (docs/http-api.md#what-the-tracker-learned)."""
        own = [r for copy, r in self._held.items() if copy not in self._restored]
        return own + [self._held[copy] for copy in self._restored]

    def restore(self, held: Rejection) -> None:
        """Take a rejection made elsewhere (a previous run, another replica) unless one of
        the same copy is in force as long; never in the place of one held here (a full
        list takes no new copy: another replica's document of 4,096 rejections pushed out
        every one this tracker made, and their sources were used again)."""
        copy = (held.key, held.name)
        known = self._held.get(copy)
        if known is None and len(self._held) >= self._max:
            return
        if known is None or known.until < held.until:
            own = known is not None and copy not in self._restored
            self._held.pop(copy, None)
            self._held[copy] = held
            if not own:  # renewing one made here keeps it this tracker's
                self._restored.pop(copy, None)
                self._restored[copy] = None
            self.version += 1
            if self.on_change is not None:
                self.on_change()

    def in_force(self, now: float) -> tuple[dict[TargetKey, dict[str, str]], float]:
        """The copies held back at ``now``, by target, each with its reason, and when the
        first of them runs out (``inf``: none)."""
        copies: dict[TargetKey, dict[str, str]] = {}
        ends = math.inf
        for held in self._held.values():
            if held.until > now:
                copies.setdefault(held.key, {})[held.name] = held.reason
                ends = min(ends, held.until)
        return copies, ends

    def rejected(self, key: TargetKey, name: str, now: float) -> Rejection | None:
        """The rejection in force of ``key``'s copy of ``name``, if any."""
        held = self._held.get((key, name))
        return held if held is not None and held.until > now else None

    def sweep(self, now: float) -> int:
        """Forget rejections that ran out; returns :attr:`version` (changed if any did)."""
        expired = [k for k, r in self._held.items() if r.until <= now]
        for k in expired:
            del self._held[k]
            self._restored.pop(k, None)
        if expired:
            self.version += 1
        return self.version

    def errors(self, now: float) -> dict[TargetKey, str]:
        """Each target with a rejection in force: its ``last_error`` (the latest reason)."""
        out: dict[TargetKey, str] = {}
        for held in self._held.values():
            if held.until > now:
                out[held.key] = PREFIX + held.reason
        return out


# Busy answers: sources that said they are too busy (503, 429), asked after the others a while.

#: The longest back-off after busy answers (seconds), whatever their count or Retry-After.
MAX_BUSY_BACKOFF = 600.0
#: Sources whose busy answers are remembered at once; the oldest go first.
MAX_BUSY = 4096
#: The busy answer in a row (each after the last back-off ran out) from which a source is
#: priced as one that failed the GET: one busy moment costs an honest node nothing but its
#: back-off, while a source answering every real GET busy (its speed tests fast) loses its
#: place at its second (docs/ranking.md, "Busy answers").
BUSY_PRICED_FROM = 2

F = TypeVar("F")


def busy_backoff(strikes: int, retry_after: float | None, base: float) -> float:
    """Seconds a source is asked after the others once it answered busy (503, 429)
    ``strikes`` times in a row with no answer that served between: ``base``, doubled for
    each such answer after the first, or what its ``Retry-After`` asked for when that is
    longer; at most :data:`MAX_BUSY_BACKOFF`. A source's own Retry-After never shortens it:
    one that answers every real GET busy (and its speed tests fast) costs one quick failover
    per back-off, the back-offs doubling (docs/ranking.md, "Busy answers"). Pure."""
    doubled = base * 2.0 ** min(max(strikes, 1) - 1, 30)
    said = retry_after if retry_after is not None and math.isfinite(retry_after) else 0.0
    return min(MAX_BUSY_BACKOFF, max(doubled, said))


class BusyAnswers:
    """The sources backing off after busy answers: for each, its busy answers in a row and
    until when (on the caller's clock) it is asked after the others."""

    def __init__(self, max_entries: int = MAX_BUSY) -> None:
        self._max = max_entries
        #: By source: (busy answers in a row, back-off's end), the newest last.
        self._held: dict[TargetKey, tuple[int, float]] = {}

    def overloaded(
        self, key: TargetKey, retry_after: float | None, *, now: float, base: float
    ) -> float:
        """``key`` answered busy at ``now``; returns when its back-off ends
        (:func:`busy_backoff` from ``base``). Busy answers of requests that asked it before
        its back-off began (several streams at once) count once: one busy moment must not
        double it for each request that found the source busy."""
        strikes, until = self._held.pop(key, (0, 0.0))
        if until <= now:  # asked since the last back-off ended (or never backed off)
            strikes += 1
        until = max(until, now + busy_backoff(strikes, retry_after, base))
        self._held[key] = (strikes, until)
        if len(self._held) > self._max:
            del self._held[next(iter(self._held))]
        return until

    def answered(self, key: TargetKey) -> None:
        """``key`` answered usably: its back-offs start over."""
        self._held.pop(key, None)

    def strikes(self, key: TargetKey) -> int:
        """``key``'s busy answers in a row, each after the last back-off ran out (0: none,
        or it served since)."""
        return self._held.get(key, (0, 0.0))[0]

    def until(self, key: TargetKey) -> float:
        """When ``key``'s back-off ends (0: it never answered busy, or served since)."""
        return self._held.get(key, (0, 0.0))[1]

    def behind(
        self, found: Sequence[tuple[F, SnapshotSource]], now: float
    ) -> list[tuple[F, SnapshotSource]]:
        """``found`` (a file's sources, best first) with the sources backing off at ``now``
        moved after the others, each part in its order: never left out (the only source of
        a file is still asked)."""
        if not self._held:
            return list(found)
        ready: list[tuple[F, SnapshotSource]] = []
        backing: list[tuple[F, SnapshotSource]] = []
        for pair in found:
            (backing if self.until(pair[1].key) > now else ready).append(pair)
        return ready + backing
