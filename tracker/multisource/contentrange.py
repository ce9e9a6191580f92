"""The ``Content-Range`` of an answer, parsed once for everything that reads one.

A ``206`` says which bytes it carries in ``Content-Range: bytes FIRST-LAST/SIZE`` (RFC 9110
§14.4; ``SIZE`` may be ``*``, unknown). The header came from the network, so
:func:`parse_content_range` takes ASCII digits only (``"²".isdigit()`` is true), at most
:data:`MAX_DIGITS` of them, and refuses what the RFC calls invalid (``LAST`` before ``FIRST``,
a ``SIZE`` not past ``LAST``): such a header proves nothing, whoever reads it. The unit is
matched without regard to case, and the blanks after it may be several (servers differ).
"""

from __future__ import annotations

import re

import attrs

#: The longest decimal number taken from the header (10**18 bytes is an exabyte).
MAX_DIGITS = 18

_NUMBER = f"[0-9]{{1,{MAX_DIGITS}}}"
_CONTENT_RANGE = re.compile(
    f"bytes[ \t]+({_NUMBER})-({_NUMBER})/({_NUMBER}|\\*)", re.IGNORECASE | re.ASCII
)


@attrs.frozen
class ContentRange:
    """Bytes ``first`` to ``last`` (both included) of a file of ``size`` bytes (None: the
    answer did not say)."""

    first: int
    last: int
    size: int | None

    @property
    def length(self) -> int:
        """How many bytes the answer carries."""
        return self.last - self.first + 1

    def text(self) -> str:
        """The header value, as a reason quotes what was expected."""
        return f"bytes {self.first}-{self.last}/{'*' if self.size is None else self.size}"


def parse_content_range(value: str | None) -> ContentRange | None:
    """The range a ``Content-Range`` value states; None for anything else (absent, another
    unit, ``bytes */SIZE``, signs, Unicode digits, numbers of more than MAX_DIGITS digits,
    ``LAST < FIRST``, ``SIZE <= LAST``)."""
    match = _CONTENT_RANGE.fullmatch((value or "").strip())
    if match is None:
        return None
    first, last = int(match[1]), int(match[2])
    size = None if match[3] == "*" else int(match[3])
    if last < first or (size is not None and size <= last):
        return None
    return ContentRange(first, last, size)


def states_range(value: str | None, first: int, last: int, size: int) -> bool:
    """True when ``value`` says exactly bytes ``first``..``last`` of a ``size``-byte file."""
    return parse_content_range(value) == ContentRange(first, last, size)
