"""Which bytes of a file are still to fetch, and who fetches which: pure bookkeeping.

A file is cut into pieces; every connection *claims* the next piece and advances its
position as bytes are written. When no unclaimed piece is left, an idle connection *steals*
the back half of the claim with the most bytes left, so a slow source ends up with little
and the last bytes do not wait for it. A claim given up (its source failed) returns what it
had not written to the pool. What is done is a set of intervals, saved in the state file so
that a killed fetch resumes where it stopped.

Two policies share this bookkeeping. ``fetch`` writes a file nobody reads before it is
complete: pieces go in order, and the claim that needs longest is stolen from. The cache's
refresh is read while it grows (docs/architecture.md, "A refresh from several sources"):
with a ``window``, no piece starting more than ``window`` bytes past the gapless prefix is
handed out, and an idle connection steals from the *earliest* claim that would need longer
than STEAL_AFTER_SECONDS (the head a laggard holds back; the claim at the gapless prefix is
stolen whatever its size, the rest of it whole when too small to halve), so the prefix
readers get grows at the sources' combined rate. A connection whose answer runs on (a
whole-file ``200``) may :meth:`Pieces.extend` its claim over the next piece while nobody
else holds it.
"""

from __future__ import annotations

import bisect
import math

import attrs

#: A stolen part is at least this big (smaller tails are left to their claim's owner).
MIN_STEAL = 1024 * 1024
#: A claim is stolen from only when its owner would need longer than this for the rest: a
#: fast one finishes sooner than a new request would, and the bytes its source already
#: sent (socket buffers) would be wasted.
STEAL_AFTER_SECONDS = 1.0


@attrs.define(eq=False)
class Claim:
    """Bytes ``position`` to ``end`` (exclusive) of the file, being fetched by one connection.

    ``end`` may shrink while it runs (the back part was stolen): the owner stops there.
    ``reserved`` is how far the owner has taken bytes to write (a write in flight): a steal
    never takes those.
    """

    start: int
    position: int
    end: int
    reserved: int = 0
    #: When the owner started it (monotonic seconds), to tell how fast it goes.
    started: float = 0.0

    def seconds_left(self, now: float) -> float:
        """How long the owner needs for the rest at its pace so far (inf: no byte yet)."""
        done, elapsed = self.position - self.start, now - self.started
        if done <= 0 or elapsed <= 0:
            return math.inf
        return self.left / (done / elapsed)

    @property
    def left(self) -> int:
        """Bytes not yet taken by the owner."""
        return max(0, self.end - max(self.position, self.reserved))

    def take(self, available: int) -> int:
        """Reserve up to ``available`` bytes to write next; how many (0: the claim is over)."""
        begin = max(self.position, self.reserved)
        count = max(0, min(available, self.end - begin))
        self.reserved = begin + count
        return count


class Pieces:
    """The pieces of a ``size``-byte file, ``done`` intervals already on disk."""

    def __init__(
        self,
        size: int,
        piece_size: int,
        done: list[tuple[int, int]] | None = None,
        *,
        window: int = 0,
    ) -> None:
        self.size = size
        #: Pieces are handed out only up to this many bytes past the prefix (0: anywhere).
        self.window = window
        self._done: list[tuple[int, int]] = merge(done or [])
        self._todo: list[tuple[int, int]] = []
        for start, end in _gaps(self._done, size):
            self._todo += [(s, min(s + piece_size, end)) for s in range(start, end, piece_size)]
        self._claims: set[Claim] = set()
        #: How many claims were stolen from (the back half taken by an idle connection).
        self.steals = 0

    @property
    def complete(self) -> bool:
        """True once every byte is done."""
        return self._done == [(0, self.size)] or self.size == 0

    @property
    def active(self) -> bool:
        """True while some claim runs (an idle connection may get part of it later)."""
        return bool(self._claims)

    @property
    def done_bytes(self) -> int:
        """Bytes on disk."""
        return sum(end - start for start, end in self._done)

    def done(self) -> list[tuple[int, int]]:
        """The done intervals, including what running claims wrote so far (for the state)."""
        partial = [(c.start, c.position) for c in self._claims if c.position > c.start]
        return merge(self._done + partial)

    @property
    def prefix(self) -> int:
        """How many bytes from the file's start are on disk without a gap (what a check that
        reads the file in order may read), running claims' writes included."""
        done = self.done()
        return done[0][1] if done and done[0][0] == 0 else 0

    def claim(self, now: float = 0.0) -> Claim | None:
        """The next unclaimed piece, else the back half of the claim that needs longest
        (stolen, if it needs longer than STEAL_AFTER_SECONDS), else None."""
        if self._todo and self._within_window(self._todo[0][0]):
            start, end = self._todo.pop(0)
            claim = Claim(start, start, end, started=now)
            self._claims.add(claim)
            return claim
        victim = self._victim(now)
        if victim is None:
            return None
        taken = max(victim.position, victim.reserved)
        # The head of a window whose owner lags is taken whole when too small to halve.
        middle = taken + victim.left // 2 if victim.left >= 2 * MIN_STEAL else taken
        claim = Claim(middle, middle, victim.end, started=now)
        victim.end = middle
        self._claims.add(claim)
        self.steals += 1
        return claim

    def _within_window(self, start: int) -> bool:
        return not self.window or start < self.prefix + self.window

    def _victim(self, now: float) -> Claim | None:
        """The claim to steal from: worth stealing (at least 2 * MIN_STEAL left, more than
        STEAL_AFTER_SECONDS of its owner's time); with a window the earliest such claim, and
        the claim that blocks the gapless prefix whatever its size (a source that drips a
        byte a second would otherwise hold every reader back), else the one that needs
        longest."""
        if not self.window:
            victim = max(self._claims, key=lambda c: (c.seconds_left(now), c.left), default=None)
            worth = [victim] if victim is not None else []
        else:  # a claim with no byte yet gets its chance first: its request just went out
            worth = sorted(
                (c for c in self._claims if now - c.started >= STEAL_AFTER_SECONDS),
                key=lambda c: c.start,
            )
        prefix = self.prefix if self.window else -1
        for claim in worth:
            least = 1 if claim.position == prefix else 2 * MIN_STEAL
            if claim.left >= least and claim.seconds_left(now) >= STEAL_AFTER_SECONDS:
                return claim
        return None

    def extend(self, claim: Claim) -> bool:
        """Grow ``claim`` over the next unclaimed piece when that starts where it ends (its
        answer runs on: no new request is needed); whether it grew."""
        if self._todo and self._todo[0][0] == claim.end and self._within_window(claim.end):
            claim.end = self._todo.pop(0)[1]
            return True
        return False

    def advance(self, claim: Claim, written: int) -> None:
        """``written`` more bytes of ``claim`` are on disk."""
        claim.position += written

    def finish(self, claim: Claim) -> None:
        """``claim`` ended: what it wrote is done, the rest goes back to the pool."""
        self._claims.discard(claim)
        if claim.position > claim.start:
            self._done = merge([*self._done, (claim.start, claim.position)])
        if claim.position < claim.end:  # in order: a whole-file answer extends over it
            bisect.insort(self._todo, (claim.position, claim.end))


def intersect(a: list[tuple[int, int]], b: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The bytes in both sets of ``(start, end)`` intervals (each in any order), merged."""
    first, second = merge(a), merge(b)
    both: list[tuple[int, int]] = []
    i = j = 0
    while i < len(first) and j < len(second):
        start, end = max(first[i][0], second[j][0]), min(first[i][1], second[j][1])
        if start < end:
            both.append((start, end))
        if first[i][1] < second[j][1]:
            i += 1
        else:
            j += 1
    return both


def merge(intervals: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """``(start, end)`` intervals sorted, empty ones dropped, overlapping or adjacent ones
    joined."""
    merged: list[tuple[int, int]] = []
    for start, end in sorted(i for i in intervals if i[1] > i[0]):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def _gaps(done: list[tuple[int, int]], size: int) -> list[tuple[int, int]]:
    gaps, position = [], 0
    for start, end in done:
        if start > position:
            gaps.append((position, min(start, size)))
        position = max(position, end)
    if position < size:
        gaps.append((position, size))
    return gaps
