"""Reading a streamed httpx body so that every generator under it is unwound."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import trio


@asynccontextmanager
async def body_chunks(response: httpx.Response) -> AsyncIterator[AsyncIterator[bytes]]:
    """``response.aiter_raw()``, unwound properly however the caller leaves it.

    httpx and httpcore read a body through nested async generators that ``aclose()`` of the
    outer one does not reach (encode/httpx#3686); left suspended, they are collected later
    and trio warns. A read that is cancelled unwinds all of them through their own
    ``except``/``finally`` clauses (httpcore then closes the connection), so leaving early
    pulls once more under a cancelled scope: buffered data may come first (at most one
    socket read), the first real read ends it.
    """
    chunks = response.aiter_raw()
    try:
        yield chunks
    finally:
        with trio.CancelScope() as scope:
            scope.cancel()
            try:
                while True:
                    await chunks.__anext__()
            except (StopAsyncIteration, httpx.HTTPError):
                pass  # the generators ended, by exception or at the end of the body
