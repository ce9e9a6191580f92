"""Strict parsers for text that came from the network (or anyone else not trusted).

Two traps of the standard library make a malformed answer crash whoever parses it:
``str.isdigit()`` is true for ``"²"``, ``"٣"`` and other Unicode digits that ``int()``
refuses (ValueError), and ``json.loads`` raises RecursionError (not a ValueError) on an
answer nested a few thousand levels deep, and ValueError for an integer of more than 4,300
digits. Every parse of network input goes through these helpers, which accept ASCII digits
only and turn every JSON failure into the caller's own error type with a one-line reason:
a bad answer costs that answer, never the process.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

from tracker.core.text import one_line
from tracker.errors import TrackerError

#: The exceptions ``json`` raises for a malformed document: JSONDecodeError and the other
#: ValueErrors (NaN refused below, integers too long to convert), and RecursionError for
#: nesting deeper than the interpreter's recursion limit.
JSON_ERRORS = (ValueError, RecursionError)

#: The last second ``datetime`` can hold (9999-12-31T23:59:59Z), as POSIX seconds.
LAST_SECOND = 253_402_300_799

#: The most digits :func:`ascii_digits` reads by default: every u64 fits in 20.
U64_DIGITS = 20

_ASCII_DIGITS = frozenset("0123456789")


def ascii_digits(text: str, *, max_digits: int = U64_DIGITS) -> int | None:
    """The value of ``text`` when it is 1 to ``max_digits`` ASCII digits, else None.

    No sign, no spaces, no underscores, no Unicode digits (``"²"``): what ``int()`` would
    accept beyond plain digits is refused, and ``int()`` never raises here.
    """
    if not 0 < len(text) <= max_digits or not _ASCII_DIGITS.issuperset(text):
        return None
    return int(text)


def port_number(text: str) -> int | None:
    """A TCP port written as ASCII digits, 1 to 65535; None for anything else."""
    value = ascii_digits(text, max_digits=5)
    return value if value is not None and 0 < value < 65536 else None


def json_reason(exc: ValueError | RecursionError) -> str:
    """A one-line reason for a JSON failure (one of :data:`JSON_ERRORS`)."""
    if isinstance(exc, RecursionError):
        return "JSON nested too deeply"
    return one_line(f"invalid JSON: {exc}")


def load_json(
    data: bytes | bytearray | str, error: type[TrackerError], *, max_bytes: int | None = None
) -> object:
    """``json.loads(data)`` for a document that came from the network.

    Raises ``error`` (the caller's module error, e.g. ProbeError or RpcError) with a one-line
    reason for invalid JSON, NaN or Infinity, nesting too deep for the parser, an integer too
    long to convert, text that is not UTF-8, or (with ``max_bytes``) a document longer than
    that. The document is parsed whole: give it only bodies read with a size cap that small
    (a few MiB at most); long lists are decoded element by element instead
    (:func:`tracker.net.limits.iter_json_array`).
    """
    if max_bytes is not None and len(data) > max_bytes:
        raise error(f"JSON document of {len(data)} bytes exceeds the limit of {max_bytes}")
    try:
        return json.loads(data, parse_constant=reject_constant)
    except UnicodeDecodeError as exc:
        raise error(f"answer is not UTF-8 (byte {exc.start})") from exc
    except JSON_ERRORS as exc:
        raise error(json_reason(exc)) from exc


def reject_constant(name: str) -> object:
    """``parse_constant`` of a JSON decoder: NaN, Infinity and -Infinity are not JSON."""
    raise ValueError(f"{name} is not valid JSON")


def utc_time(seconds: float) -> datetime:
    """POSIX ``seconds`` (a file's mtime: any process, or a source's date stamped on it, may
    have set it) as an aware UTC datetime, held to the years ``datetime`` can hold, 1970 to
    9999: ``datetime.fromtimestamp`` raises past them (a tmpfs keeps any mtime)."""
    if seconds != seconds:  # NaN
        seconds = 0.0
    return datetime.fromtimestamp(min(max(0.0, seconds), LAST_SECOND), UTC)
