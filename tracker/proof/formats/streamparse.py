"""Parsers of byte streams that arrive in chunks, written as generators that ask for bytes.

A parser is a generator that yields *requests* and is sent the answers: the protocol is
written once, in :mod:`tracker.proof.formats.parsing` (the proof's decoders speak it too).

:class:`Feeder` drives one parser with the chunks of a stream. At the end of the stream
(:meth:`Feeder.finish`) a parser waiting anywhere but at a boundary is sent
:class:`~tracker.errors.EndOfInput`, which it turns into its own one-line reason. The tar
walk and the zstd framing (``tracker.proof.archive.tarwalk``, ``tracker.proof.archive.decoders``)
are such parsers.
"""

from __future__ import annotations

from tracker.errors import EndOfInput
from tracker.proof.formats.parsing import MARK, REST, Bulk, BulkPiece, Parser, ParserOf, Request

__all__ = ["MARK", "REST", "EndOfInput", "Feeder", "Parser", "ParserOf", "Request"]


class Feeder:
    """Feeds the chunks of one stream to one parser, in order, without copying skipped bytes."""

    def __init__(self, parser: Parser) -> None:
        self._parser = parser
        self._want: Request = next(parser)
        self._partial = bytearray()
        self._held: list[memoryview] = []  # a Bulk request's views of immutable chunks so far
        self._held_len = 0
        self._own: bytearray | None = None  # or its bytes copied, from a chunk filled again
        self._own_len = 0
        self._views = False
        self.offset = 0  # bytes of the stream consumed so far

    @property
    def at_mark(self) -> bool:
        """True when the parser waits at a boundary (a MARK): what came so far ends a unit."""
        return self._want == 0

    def feed(self, data: memoryview | bytes) -> None:
        """Consume all of ``data``."""
        self._views = _immutable(data)
        self._consume(memoryview(data), 0, len(data), stop_at_mark=False)

    def feed_to_mark(self, data: memoryview, start: int, end: int) -> int:
        """Consume ``data[start:end]`` up to the first boundary after at least one byte;
        returns the position reached (``end`` when no boundary came first)."""
        self._views = _immutable(data)
        return self._consume(data, start, end, stop_at_mark=True)

    def _consume(self, data: memoryview, start: int, end: int, *, stop_at_mark: bool) -> int:
        send = self._parser.send
        want = self._want
        pos = start
        try:
            while pos < end:
                if want is None:  # REST: everything there is
                    piece = data[pos:end]
                    self.offset += end - pos
                    pos = end
                    want = send(piece)
                elif want == 0:  # MARK
                    if stop_at_mark and pos > start:
                        break
                    want = send(None)
                elif want < 0:  # skip
                    take = min(-want, end - pos)
                    pos += take
                    self.offset += take
                    want = send(None) if take == -want else want + take
                else:
                    want, pos = self._read(data, pos, end, want)
        finally:
            self._want = want
        return pos

    def _read(self, data: memoryview, pos: int, end: int, want: int) -> tuple[Request, int]:
        if type(want) is Bulk:
            return self._read_bulk(data, pos, end, want)
        partial = self._partial
        take = min(want - len(partial), end - pos)
        self.offset += take
        if not partial and take == want:
            return self._parser.send(bytes(data[pos : pos + want])), pos + take
        partial += data[pos : pos + take]
        if len(partial) < want:
            return want, pos + take
        whole = bytes(partial)
        partial.clear()
        return self._parser.send(whole), pos + take

    def _read_bulk(self, data: memoryview, pos: int, end: int, want: int) -> tuple[Request, int]:
        """A Bulk request: views of immutable chunks, never copied here (one, or a tuple
        when it spans chunks); bytes of a chunk its source fills again are copied, once,
        into a buffer of the request's own, made at its full size."""
        held, own = self._held, self._own
        have = self._held_len + self._own_len
        take = min(want - have, end - pos)
        self.offset += take
        view = data[pos : pos + take]
        if not have and take == want:
            return self._parser.send(view if self._views else bytes(view)), pos + take
        if self._views and own is None:
            held.append(view)
            self._held_len += take
        else:
            if own is None:  # a chunk that is filled again came: what was held is copied
                own = self._own = bytearray(want)
                for part in held:
                    own[self._own_len : self._own_len + len(part)] = part
                    self._own_len += len(part)
                held.clear()
                self._held_len = 0
            own[self._own_len : self._own_len + take] = view
            self._own_len += take
        if have + take < want:
            return want, pos + take
        if own is not None:
            sent: BulkPiece = memoryview(own).toreadonly()
            self._own, self._own_len = None, 0  # the parser's to keep
        else:
            sent = tuple(held)
            held.clear()
            self._held_len = 0
        return self._parser.send(sent), pos + take

    def finish(self) -> None:
        """The stream has ended: fine at a boundary; else the parser raises its reason."""
        if self._want is None or self._want == 0:
            self._parser.close()
            return
        self._parser.throw(EndOfInput(self.offset))
        raise AssertionError("a parser went on after the end of its input")  # pragma: no cover


def _immutable(data: memoryview | bytes) -> bool:
    """True when ``data`` is (a view of) ``bytes``: a Bulk request may be sent a view of it,
    which nothing can change and which keeps it alive."""
    return isinstance(data.obj if isinstance(data, memoryview) else data, bytes)
