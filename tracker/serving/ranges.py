"""Range and conditional requests for archive files: pure decisions, no I/O.

:func:`plan_file_response` turns a request (method and headers) and the facts of a file (size,
modification time, ETag) into a :class:`ResponsePlan`: the status, the byte range to send and
the exact response headers. :mod:`tracker.serving.fileresponse` carries the plan out on disk.

Decisions worth knowing (RFC 9110 section numbers in brackets):

- Preconditions are evaluated in the order of [13.2.2]: If-Match, else If-Unmodified-Since
  (412); If-None-Match, else If-Modified-Since (304); then If-Range decides whether Range
  applies. If-None-Match uses the weak comparison, If-Match and If-Range the strong one;
  ``*`` matches (the file exists). A date that is not a valid HTTP-date is ignored.
- Only GET and HEAD are planned. Range is honoured for GET only: [14.2] defines range handling
  for GET alone and tells a server to ignore Range on other methods, so a HEAD gets the 200
  headers of the whole file (the ``content-length`` a plain GET would have).
- A single range is served as 206. A start at or past the end, or a suffix of 0 bytes, is 416
  with ``content-range: bytes */size``. A malformed header or another unit is ignored (200).
- A request for several ranges gets the whole file as 200, which [14.2] allows ("a server MAY
  ignore the Range header field"). We do not generate ``multipart/byteranges``: snapshot
  downloaders (wget, aria2c, agave, Firedancer) ask for one range at most, the multipart
  framing would need its own length arithmetic, and answering only the first range would
  hand a client that asked for several parts a single-part 206 it may not expect.
- 304 carries no ``content-length`` (as nginx does; [8.6] forbids any value but the length a
  200 would have, and the field is not among those [15.4.5] asks for). 412 and 416 carry
  ``content-length: 0`` and no body. Every plan carries ``accept-ranges: bytes``.
- Last-Modified is the file's mtime in whole seconds, but never later than now: [8.8.2.1]
  forbids a Last-Modified later than the response's Date and says to send the Date instead
  (a local file touched in the future, or a cached copy stamped with the Last-Modified of a
  source whose clock runs ahead). The preconditions compare dates with that same value.
- A source's Last-Modified kept by the tracker (a cached copy's mtime, the bucket's metadata)
  is held the same way, once, when it is kept (:func:`sent_last_modified`); one that is no
  HTTP-date is dropped. A relayed answer passes the source's on as it is, as a reverse proxy
  does: the client's date preconditions go back to the source, which compares its own.
- Header names are lower case: some snapshot clients match names case-sensitively.
"""

from __future__ import annotations

import email.utils
import enum
import math
import re
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta

import attrs

from tracker.core.untrusted import utc_time

#: Request headers as a mapping or as (name, value) pairs (repeated names allowed), any case.
RequestHeaders = Mapping[str, str] | Iterable[tuple[str, str]]

#: Methods :func:`plan_file_response` knows how to answer.
METHODS = frozenset({"GET", "HEAD"})

# A decimal position longer than this is larger than any file; capping keeps int() cheap and
# clear of Python's 4300-digit conversion limit.
_MAX_DIGITS = 30
_RANGE_SPEC_RE = re.compile(r"([0-9]*)[ \t]*-[ \t]*([0-9]*)")
_ENTITY_TAG_RE = re.compile(r'(W/)?("[^"]*")')


@attrs.frozen
class ByteRange:
    """A satisfiable byte range of a file: ``start`` to ``end``, both inclusive."""

    start: int
    end: int

    @property
    def length(self) -> int:
        """Number of bytes in the range."""
        return self.end - self.start + 1


class Unsatisfiable(enum.Enum):
    """Marker type of :data:`UNSATISFIABLE` (an enum so that type checkers can narrow it)."""

    UNSATISFIABLE = "unsatisfiable"


#: :func:`parse_range` result for a well-formed range that selects no byte of the file (416).
UNSATISFIABLE = Unsatisfiable.UNSATISFIABLE


@attrs.frozen
class ResponsePlan:
    """What to answer for a file: status, bytes to send and the exact response headers.

    ``offset`` and ``length`` give the bytes a GET sends (the whole file for 200, the range
    for 206, 0 otherwise); ``send_body`` is false for HEAD and for 304/412/416, in which case
    nothing is read. ``headers`` maps lower-case names to values, in the order to send them.
    """

    status: int
    offset: int
    length: int
    send_body: bool
    headers: Mapping[str, str]


def parse_range(header: str | None, size: int) -> ByteRange | Unsatisfiable | None:
    """Parse a ``Range`` header against a file of ``size`` bytes.

    Returns the :class:`ByteRange` to send (an end past the file is clamped, a suffix longer
    than the file means the whole file), :data:`UNSATISFIABLE` for a single range that selects
    nothing (start at or past the end, or a suffix of 0), or None when the header is to be
    ignored and the whole file sent: absent, malformed, another unit than ``bytes``, several
    ranges, or a suffix range of an empty file (nothing can be served, yet [14.1.1] calls it
    satisfiable). Whitespace around the parts is tolerated; the unit is case-insensitive.
    """
    if size < 0:
        raise ValueError(f"negative file size: {size}")
    spec = range_spec(header)
    if spec is None:
        return None
    first, last = spec
    if first is not None:
        return _int_range(first, last, size)
    assert last is not None
    return _suffix_range(last, size)


def range_spec(header: str | None) -> tuple[int | None, int | None] | None:
    """The one byte range a ``Range`` header asks for, whatever the file: (first, last),
    (first, None) for an open end, (None, N) for a suffix of N bytes; None when the header
    is to be ignored (absent, malformed, another unit than ``bytes``, several ranges, a last
    byte before the first). The one reading of the header for every byte path: a file's
    answer (:func:`parse_range`) and what a relay asks of its source."""
    if header is None:
        return None
    unit, sep, range_set = header.partition("=")
    if not sep or unit.strip().lower() != "bytes":
        return None
    # Empty list elements are allowed and skipped [5.6.1]: "bytes=0-99," is one range.
    specs = [spec.strip() for spec in range_set.split(",") if spec.strip()]
    if len(specs) != 1:
        return None
    match = _RANGE_SPEC_RE.fullmatch(specs[0])
    if match is None:
        return None
    first, last = match.groups()
    if first:
        if last and _digits_key(last) < _digits_key(first):
            # an invalid range-spec makes the whole header invalid [14.1.1]; compared as
            # written: past _MAX_DIGITS both would read as the same number
            return None
        return _to_int(first), _to_int(last) if last else None
    if last:
        return None, _to_int(last)
    return None


def range_header(spec: tuple[int | None, int | None]) -> str:
    """The ``Range`` value of :func:`range_spec`'s ``spec``, written plainly."""
    first, last = spec
    return f"bytes={'' if first is None else first}-{'' if last is None else last}"


def _digits_key(digits: str) -> tuple[int, str]:
    """A key ordering decimal numbers as their values, however long: (length, digits)."""
    stripped = digits.lstrip("0")
    return len(stripped), stripped


def _to_int(digits: str) -> int:
    digits = digits.lstrip("0") or "0"
    return 10**_MAX_DIGITS if len(digits) > _MAX_DIGITS else int(digits)


def _int_range(first: int, last: int | None, size: int) -> ByteRange | Unsatisfiable | None:
    if first >= size:
        return UNSATISFIABLE
    end = size - 1 if last is None else min(last, size - 1)
    return ByteRange(first, end)


def _suffix_range(suffix: int, size: int) -> ByteRange | Unsatisfiable | None:
    if suffix == 0:
        return UNSATISFIABLE
    if size == 0:
        return None
    return ByteRange(max(0, size - suffix), size - 1)


def make_etag(size: int, mtime_ns: int, inode: int) -> str:
    """A strong ETag ``"<mtime_ns>-<size>-<inode>"`` (lower-case hex) for a file on disk.

    The cache never rewrites a file in place (temp file + rename gives a new inode), so the
    triple changes whenever the bytes do, which a strong validator requires.
    """
    parts = (mtime_ns % 2**64, size, inode)
    return '"' + "-".join(f"{part:x}" for part in parts) + '"'


def http_date(ts: float) -> str:
    """Format a POSIX timestamp as an IMF-fixdate (``Sun, 06 Nov 1994 08:49:37 GMT``), held
    to the years 1970 to 9999 (a file's mtime may be anything: :func:`utc_time`)."""
    return email.utils.format_datetime(utc_time(math.floor(ts)), usegmt=True)


def parse_http_date(value: str | None) -> int | None:
    """Parse an HTTP-date (IMF-fixdate, RFC 850 or asctime) to whole POSIX seconds.

    Returns None for an absent or invalid value; a date without a zone is taken as UTC.
    """
    if value is None or "," in value.partition(",")[2]:
        return None  # absent, or a list of dates, which [13.1.3] says to ignore
    try:
        parsed = email.utils.parsedate_tz(value.strip())
        if parsed is None:
            return None
        # Not email.utils.mktime_tz: it reads a date without a zone as local time. datetime
        # also rejects out-of-range fields (hour 99, year 99999) that timegm would accept.
        year, month, day, hour, minute, second = parsed[:6]
        date = datetime(year, month, day, hour, minute, second, tzinfo=UTC)
        # its zone applied inside the years datetime holds: "31 Dec 9999 23:59:59 -0001"
        # would be a time no datetime can hold, stamped on a cached file, every later hit
        # of it and the cache's listing failing on it
        date -= timedelta(seconds=parsed[9] or 0)
    except (ValueError, IndexError, TypeError, OverflowError):
        return None
    return int(date.timestamp())


def _entity_tags(value: str) -> list[tuple[bool, str]]:
    """The entity tags of a list header as ``(weak, "opaque")`` pairs; junk is skipped."""
    return [(bool(weak), tag) for weak, tag in _ENTITY_TAG_RE.findall(value)]


def etag_matches(header: str, etag: str, *, weak: bool) -> bool:
    """True when the If-Match / If-None-Match value ``header`` matches ``etag``.

    ``*`` matches any existing file. ``weak=True`` is the weak comparison of [8.8.3.2] (for
    If-None-Match); otherwise both tags must be strong and equal (If-Match).
    """
    if header.strip() == "*":
        return True
    etag_weak = etag.startswith("W/")
    opaque = etag.removeprefix("W/")
    return any(
        tag == opaque and (weak or not (tag_weak or etag_weak))
        for tag_weak, tag in _entity_tags(header)
    )


def evaluate_preconditions(
    method: str, headers: Mapping[str, str], etag: str, last_modified: int
) -> int | None:
    """Evaluate If-Match, If-Unmodified-Since, If-None-Match and If-Modified-Since in order.

    ``headers`` has lower-case names; ``last_modified`` is in whole POSIX seconds. Returns 412,
    304 (GET/HEAD; 412 for any other method) or None when the request proceeds.
    """
    if_match = headers.get("if-match")
    if if_match is not None:
        if not etag_matches(if_match, etag, weak=False):
            return 412
    else:
        since = parse_http_date(headers.get("if-unmodified-since"))
        if since is not None and last_modified > since:
            return 412
    if_none_match = headers.get("if-none-match")
    if if_none_match is not None:
        if etag_matches(if_none_match, etag, weak=True):
            return 304 if method in METHODS else 412
    elif method in METHODS:
        since = parse_http_date(headers.get("if-modified-since"))
        if since is not None and last_modified <= since:
            return 304
    return None


def if_range_allows(value: str | None, etag: str, last_modified: int) -> bool:
    """True when ``If-Range`` lets the Range apply [13.1.5]: absent, or it still matches.

    An entity tag must match strongly (a weak tag never does); a date must equal the file's
    Last-Modified exactly. Anything else (including junk) means "send the whole file".
    """
    if value is None:
        return True
    value = value.strip()
    if value.startswith('"'):
        return not etag.startswith("W/") and value == etag
    if value.startswith("W/"):
        return False
    date = parse_http_date(value)
    return date is not None and date == last_modified


def normalize_headers(headers: RequestHeaders) -> dict[str, str]:
    """Lower-case the names; repeated fields are joined with ``", "`` as [5.3] allows.

    A joined singleton (two Range or If-Range lines) then fails to parse and is ignored,
    which is the safe answer. A werkzeug/Quart ``Headers`` yields every repeated line.
    """
    pairs = headers.items() if isinstance(headers, Mapping) else headers
    result: dict[str, str] = {}
    for name, value in pairs:
        key = name.lower()
        result[key] = f"{result[key]}, {value}" if key in result else value
    return result


def last_modified_at(mtime: float, now: float) -> int:
    """The Last-Modified of a file modified at ``mtime``, answered at ``now`` (POSIX seconds):
    its whole seconds, held to now's, as [8.8.2.1] asks of a date later than the Date."""
    return min(math.floor(mtime), math.floor(now))


def sent_last_modified(value: str | None, now: float) -> str | None:
    """The Last-Modified to keep of a source's ``value`` (a cached copy's mtime, an object's
    metadata), kept at ``now`` (POSIX seconds): None when it is absent or no HTTP-date
    (:func:`parse_http_date`: a client would compare its dates with junk); ``value`` itself,
    as written, when it is no later than now; else now's date, as :func:`last_modified_at`
    holds a file's ([8.8.2.1]: never later than the Date)."""
    seconds = parse_http_date(value)
    if value is None or seconds is None:
        return None
    held = last_modified_at(seconds, now)
    return value if held == seconds else http_date(held)


def plan_file_response(
    method: str,
    headers: RequestHeaders,
    size: int,
    mtime: float,
    etag: str,
    *,
    now: float,
) -> ResponsePlan:
    """Plan the answer to a GET or HEAD of a file of ``size`` bytes modified at ``mtime``.

    ``headers`` are the request headers (any case; a Quart ``Headers`` works); ``mtime`` and
    ``now`` (the wall clock, which the response's Date is taken from) are POSIX timestamps,
    ``etag`` the file's strong ETag (see :func:`make_etag`). Raises ValueError for another
    method or a negative size.
    """
    if method not in METHODS:
        raise ValueError(f"cannot plan a file response to {method!r}")
    if size < 0:
        raise ValueError(f"negative file size: {size}")
    request = normalize_headers(headers)
    # One value for the header and every date precondition (:func:`last_modified_at`).
    last_modified = last_modified_at(mtime, now)
    validators = {
        "accept-ranges": "bytes",
        "etag": etag,
        "last-modified": http_date(last_modified),
    }
    status = evaluate_preconditions(method, request, etag, last_modified)
    if status == 304:
        return ResponsePlan(304, 0, 0, False, validators)
    if status == 412:
        return ResponsePlan(412, 0, 0, False, {"content-length": "0", **validators})
    byte_range = None
    if method == "GET" and if_range_allows(request.get("if-range"), etag, last_modified):
        byte_range = parse_range(request.get("range"), size)
    return _plan_body(method, byte_range, size, validators)


def _plan_body(
    method: str,
    byte_range: ByteRange | Unsatisfiable | None,
    size: int,
    validators: dict[str, str],
) -> ResponsePlan:
    if byte_range is UNSATISFIABLE:
        headers = {"content-length": "0", "content-range": f"bytes */{size}", **validators}
        return ResponsePlan(416, 0, 0, False, headers)
    send_body = method == "GET"
    content_type = {"content-type": "application/octet-stream"}
    if byte_range is None:
        headers = {**content_type, "content-length": str(size), **validators}
        return ResponsePlan(200, 0, size, send_body, headers)
    content_range = f"bytes {byte_range.start}-{byte_range.end}/{size}"
    headers = {
        **content_type,
        "content-length": str(byte_range.length),
        "content-range": content_range,
        **validators,
    }
    return ResponsePlan(206, byte_range.start, byte_range.length, send_body, headers)
