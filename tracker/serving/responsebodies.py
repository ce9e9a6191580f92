"""Response bodies produced by an async generator and closed deterministically.

A body is sent as ``async with body as chunks: async for chunk in chunks`` (as Quart sends
its ``ResponseBody``; tracker/web/delivery.py hands a :class:`Body` to Quart as one). When
sending stops early (client gone, error), the generator must be closed right there, shielded
from the cancellation that may be unwinding the request, and the body's resources released:
never left to the garbage collector (docs/architecture.md#traps-of-the-stack, 4). Every archive
body of the tracker builds on this.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import AsyncGenerator, AsyncIterable
from contextlib import AbstractAsyncContextManager
from types import TracebackType

import trio


class Body(AbstractAsyncContextManager[AsyncIterable[bytes]]):
    """An answer's body, framework-free: ``async with body as chunks`` gives the chunks;
    leaving the block (the end, an error, the client gone) releases what the body holds.

    The standard library's async context manager declares the abstract ``__aexit__``
    (sending ended, ``exc_value``: why, when early); a body adds its chunks."""

    @abstractmethod
    async def __aenter__(self) -> AsyncIterable[bytes]:
        """Start sending: the chunks."""


class GeneratorBody(Body):
    """A body whose chunks come from :meth:`_generate`; :meth:`_finish` runs once at the end.

    ``_start`` runs when the server starts sending (override to claim resources lazily);
    ``_finish`` runs after the generator is closed, shielded, with the exception that ended
    the sending (None when it ran to its end).
    """

    _chunks: AsyncGenerator[bytes, None] | None = None

    async def __aenter__(self) -> AsyncIterable[bytes]:
        await self._start()
        self._chunks = self._generate()
        return self._chunks

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with trio.CancelScope(shield=True):
            try:
                if self._chunks is not None:
                    await self._chunks.aclose()
            finally:
                await self._finish(exc_value)

    async def _start(self) -> None:
        """Called when sending starts, before the first chunk is asked for."""

    async def _finish(self, error: BaseException | None) -> None:
        """Called once when sending ended (``error``: why it ended early, or None)."""

    @abstractmethod
    def _generate(self) -> AsyncGenerator[bytes, None]:
        """The chunks to send."""


class WrappedBody(GeneratorBody):
    """Passes another body through, chunk by chunk (for accounting around any body)."""

    def __init__(self, inner: Body) -> None:
        self._inner = inner
        self._inner_chunks: AsyncIterable[bytes] | None = None

    async def _start(self) -> None:
        self._inner_chunks = await self._inner.__aenter__()

    async def _generate(self) -> AsyncGenerator[bytes, None]:
        assert self._inner_chunks is not None
        async for chunk in self._inner_chunks:
            yield chunk
            self._passed(len(chunk))

    async def _finish(self, error: BaseException | None) -> None:
        if self._inner_chunks is not None:
            await self._inner.__aexit__(type(error) if error else None, error, None)

    def _passed(self, size: int) -> None:
        """Called after each chunk was handed to the server."""


class BytesBody(GeneratorBody):
    """A body of bytes already in memory (sent as one chunk, none when empty)."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    async def _generate(self) -> AsyncGenerator[bytes, None]:
        if self._data:
            yield self._data
