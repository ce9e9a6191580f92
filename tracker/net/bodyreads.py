"""Reading a streamed httpx body so that every generator under it is unwound, its failures
mapped to TransportError (:mod:`tracker.net.exchange`)."""

from __future__ import annotations

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
