"""One log line per archive download, at its end: bytes, duration, outcome.

Wraps the body of an archive response whatever produced it (a local file, the cache, the
proxy): Quart sends a body as ``async with body as chunks: async for chunk in chunks``, so the
wrapper sees the first byte, every chunk and how the sending ended.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncGenerator, AsyncIterable
from types import TracebackType
from typing import Any

import quart
import trio
from quart.wrappers.response import ResponseBody

from tracker.logs import log_event

log = logging.getLogger("tracker.download")


def outcome_of(sent: int, expected: int | None, exc: BaseException | None) -> str:
    """``complete``, ``client_gone`` (cancelled: the client went away) or ``error``."""
    if exc is None:
        return "complete" if expected is None or sent == expected else "error"
    if isinstance(exc, trio.Cancelled):
        return "client_gone"
    return "error"


class LoggedBody(ResponseBody):
    """A response body that logs one ``download`` event when sending ends."""

    def __init__(self, inner: ResponseBody, fields: dict[str, object], expected: int | None):
        self._inner = inner
        self._fields = fields
        self._expected = expected
        self._sent = 0
        self._start = time.monotonic()
        self._chunks: AsyncGenerator[bytes, None] | None = None

    async def __aenter__(self) -> AsyncIterable[bytes]:
        self._start = time.monotonic()
        self._chunks = self._count(await self._inner.__aenter__())
        return self._chunks

    async def _count(self, chunks: AsyncIterable[bytes]) -> AsyncGenerator[bytes, None]:
        async for chunk in chunks:
            yield chunk
            self._sent += len(chunk)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if self._chunks is not None:
                # Closed here, not by the garbage collector: the send may have been
                # interrupted mid-iteration (shielded: we may be running under cancellation).
                with trio.CancelScope(shield=True):
                    await self._chunks.aclose()
            await self._inner.__aexit__(exc_type, exc_value, tb)  # type: ignore[arg-type]
        finally:
            seconds = time.monotonic() - self._start
            outcome = outcome_of(self._sent, self._expected, exc_value)
            level = "info" if outcome != "error" else "warning"
            fields: dict[str, Any] = self._fields  # any field name may pass through
            log_event(
                log,
                level,
                "download",
                **fields,
                bytes=self._sent,
                seconds=round(seconds, 3),
                outcome=outcome,
            )


def log_download(response: quart.Response, request: quart.Request, **fields: object) -> None:
    """Make ``response`` log its download at the end (GET answers with a body only)."""
    if request.method != "GET" or response.status_code not in (200, 206):
        return
    expected = response.content_length
    fields = {"status": response.status_code, **fields}
    response.response = LoggedBody(response.response, fields, expected)
