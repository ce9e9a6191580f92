"""The request protocol of a stream parser, shared by the tar walk and the proof's decoders.

A parser is a generator that yields *requests* and is sent the answers:

- ``n > 0``: the next ``n`` bytes (it is sent them as ``bytes``);
- ``n < 0``: skip ``-n`` bytes (it is sent ``None``): data that is not needed is never copied;
- :data:`MARK`: a boundary where the stream may end (it is sent ``None`` once more bytes come);
- :data:`REST`: whatever bytes come next, at least one, as a ``memoryview`` valid until the
  next request (the stream may end here too);
- ``Bulk(n)``: the next ``n`` bytes like ``n``, but sent as read-only memory the parser may
  keep: a ``memoryview`` over the stream's own chunk, not copied, when they lie in one chunk
  of immutable ``bytes`` (the view keeps it alive); a tuple of such views, in order, when
  they span several (the parser joins them once, where it joins them with what it carries);
  else a read-only view of a buffer of their own. For the large reads (a storage's pieces,
  megabytes each) whose copies were the feeding's main cost (docs/architecture.md, "The
  accounts level" → "Cost").

A stream that ends while a parser wants bytes throws :class:`~tracker.errors.EndOfInput` into
it, which it turns into its own one-line reason. ``tracker.proof.formats.streamparse.Feeder`` drives
parsers with the chunks of a stream.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any, TypeAlias, TypeVar

T = TypeVar("T")
#: A parser's request: bytes to read (> 0), to skip (< 0), a boundary (MARK) or REST.
Request: TypeAlias = int | None
#: A parser, or a part of one (``yield from``) that returns a ``T``.
ParserOf: TypeAlias = Generator[Request, Any, T]
Parser: TypeAlias = ParserOf[None]

MARK: Request = 0
REST: Request = None


class Bulk(int):
    """A request of ``n`` bytes that may be answered with a view (see the module)."""

    __slots__ = ()


#: What a Bulk request is answered with (see the module).
BulkPiece: TypeAlias = bytes | memoryview | tuple[memoryview, ...]


def joined(piece: BulkPiece, before: bytes | memoryview = b"") -> bytes | memoryview:
    """``before`` and ``piece`` as one buffer: copied once when there are several parts,
    ``piece`` itself when it is one and nothing comes before it."""
    if isinstance(piece, tuple):
        return b"".join((before, *piece))
    return b"".join((before, piece)) if before else piece


def run(parser: ParserOf[T], data: bytes) -> T | None:
    """Drive ``parser`` over all of ``data`` held in memory; its return value, or None when
    the data ended at a boundary (MARK, REST) first. A parser that still wants bytes at the
    end is thrown :class:`~tracker.errors.EndOfInput` (it raises its reason)."""
    from tracker.errors import EndOfInput

    view = memoryview(data)
    pos = 0
    try:
        want = next(parser)
        while True:
            if want is None or want == 0:
                if pos >= len(view):
                    parser.close()
                    return None
                if want is None:
                    piece, pos = view[pos:], len(view)
                    want = parser.send(piece)
                else:
                    want = parser.send(None)
            elif want < 0:
                if pos - want > len(view):
                    parser.throw(EndOfInput(len(view)))
                pos -= want
                want = parser.send(None)
            else:
                if pos + want > len(view):
                    parser.throw(EndOfInput(len(view)))
                piece_bytes = bytes(view[pos : pos + want])
                pos += want
                want = parser.send(piece_bytes)
    except StopIteration as stop:
        result: T = stop.value
        return result
