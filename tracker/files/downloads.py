"""Accounting around every archive download: one log line at its end, the active-streams gauge.

Wraps the body of an archive response whatever produced it (a local file, the cache, the
proxy, a shared refresh), so that this is written once for every byte path.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import quart
import trio
from quart.wrappers.response import ResponseBody

from tracker.core.logs import log_event
from tracker.core.metrics import Metrics
from tracker.errors import ClientGone
from tracker.files.bodies import WrappedBody

log = logging.getLogger("tracker.download")


def outcome_of(sent: int, expected: int | None, error: BaseException | None) -> str:
    """``complete``, ``client_gone`` (cancelled: the client went away) or ``error``."""
    if error is None:
        return "complete" if expected is None or sent == expected else "error"
    if isinstance(error, (trio.Cancelled, ClientGone)):
        return "client_gone"
    return "error"


class DownloadBody(WrappedBody):
    """Counts the stream as active while it is sent and logs one ``download`` event at its end."""

    def __init__(
        self,
        inner: ResponseBody,
        fields: dict[str, Any],
        expected: int | None,
        metrics: Metrics | None,
    ) -> None:
        super().__init__(inner)
        self._fields = fields
        self._expected = expected
        self._metrics = metrics
        self._sent = 0
        self._began = time.monotonic()

    async def _start(self) -> None:
        self._began = time.monotonic()
        await super()._start()
        if self._metrics is not None:
            self._metrics.active_streams.inc()

    def _passed(self, size: int) -> None:
        self._sent += size

    async def _finish(self, error: BaseException | None) -> None:
        try:
            await super()._finish(error)
        finally:
            if self._metrics is not None and self._inner_chunks is not None:
                self._metrics.active_streams.dec()
            outcome = outcome_of(self._sent, self._expected, error)
            seconds = round(time.monotonic() - self._began, 3)
            level = "info" if outcome != "error" else "warning"
            log_event(
                log,
                level,
                "download",
                **self._fields,
                bytes=self._sent,
                seconds=seconds,
                outcome=outcome,
            )


def account_download(
    response: quart.Response, request: quart.Request, metrics: Metrics | None, **fields: Any
) -> None:
    """Make ``response`` count and log its download (GET answers with a body only)."""
    if request.method != "GET" or response.status_code not in (200, 206):
        return
    fields = {"status": response.status_code, **fields}
    response.response = DownloadBody(response.response, fields, response.content_length, metrics)
