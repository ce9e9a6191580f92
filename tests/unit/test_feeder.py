"""The feeder of stream parsers: what a parser is sent for each kind of request."""

from __future__ import annotations

from typing import Any

from tracker.proof.formats.parsing import Bulk, ParserOf
from tracker.proof.formats.streamparse import Feeder


def asking(*wants: int) -> tuple[list[Any], ParserOf[None]]:
    got: list[Any] = []

    def parser() -> ParserOf[None]:
        for want in wants:
            got.append((yield want))
        yield 0  # a boundary: the stream may end

    return got, parser()


def test_a_bulk_read_within_one_immutable_chunk_is_a_view_of_it() -> None:
    chunk = bytes(range(256)) * 64
    got, parser = asking(Bulk(1000), 1000, Bulk(14_384))
    feeder = Feeder(parser)
    feeder.feed(chunk)
    feeder.finish()
    view, copied, rest = got
    assert isinstance(view, memoryview) and view.obj is chunk and view.readonly
    assert isinstance(copied, bytes)  # a plain read is always bytes
    assert bytes(view) + copied + bytes(rest) == chunk


def test_a_bulk_read_across_chunks_or_of_a_mutable_one_is_bytes() -> None:
    data = bytes(range(256)) * 8
    got, parser = asking(Bulk(1500), Bulk(548))
    feeder = Feeder(parser)
    feeder.feed(data[:1000])  # the first read straddles two chunks: put together, bytes
    feeder.feed(memoryview(bytearray(data[1000:])))  # a chunk that could change: copied
    feeder.finish()
    assert [type(piece) for piece in got] == [bytes, bytes]
    assert b"".join(got) == data
