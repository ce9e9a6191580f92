"""The feeder of stream parsers: what a parser is sent for each kind of request."""

from __future__ import annotations

from typing import Any

from tracker.proof.formats.parsing import Bulk, ParserOf, joined
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


def test_a_bulk_read_across_immutable_chunks_is_their_views_in_order() -> None:
    # never copied here: the parser joins them once, with what it carries
    data = bytes(range(256)) * 16
    chunks = [data[:1000], data[1000:1700], data[1700:]]
    got, parser = asking(Bulk(1500), Bulk(len(data) - 1500))
    feeder = Feeder(parser)
    for chunk in chunks:
        feeder.feed(chunk)
    feeder.finish()
    first, second = got
    assert isinstance(first, tuple) and [view.obj for view in first] == chunks[:2]
    assert isinstance(second, tuple) and [view.obj for view in second] == chunks[1:]
    assert all(view.readonly for view in (*first, *second))
    assert joined(first) + joined(second) == data


def test_a_bulk_read_of_a_mutable_chunk_is_copied_once_into_memory_of_its_own() -> None:
    data = bytes(range(256)) * 8
    got, parser = asking(Bulk(1500), Bulk(300), Bulk(248))
    feeder = Feeder(parser)
    feeder.feed(data[:1000])  # immutable, then a chunk that could change: copied after all
    changing = bytearray(data[1000:])
    feeder.feed(memoryview(changing))
    feeder.finish()
    across, within, last = got
    assert isinstance(across, memoryview) and across.readonly
    assert isinstance(within, bytes)  # within one chunk that could change: a copy
    assert isinstance(last, bytes)
    changing[:] = bytes(len(changing))  # filled again: what the parser kept stays
    assert bytes(across) + within + last == data


def test_each_bulk_read_across_mutable_chunks_gets_a_buffer_of_its_own() -> None:
    data = bytes(range(256)) * 8
    got, parser = asking(Bulk(1024), Bulk(1024))
    feeder = Feeder(parser)
    buffer = bytearray(512)
    for at in range(0, len(data), 512):
        buffer[:] = data[at : at + 512]
        feeder.feed(memoryview(buffer))
    feeder.finish()
    assert all(isinstance(piece, memoryview) and piece.readonly for piece in got)
    assert got[0].obj is not got[1].obj
    assert b"".join(bytes(piece) for piece in got) == data
