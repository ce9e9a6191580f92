"""Reading a streamed httpx body so that every generator under it is unwound, its failures
mapped to TransportError (:mod:`tracker.net.exchange`), and the bytes of the bodies held at
once across tasks (:class:`BodyBudget`)."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import AsyncIterator, Hashable, Iterator
from contextlib import asynccontextmanager, contextmanager

import attrs
import httpx
import trio

from tracker.errors import TransportError
from tracker.net.exchange import HTTPX_ERRORS, transport_reason


@asynccontextmanager
async def body_chunks(response: httpx.Response) -> AsyncIterator[AsyncIterator[bytes]]:
    """``response.aiter_raw()``, unwound properly however the caller leaves it; a read that
    fails raises TransportError.

    httpx and httpcore read a body through nested async generators that ``aclose()`` of the
    outer one does not reach (encode/httpx#3686); left suspended, they are collected later
    and trio warns. A read that is cancelled unwinds all of them through their own
    ``except``/``finally`` clauses (httpcore then closes the connection), so leaving early
    pulls once more under a cancelled scope: buffered data may come first (at most one
    socket read), the first real read ends it.
    """
    chunks = response.aiter_raw()
    try:
        yield _Mapped(chunks)
    finally:
        with trio.CancelScope() as scope:
            scope.cancel()
            try:
                while True:
                    await chunks.__anext__()
            except (StopAsyncIteration, httpx.HTTPError):
                pass  # the generators ended, by exception or at the end of the body


class _Mapped:
    """The chunks of ``chunks``, httpx's failures raised as TransportError. An iterator
    object rather than an async generator: one left suspended has nothing to finalize."""

    def __init__(self, chunks: AsyncIterator[bytes]) -> None:
        self._chunks = chunks

    def __aiter__(self) -> _Mapped:
        return self

    async def __anext__(self) -> bytes:
        try:
            return await self._chunks.__anext__()
        except HTTPX_ERRORS as exc:
            raise TransportError(transport_reason(exc)) from exc


#: Seconds a share's body is read before its pace may revoke it (:func:`revoked_from`).
PACE_GRACE = 2.0


def body_share(headers: httpx.Headers, max_body: int) -> int | None:
    """The bytes a body whose response head is ``headers`` is read into, at most
    ``max_body``: its Content-Length; ``max_body`` without one (sent in chunks, or until the
    connection closes); None when it says more than ``max_body`` (refused unread). h11 reads
    no byte past the length a head declares (docs/http-api.md, "The cluster level"). Pure."""
    declared: str = headers.get("content-length", "")
    if "transfer-encoding" in headers or not (declared.isascii() and declared.isdigit()):
        return max_body  # chunked (it beats a length) or none said: the most it may be
    length = int(declared)
    return length if length <= max_body else None


def revoked_from(
    taken: float, ends: float, received: int, count: int, grace: float = PACE_GRACE
) -> float:
    """When a share of ``count`` bytes taken at ``taken`` (trio's clock), for a body to be
    read by ``ends`` of which ``received`` bytes came, is revoked while another read waits
    for room: once, at the pace it came since ``taken``, it would not be in by ``ends``
    (its room then holds bytes that do not come; docs/http-api.md, "The cluster level"),
    never within ``grace`` seconds of ``taken``; inf when never (its body is in, or it has
    no deadline). Pure."""
    if received >= count or math.isinf(ends):
        return math.inf
    # at time t its pace is received / (t - taken): it is in by ends while
    # t - taken <= (ends - taken) * received / count
    return taken + max(grace, (ends - taken) * received / count)


class BodyBudget:
    """``total`` bytes of bodies held at once by the tasks of one trio run, at most
    ``per_owner`` of them by one owner (a server: one that draws its bodies out holds no
    more, the others' go on), taken whole and in turn (first come, first served: a large
    share is not passed over by small ones for ever; one waiting for its owner's own to be
    given back passes no one and is passed meanwhile). A share is taken before its body is
    read (the most it may be) and given back once its body is let go (:meth:`held`), so
    that no task waits for more while it holds some: none waits on another that waits on
    it. While a read waits for room the whole budget lacks, a share whose body is read
    (:meth:`BodyShare.reading`) at a pace that would not bring it in by its read's deadline
    is revoked (:func:`revoked_from`), and its owner's shares that wait are refused: servers
    that draw their bodies out hold the room only until then, not to their deadlines."""

    def __init__(self, total: int, per_owner: int | None = None) -> None:
        self.total = total
        self.per_owner = total if per_owner is None else min(per_owner, total)
        #: Bytes held now, and the most held at once.
        self.used = 0
        self.peak = 0
        self._owned: dict[Hashable, int] = {}
        self._waiting: deque[_Waiting] = deque()
        #: The shares whose bodies are being read (:meth:`BodyShare.reading`).
        self.reading: set[BodyShare] = set()
        # set and replaced when a turn is given or refused or a body starts being read:
        # the waiting reads look again when a share may next be revoked
        self._stirred = trio.Event()

    @asynccontextmanager
    async def held(self, count: int = 0, owner: Hashable = None) -> AsyncIterator[BodyShare]:
        """A share of ``count`` bytes (at most :attr:`per_owner`) of ``owner``'s, waited for
        in turn; 0: none yet, :meth:`BodyShare.take` waits for it once the body's size is
        known (its head read). Its :meth:`BodyShare.keep` gives back what the body did not
        need; all of it is given back on leaving."""
        share = BodyShare(self, owner)
        try:
            if count:
                await share.take(count)
            yield share
        finally:
            share.keep(0)

    async def take(self, count: int, owner: Hashable) -> None:
        """Wait in turn for ``count`` bytes of ``owner``'s (:meth:`BodyShare.take` asks)."""
        await trio.lowlevel.checkpoint_if_cancelled()
        turn = _Waiting(count, owner, trio.Event())
        self._waiting.append(turn)
        self._wake()
        if turn.granted.is_set():  # none before it waits for room: taken at once
            if turn.refused is not None:
                raise TransportError(turn.refused)
            await trio.lowlevel.cancel_shielded_checkpoint()
            return
        try:
            while not turn.granted.is_set():
                # woken when a share being read may be revoked for its pace
                stirred = self._stirred
                with trio.move_on_at(self._next_revocation()):
                    await stirred.wait()
                self._wake()
        except BaseException:
            if turn.refused is not None:  # refused as it was cancelled: it holds nothing
                pass
            elif turn.granted.is_set():  # granted as it was cancelled: given back
                self.give_back(count, owner)
            else:  # its place left: the next may fit now
                self._waiting.remove(turn)
                self._wake()
            raise
        if turn.refused is not None:
            raise TransportError(turn.refused)

    def give_back(self, count: int, owner: Hashable = None) -> None:
        """Free ``count`` bytes ``owner`` took before; the waiting shares that fit now are
        given in turn."""
        self.used -= count
        left = self._owned.get(owner, 0) - count
        if left > 0:
            self._owned[owner] = left
        else:
            self._owned.pop(owner, None)
        self._wake()

    def _grant(self, turn: _Waiting) -> None:
        self.used += turn.count
        self._owned[turn.owner] = self._owned.get(turn.owner, 0) + turn.count
        self.peak = max(self.peak, self.used)
        turn.granted.set()
        self.stir()

    def stir(self) -> None:
        """Wake the waiting reads to look again (a turn given or refused, a body that
        starts being read: when a share may next be revoked)."""
        self._stirred.set()
        self._stirred = trio.Event()

    def _wake(self) -> None:
        # the shares that fit given in turn, then those read too slowly for a waiting read
        # revoked: a refused turn leaves its place, the next may fit now
        while True:
            wanted = self._grant_in_turn()
            if not wanted or not self._revoke_due():
                return

    def _grant_in_turn(self) -> bool:
        """Give the waiting shares that fit, in turn; True when one waits for room the
        whole budget lacks (not its owner's part)."""
        # an owner at its part waits for its own shares, its later turns behind it: they pass
        # no one (its part only shrinks meanwhile, so it is not passed for ever)
        capped: set[Hashable] = set()
        for turn in list(self._waiting):
            if turn.owner in capped or self._owned.get(turn.owner, 0) + turn.count > self.per_owner:
                capped.add(turn.owner)
            elif self.used + turn.count > self.total:
                return True  # in turn: none after it passes it
            else:
                self._waiting.remove(turn)
                self._grant(turn)
        return False

    def _revoke_due(self) -> bool:
        """Revoke each share being read whose pace is past :func:`revoked_from` now, and
        refuse its owner's waiting turns (its server draws its bodies out: they would hold
        their room alike); True when a turn was refused."""
        now = trio.current_time()
        refused = False
        for share in list(self.reading):
            rate = share.revoke(now)
            if rate is None:
                continue
            for turn in [t for t in self._waiting if t.owner == share.owner]:
                self._waiting.remove(turn)
                turn.refused = (
                    f"another body of its server came at {rate:.0f} B/s: it would not be in by"
                    " its deadline, and other answers waited for its room"
                )
                turn.granted.set()
                refused = True
        if refused:
            self.stir()
        return refused

    def _next_revocation(self) -> float:
        """The next time a share being read may be revoked for its pace (inf: none)."""
        now = trio.current_time()
        times = (share.revoked_from() for share in self.reading)
        return min((t for t in times if t > now), default=math.inf)


@attrs.define(eq=False)
class _Waiting:
    count: int
    owner: Hashable
    granted: trio.Event
    #: Why it was refused (its owner's other body revoked), set with ``granted``.
    refused: str | None = None


class BodyShare:
    """One body's part of a :class:`BodyBudget` (:attr:`count` bytes held)."""

    def __init__(self, budget: BodyBudget, owner: Hashable = None) -> None:
        self._budget = budget
        self.owner = owner
        self.count = 0
        #: The bytes of its body read so far (:meth:`reading`'s caller counts them).
        self.received = 0
        self._taken = math.inf
        self._ends = math.inf
        self._scope: trio.CancelScope | None = None
        self._revoked: str | None = None

    async def take(self, count: int) -> None:
        """Wait in turn for ``count`` bytes (at most the budget's :attr:`~BodyBudget.per_owner`)
        while this share holds none (taken once: no task waits for more while it holds
        some). TransportError when it is refused (its owner's other body revoked for its
        pace, :class:`BodyBudget`)."""
        assert self.count == 0, "a share is taken once"
        count = min(count, self._budget.per_owner)
        await self._budget.take(count, self.owner)
        self.count = count
        # its body is to be read by the task's deadline, from now on
        self._taken = trio.current_time()
        self._ends = trio.current_effective_deadline()

    @contextmanager
    def reading(self) -> Iterator[None]:
        """Its body read in this block (:attr:`received` kept up to date by the caller),
        cancelled when the share is revoked for its pace (:class:`BodyBudget`), which then
        raises TransportError (one line)."""
        scope = self._scope = trio.CancelScope()
        self._budget.reading.add(self)
        self._budget.stir()  # its pace may revoke it before any share read now
        try:
            with scope:
                yield
        finally:
            self._budget.reading.discard(self)
            self._scope = None
        if scope.cancelled_caught and self._revoked is not None:
            raise TransportError(self._revoked)

    def revoked_from(self) -> float:
        """When its pace revokes it while another read waits (:func:`revoked_from`; inf:
        never, or revoked already)."""
        if self._revoked is not None:
            return math.inf
        return revoked_from(self._taken, self._ends, self.received, self.count)

    def revoke(self, now: float) -> float | None:
        """Revoke it when its pace is past :meth:`revoked_from` at ``now``: its read is
        cancelled; the pace it came at (bytes a second), None when it stands."""
        if self._scope is None or now < self.revoked_from():
            return None
        rate = self.received / max(now - self._taken, 1e-9)
        self._revoked = (
            f"a body of {self.count} bytes came at {rate:.0f} B/s: it would not be in by its"
            " deadline, and other answers waited for its room"
        )
        self._scope.cancel()
        return rate

    def keep(self, count: int) -> None:
        """Hold at most ``count`` bytes (the body's size once read), the rest given back."""
        count = max(count, 0)
        if count < self.count:
            self._budget.give_back(self.count - count, self.owner)
            self.count = count
