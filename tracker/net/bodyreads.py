"""Reading a streamed httpx body so that every generator under it is unwound, its failures
mapped to TransportError (:mod:`tracker.net.exchange`), and the bytes of the bodies held at
once across tasks (:class:`BodyBudget`)."""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

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


class BodyBudget:
    """``total`` bytes of bodies held at once by the tasks of one trio run, taken whole and
    in turn (first come, first served: a large share is not passed over by small ones
    for ever). A share is taken before its body is read (the most it may be) and given
    back once its body is let go (:meth:`held`), so that no task waits for more while it
    holds some: none waits on another that waits on it."""

    def __init__(self, total: int) -> None:
        self.total = total
        #: Bytes held now, and the most held at once.
        self.used = 0
        self.peak = 0
        self._waiting: deque[tuple[int, trio.Event]] = deque()

    @asynccontextmanager
    async def held(self, count: int) -> AsyncIterator[BodyShare]:
        """A share of ``count`` bytes (at most :attr:`total`), waited for in turn; its
        :meth:`BodyShare.keep` gives back what the body did not need."""
        count = min(count, self.total)
        await self._take(count)
        share = BodyShare(self, count)
        try:
            yield share
        finally:
            share.keep(0)

    async def _take(self, count: int) -> None:
        await trio.lowlevel.checkpoint_if_cancelled()
        if not self._waiting and self.used + count <= self.total:
            self._grant(count)
            await trio.lowlevel.cancel_shielded_checkpoint()
            return
        turn = (count, trio.Event())
        self._waiting.append(turn)
        try:
            await turn[1].wait()
        except BaseException:
            if turn[1].is_set():  # granted as it was cancelled: given back
                self.give_back(count)
            else:  # its place left: the next may fit now
                self._waiting.remove(turn)
                self._wake()
            raise

    def give_back(self, count: int) -> None:
        """Free ``count`` bytes taken before; the waiting shares that fit now are given in
        turn."""
        self.used -= count
        self._wake()

    def _grant(self, count: int) -> None:
        self.used += count
        self.peak = max(self.peak, self.used)

    def _wake(self) -> None:
        while self._waiting and self.used + self._waiting[0][0] <= self.total:
            count, event = self._waiting.popleft()
            self._grant(count)
            event.set()


class BodyShare:
    """One body's part of a :class:`BodyBudget` (:attr:`count` bytes held)."""

    def __init__(self, budget: BodyBudget, count: int) -> None:
        self._budget = budget
        self.count = count

    def keep(self, count: int) -> None:
        """Hold at most ``count`` bytes (the body's size once read), the rest given back."""
        count = max(count, 0)
        if count < self.count:
            self._budget.give_back(self.count - count)
            self.count = count
