"""The body of an upstream answer, resumed with a Range request when the connection breaks.

A cache refresh of a 100 GB archive that loses its upstream connection at 60 % should not
start over, nor fail every client reading along. :class:`UpstreamBody` yields the body's
chunks; when the body breaks (a transport error, a read timeout, a body ending short) and a
``reopen`` function is given, it waits a little (``delays``), asks for the rest
(``Range: bytes={received}-``, see :func:`resume_upstream`) and goes on yielding, so the
consumer sees one seamless stream. Each break gets ``len(delays)`` attempts; a resumed stream
that delivered bytes before breaking again starts a fresh count.

Bytes of two versions of a file are never spliced: archives of one slot and hash made by
different nodes are not byte-identical, and a source may replace its file between two
requests. So a resume asks the *same* source only, and is accepted only when the ``206``
proves the same representation as the first answer (:func:`same_representation`, by the
one rule of :mod:`tracker.multisource.samefile`): the same strong ``ETag``, or, when the first
answer had none, the same ``Last-Modified``, with a ``Content-Range`` that is exactly the
rest of the file. A first answer with neither
validator is not resumed at all (:func:`resumable`). When no resume is possible the body
raises: every client stream it fed ends in error and nothing is promoted.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, Awaitable, Callable
from types import TracebackType

import httpx
import trio

from tracker.cache.refresh import Refresh
from tracker.clientwire.transport import splice_stream
from tracker.config.schema import TargetGroup
from tracker.core.text import one_line, quoted
from tracker.errors import SourceFailed, TransportError, UpstreamError
from tracker.multisource.contentrange import ContentRange, states_range
from tracker.multisource.samefile import Validators, not_same_reason
from tracker.net.bodyreads import body_chunks
from tracker.observability.logs import log_event
from tracker.proxy.failover import open_upstream
from tracker.proxy.upstream import DownloadClients, UpstreamAnswer

log = logging.getLogger("tracker.resume")

#: ``reopen(first, offset, size)``: an answer carrying bytes ``offset``.. of the file ``first``
#: answered; raises UpstreamError.
Reopen = Callable[[UpstreamAnswer, int, int], Awaitable[UpstreamAnswer]]


class _Reads:
    """The reads of an :class:`UpstreamBody`'s body, as both its readers make them::

        while await reads.again():
            with reads:
                ...  # read the current answer's body

    Leaving the block, a read is whole or says why not: a body ending short, or a break of
    one of ``breaks`` (caught); anything else propagates (cancellation, a consumer that
    stops, an answer longer than announced). ``again`` then resumes the break (raising
    UpstreamError once its attempts are used up), or says the body is whole.
    """

    def __init__(self, body: UpstreamBody, breaks: tuple[type[Exception], ...]) -> None:
        self._body = body
        self._breaks = breaks
        self._failures = 0
        #: What the body had received when the last read started (None: no read yet).
        self._start: int | None = None
        #: Why the last read did not end the body (None: it did).
        self._reason: str | None = None

    async def again(self) -> bool:
        """Whether to read (again): True first, then after each break resumed."""
        body = self._body
        if self._start is not None:
            if self._reason is None:
                return False
            # A read that moved bytes before it broke starts a fresh count: each break gets
            # its own attempts.
            failures = 0 if body.received > self._start else self._failures
            self._failures = await body.resume(self._reason, failures)
        self._start = body.received
        self._reason = None
        return True

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        body = self._body
        if exc_value is None:
            if body.received != body.length:
                self._reason = f"upstream ended after {body.received} of {body.length} bytes"
            return False
        if isinstance(exc_value, self._breaks):
            self._reason = f"upstream broke: {exc_value}"
            return True
        return False


class UpstreamBody:
    """``length`` body bytes of ``first`` (and, after breaks, of the answers resuming it).

    ``answer`` is the answer being read; the owner closes it at the end (older ones are
    closed here when replaced). ``received`` counts the body bytes yielded so far.
    """

    def __init__(
        self,
        first: UpstreamAnswer,
        length: int,
        *,
        reopen: Reopen | None = None,
        delays: tuple[float, ...] = (),
        on_resume: Callable[[], None] | None = None,
    ) -> None:
        self.first = first
        self.answer = first
        self.length = length
        self.received = 0
        self.resumes = 0
        self._reopen = reopen
        self._delays = delays
        self._on_resume = on_resume

    async def chunks(self) -> AsyncGenerator[bytes, None]:
        """The body, chunk by chunk; use under ``contextlib.aclosing``.

        Raises UpstreamError when the body breaks for good (more bytes than announced, or a
        break no resume could repair). Cancellation propagates.
        """
        reads = _Reads(self, (TransportError,))
        while await reads.again():
            with reads:
                async with body_chunks(self.answer.response) as chunks:
                    async for chunk in chunks:
                        self.received += len(chunk)
                        if self.received > self.length:
                            raise UpstreamError(f"upstream sent more than {self.length} bytes")
                        await self.answer.pacer.pace(len(chunk))  # source_limits.max_rate
                        yield chunk

    async def into(
        self, refresh: Refresh, on_bytes: Callable[[int], None], read_timeout: float
    ) -> None:
        """Move the whole body into ``refresh``'s temp file, resuming breaks as
        :meth:`chunks` does: spliced from the socket while an answer's body is whole in a
        plain TCP socket (:meth:`Refresh.splice_from`), else chunk by chunk.
        ``on_bytes(n)`` is told of every body byte that arrived.

        Raises UpstreamError as :meth:`chunks`, CacheError when the file cannot be written.
        Cancellation propagates (after the current splice slice).
        """

        def moved(count: int) -> None:
            self.received += count
            on_bytes(count)

        reads = _Reads(self, (TransportError, SourceFailed))
        while await reads.again():
            with reads:
                await self._move_answer(refresh, moved, read_timeout)

    async def _move_answer(
        self, refresh: Refresh, moved: Callable[[int], None], read_timeout: float
    ) -> None:
        """Move the current answer's body (the rest of the file) into ``refresh``."""
        left = self.length - self.received
        stream = splice_stream(self.answer.response, left)
        if stream is not None:
            stream.take_body()
            sock = stream.get_extra_info("socket")
            pacer = self.answer.pacer
            await refresh.splice_from(sock, left, read_timeout, moved, pacer=pacer)
            return
        async with body_chunks(self.answer.response) as chunks:
            async for chunk in chunks:
                if self.received + len(chunk) > self.length:
                    raise UpstreamError(f"upstream sent more than {self.length} bytes")
                moved(len(chunk))
                await refresh.write(chunk)
                await self.answer.pacer.pace(len(chunk))  # source_limits.max_rate

    async def resume(self, reason: str, failures: int) -> int:
        """Replace the broken answer by one carrying the rest; return the failure count.
        Raises UpstreamError(reason) once the attempts for this break are used up."""
        log_event(
            log,
            "warning",
            "upstream_broke",
            url=self.answer.url,
            received=self.received,
            of=self.length,
            reason=reason,
        )
        await self.answer.aclose()
        while self._reopen is not None and failures < len(self._delays):
            await trio.sleep(self._delays[failures])
            failures += 1
            try:
                answer = await self._reopen(self.first, self.received, self.length)
            except UpstreamError as exc:
                log_event(log, "warning", "upstream_resume_failed", attempt=failures, reason=exc)
                continue
            self.answer = answer
            self.resumes += 1
            if self._on_resume is not None:
                self._on_resume()
            log_event(
                log,
                "info",
                "upstream_resumed",
                url=answer.url,
                offset=self.received,
                attempt=failures,
            )
            return failures
        raise UpstreamError(one_line(reason))


def resumable(first: httpx.Response) -> bool:
    """True when a break in ``first``'s body may be resumed: it carries a strong ETag or a
    Last-Modified date, so that a ``206`` can prove it continues the same file."""
    return Validators.of(first.headers).if_range() is not None


def same_representation(first: httpx.Response, resumed: httpx.Response) -> str | None:
    """Why ``resumed`` is not provably the same file as ``first``; None when it is
    (:func:`tracker.multisource.samefile.sameness` says *same*)."""
    return not_same_reason(Validators.of(first.headers), Validators.of(resumed.headers))


async def resume_upstream(
    clients: DownloadClients,
    group: TargetGroup,
    first: UpstreamAnswer,
    offset: int,
    size: int,
) -> UpstreamAnswer:
    """Ask the source of ``first`` (a 200 of ``size`` bytes) for bytes ``offset`` to
    ``size - 1``, with ``Range: bytes={offset}-`` and ``If-Range`` (its strong ETag, else its
    Last-Modified date: a source whose file changed answers 200, which is refused).

    Only that source: another source's copy of the same name may differ byte for byte. The
    answer counts only as a ``206`` with ``Content-Range: bytes {offset}-{size-1}/{size}``
    and the validators of ``first`` (:func:`same_representation`). Raises
    :class:`UpstreamError` otherwise. Cancellation propagates; nothing stays open.
    """
    validator = Validators.of(first.response.headers).if_range()
    if validator is None:
        raise UpstreamError("cannot resume: the source gave no ETag or Last-Modified")
    headers = {"range": f"bytes={offset}-", "if-range": validator}
    try:
        answer = await open_upstream(clients, group, "GET", headers, [(first.file, first.source)])
    except UpstreamError as exc:
        raise UpstreamError(one_line(f"cannot resume: {exc}")) from exc
    problem = resume_problem(answer.response, offset, size) or same_representation(
        first.response, answer.response
    )
    if problem is None:
        return answer
    await answer.aclose()
    log_event(log, "warning", "upstream_resume_refused", url=answer.url, reason=problem)
    raise UpstreamError(one_line(f"cannot resume: {problem}"))


def resume_problem(response: httpx.Response, offset: int, size: int) -> str | None:
    """Why ``response`` is not bytes ``offset``..``size - 1`` of a ``size``-byte file; None
    when it is."""
    if response.status_code != 206:
        return f"answered {response.status_code} to a range request, not 206"
    got = response.headers.get("content-range", "")
    if not states_range(got, offset, size - 1, size):
        expected = ContentRange(offset, size - 1, size).text()
        return f"content-range {quoted(got)} is not {quoted(expected)}"
    length = response.headers.get("content-length")
    if length is not None and length.strip() != str(size - offset):
        return f"content-length {quoted(length)} does not match the range"
    return None
