"""Reading a streamed httpx body so that every generator under it is unwound, its failures
mapped to TransportError (:mod:`tracker.net.exchange`), and the bytes of the bodies held at
once across tasks (:class:`BodyBudget`)."""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator, Hashable
from contextlib import asynccontextmanager

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


class BodyBudget:
    """``total`` bytes of bodies held at once by the tasks of one trio run, at most
    ``per_owner`` of them by one owner (a server: one that draws its bodies out holds no
    more, the others' go on), taken whole and in turn (first come, first served: a large
    share is not passed over by small ones for ever; one waiting for its owner's own to be
    given back passes no one and is passed meanwhile). A share is taken before its body is
    read (the most it may be) and given back once its body is let go (:meth:`held`), so
    that no task waits for more while it holds some: none waits on another that waits on
    it."""

    def __init__(self, total: int, per_owner: int | None = None) -> None:
        self.total = total
        self.per_owner = total if per_owner is None else min(per_owner, total)
        #: Bytes held now, and the most held at once.
        self.used = 0
        self.peak = 0
        self._owned: dict[Hashable, int] = {}
        self._waiting: deque[_Waiting] = deque()

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
            await trio.lowlevel.cancel_shielded_checkpoint()
            return
        try:
            await turn.granted.wait()
        except BaseException:
            if turn.granted.is_set():  # granted as it was cancelled: given back
                self.give_back(count, owner)
            else:  # its place left: the next may fit now
                self._waiting.remove(turn)
                self._wake()
            raise

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

    def _wake(self) -> None:
        # an owner at its part waits for its own shares, its later turns behind it: they pass
        # no one (its part only shrinks meanwhile, so it is not passed for ever)
        capped: set[Hashable] = set()
        for turn in list(self._waiting):
            if turn.owner in capped or self._owned.get(turn.owner, 0) + turn.count > self.per_owner:
                capped.add(turn.owner)
            elif self.used + turn.count > self.total:
                return  # in turn: none after it passes it
            else:
                self._waiting.remove(turn)
                self._grant(turn)


@attrs.frozen
class _Waiting:
    count: int
    owner: Hashable
    granted: trio.Event


class BodyShare:
    """One body's part of a :class:`BodyBudget` (:attr:`count` bytes held)."""

    def __init__(self, budget: BodyBudget, owner: Hashable = None) -> None:
        self._budget = budget
        self._owner = owner
        self.count = 0

    async def take(self, count: int) -> None:
        """Wait in turn for ``count`` bytes (at most the budget's :attr:`~BodyBudget.per_owner`)
        while this share holds none (taken once: no task waits for more while it holds
        some)."""
        assert self.count == 0, "a share is taken once"
        count = min(count, self._budget.per_owner)
        await self._budget.take(count, self._owner)
        self.count = count

    def keep(self, count: int) -> None:
        """Hold at most ``count`` bytes (the body's size once read), the rest given back."""
        count = max(count, 0)
        if count < self.count:
            self._budget.give_back(self.count - count, self._owner)
            self.count = count
