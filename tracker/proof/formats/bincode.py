"""Bincode (fixed-int, little endian) read as a stream parser of
:mod:`tracker.proof.formats.parsing`.

:class:`Reader` holds the position in one bounded input (a tar member of known size) and
reads what agave's serde derives write with bincode's fixed-int encoding: integers little
endian, a bool or an Option tag as one byte, a sequence or a map as a u64 count then its
elements (docs/architecture.md, "Proven archives"). Every count is bounded before anything
is allocated or skipped: by the bytes left in the input for the elements it announces, and
by a sane bound of its own where elements are kept. Fixed-size elements are skipped by
length (negative requests), never built.
"""

from __future__ import annotations

import struct

from tracker.errors import ArchiveInvalid, EndOfInput
from tracker.proof.formats.parsing import ParserOf

_U64 = struct.Struct("<Q")


class Reader:
    """Reads bincode values from an input of ``size`` bytes; ``what`` names the input in
    reasons (``manifest``), ``field`` the value being read (set by the decoder)."""

    def __init__(self, size: int, what: str) -> None:
        self.size = size
        self.what = what
        self.at = 0
        self.field = "the start"

    def fail(self, text: str) -> ArchiveInvalid:
        """The one-line rejection of this input."""
        return ArchiveInvalid(f"{self.what}: {text}")

    def ended(self, end: EndOfInput | None = None) -> ArchiveInvalid:
        """The rejection of an input that ends inside :attr:`field`."""
        at = self.size if end is None else end.at
        return self.fail(f"the data ends inside {self.field} at byte {at}")

    def take(self, count: int) -> ParserOf[bytes]:
        """The next ``count`` bytes (``count`` > 0)."""
        if count > self.size - self.at:
            raise self.ended()
        data: bytes = yield count
        self.at += count
        return data

    def skip(self, count: int) -> ParserOf[None]:
        """Skip ``count`` bytes without reading them."""
        if count > self.size - self.at:
            raise self.ended()
        if count:
            yield -count
            self.at += count

    def u64(self) -> ParserOf[int]:
        """One u64."""
        data = yield from self.take(8)
        value: int = _U64.unpack(data)[0]
        return value

    def flag(self) -> ParserOf[bool]:
        """A bool or an Option tag: 0 or 1, anything else refused (as bincode does)."""
        data = yield from self.take(1)
        if data[0] > 1:
            raise self.fail(f"{self.field}: a tag of {data[0]} at byte {self.at - 1}")
        return data[0] == 1

    def count(self, element: int, bound: int | None = None) -> ParserOf[int]:
        """A sequence's count of elements of at least ``element`` bytes each: refused when
        they cannot fit in the bytes left, or exceed ``bound``."""
        n = yield from self.u64()
        left = self.size - self.at
        if n * element > left:
            raise self.fail(
                f"{self.field}: {n} elements of {element} bytes at byte {self.at - 8}, "
                f"{left} bytes left"
            )
        if bound is not None and n > bound:
            raise self.fail(f"{self.field}: {n} elements at byte {self.at - 8}, at most {bound}")
        return n

    def skip_seq(self, element: int) -> ParserOf[int]:
        """Skip a sequence of fixed-size elements; returns its count."""
        n = yield from self.count(element)
        yield from self.skip(n * element)
        return n

    def skip_bytes(self) -> ParserOf[int]:
        """Skip a ``Vec<u8>``; returns its length."""
        return (yield from self.skip_seq(1))
