"""Unit tests of tracker.ranges: Range parsing, preconditions and the planned response."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tracker.core.untrusted import LAST_SECOND
from tracker.serving.ranges import (
    UNSATISFIABLE,
    ByteRange,
    ResponsePlan,
    etag_matches,
    evaluate_preconditions,
    http_date,
    if_range_allows,
    last_modified_at,
    make_etag,
    normalize_headers,
    parse_http_date,
    parse_range,
    plan_file_response,
    sent_last_modified,
)

SIZE = 1000
MTIME = 784111777.25  # Sun, 06 Nov 1994 08:49:37 GMT, plus a fraction
LAST_MODIFIED = "Sun, 06 Nov 1994 08:49:37 GMT"
ETAG = make_etag(SIZE, 784111777_250000000, 42)
NOW = 1_700_000_000.5  # when the answer is planned: long after MTIME


def plan(headers: dict[str, str] | None = None, method: str = "GET") -> ResponsePlan:
    return plan_file_response(method, headers or {}, SIZE, MTIME, ETAG, now=NOW)


# --- parse_range -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("bytes=0-99", ByteRange(0, 99)),
        ("bytes=0-0", ByteRange(0, 0)),
        ("bytes=999-999", ByteRange(999, 999)),
        ("bytes=100-", ByteRange(100, 999)),
        ("bytes=-100", ByteRange(900, 999)),
        ("bytes=-1000", ByteRange(0, 999)),
        ("bytes=-5000", ByteRange(0, 999)),  # a suffix longer than the file: the whole file
        ("bytes=900-5000", ByteRange(900, 999)),  # end past the file: clamped
        ("bytes=0-" + "9" * 5000, ByteRange(0, 999)),  # beyond int()'s digit limit
        ("bytes=" + "0" * 5000 + "7-8", ByteRange(7, 8)),
        (" bytes = 5 - 9 ", ByteRange(5, 9)),
        ("BYTES=5-9", ByteRange(5, 9)),
        ("bytes=5-9,", ByteRange(5, 9)),  # empty list elements do not count
        ("bytes=, 5-9 ,,", ByteRange(5, 9)),
    ],
)
def test_parse_range_satisfiable(header: str, expected: ByteRange) -> None:
    assert parse_range(header, SIZE) == expected


@pytest.mark.parametrize(
    "header",
    [
        "bytes=1000-",
        "bytes=1000-2000",
        "bytes=5000-",
        "bytes=" + "9" * 5000 + "-",
        "bytes=-0",
        "bytes=-000",
    ],
)
def test_parse_range_unsatisfiable(header: str) -> None:
    assert parse_range(header, SIZE) is UNSATISFIABLE


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "bytes",
        "bytes=",
        "bytes=-",
        "bytes=,",
        "bytes=abc",
        "bytes=1-2-3",
        "bytes=9-5",  # last before first: invalid
        "bytes=" + "9" * 40 + "-" + "1" * 40,  # so too past what is read as a number
        "bytes=" + "2" * 31 + "-" + "1" * 31,
        "bytes=+5-9",
        "bytes=0x10-20",
        "bytes=½-9",
        "bytes=\u0663-9",  # an Arabic-Indic digit is not a DIGIT
        "items=0-9",
        "0-9",
        "bytes 0-9",
        "bytes=0-1,5-6",  # several ranges: whole file
        "bytes=0-1, -5",
        "bytes=0-1,5000-",
    ],
)
def test_parse_range_ignored(header: str | None) -> None:
    assert parse_range(header, SIZE) is None


def test_parse_range_empty_file() -> None:
    assert parse_range("bytes=0-", 0) is UNSATISFIABLE
    assert parse_range("bytes=-0", 0) is UNSATISFIABLE
    assert parse_range("bytes=-5", 0) is None


def test_parse_range_rejects_negative_size() -> None:
    with pytest.raises(ValueError, match="negative"):
        parse_range("bytes=0-1", -1)


def test_byte_range_length() -> None:
    assert ByteRange(10, 19).length == 10


# --- validators ------------------------------------------------------------------------------


def test_make_etag_is_strong_and_changes_with_each_input() -> None:
    etag = make_etag(10, 20, 30)
    assert etag == '"14-a-1e"'
    others = {make_etag(11, 20, 30), make_etag(10, 21, 30), make_etag(10, 20, 31)}
    assert etag not in others
    assert len(others) == 3
    assert make_etag(1, -1, 2).count("-") == 2  # a pre-1970 mtime stays in hex digits


def test_http_date_round_trip() -> None:
    assert http_date(MTIME) == LAST_MODIFIED
    assert parse_http_date(http_date(1_700_000_000)) == 1_700_000_000


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (LAST_MODIFIED, 784111777),
        ("Sunday, 06-Nov-94 08:49:37 GMT", 784111777),  # RFC 850
        ("Sun Nov  6 08:49:37 1994", 784111777),  # asctime
        ("Sun, 06 Nov 1994 09:49:37 +0100", 784111777),
        (None, None),
        ("", None),
        ("yesterday", None),
        ("Sun, 06 Nov 1994 99:49:37 GMT", None),
        ("Sun, 06 Nov 99999 08:49:37 GMT", None),
        (f"{LAST_MODIFIED}, {LAST_MODIFIED}", None),  # a list of dates is ignored
        # Past the years datetime holds once its zone is applied: it was returned, stamped
        # on a cached file, and every later hit of it answered 500.
        ("Fri, 31 Dec 9999 23:59:59 -0001", None),
        ("Fri, 31 Dec 9999 23:59:59 GMT", LAST_SECOND),
    ],
)
def test_parse_http_date(value: str | None, expected: int | None) -> None:
    assert parse_http_date(value) == expected


@pytest.mark.parametrize(
    ("seconds", "formatted"),
    [
        (784111777.5, "Sun, 06 Nov 1994 08:49:37 GMT"),
        # A file's mtime may be anything (a tmpfs keeps it): held to what a date can say.
        (LAST_SECOND + 3600, "Fri, 31 Dec 9999 23:59:59 GMT"),
        (-5.0, "Thu, 01 Jan 1970 00:00:00 GMT"),
    ],
)
def test_http_date_of_any_mtime(seconds: float, formatted: str) -> None:
    assert http_date(seconds) == formatted


@pytest.mark.parametrize(
    ("header", "weak", "expected"),
    [
        ("*", False, True),
        (" * ", True, True),
        (ETAG, False, True),
        (ETAG, True, True),
        (f"W/{ETAG}", True, True),
        (f"W/{ETAG}", False, False),
        (f'"x", {ETAG}', False, True),
        (f'"x",W/{ETAG}', True, True),
        ('"x", "y"', True, False),
        (ETAG.strip('"'), True, False),  # unquoted: not an entity tag
        ("", True, False),
    ],
)
def test_etag_matches(header: str, weak: bool, expected: bool) -> None:
    assert etag_matches(header, ETAG, weak=weak) is expected


def test_etag_matches_against_a_weak_etag() -> None:
    assert etag_matches('"a"', 'W/"a"', weak=True)
    assert not etag_matches('"a"', 'W/"a"', weak=False)


# --- evaluate_preconditions: RFC 9110 13.2.2 order ----------------------------------------------

BEFORE = "Sun, 06 Nov 1994 08:49:36 GMT"
AFTER = "Sun, 06 Nov 1994 08:49:38 GMT"


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({}, None),
        ({"if-match": ETAG}, None),
        ({"if-match": "*"}, None),
        ({"if-match": '"other"'}, 412),
        ({"if-match": f"W/{ETAG}"}, 412),  # If-Match compares strongly
        ({"if-unmodified-since": LAST_MODIFIED}, None),
        ({"if-unmodified-since": AFTER}, None),
        ({"if-unmodified-since": BEFORE}, 412),
        ({"if-unmodified-since": "junk"}, None),
        # If-Match present: If-Unmodified-Since is not looked at.
        ({"if-match": ETAG, "if-unmodified-since": BEFORE}, None),
        ({"if-none-match": ETAG}, 304),
        ({"if-none-match": f"W/{ETAG}"}, 304),  # If-None-Match compares weakly
        ({"if-none-match": "*"}, 304),
        ({"if-none-match": '"other"'}, None),
        ({"if-modified-since": LAST_MODIFIED}, 304),
        ({"if-modified-since": AFTER}, 304),
        ({"if-modified-since": BEFORE}, None),
        ({"if-modified-since": "junk"}, None),
        # If-None-Match present (and not matching): If-Modified-Since is not looked at.
        ({"if-none-match": '"other"', "if-modified-since": AFTER}, None),
        # 412 conditions come before 304 ones.
        ({"if-match": '"other"', "if-none-match": ETAG}, 412),
        ({"if-unmodified-since": BEFORE, "if-modified-since": AFTER}, 412),
    ],
)
def test_evaluate_preconditions(headers: dict[str, str], expected: int | None) -> None:
    assert evaluate_preconditions("GET", headers, ETAG, 784111777) == expected
    assert evaluate_preconditions("HEAD", headers, ETAG, 784111777) == expected


def test_preconditions_for_other_methods() -> None:
    assert evaluate_preconditions("PUT", {"if-none-match": "*"}, ETAG, 0) == 412
    assert evaluate_preconditions("PUT", {"if-modified-since": LAST_MODIFIED}, ETAG, 0) is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, True),
        (ETAG, True),
        (f" {ETAG} ", True),
        ('"stale"', False),
        (f"W/{ETAG}", False),  # a weak tag never matches If-Range
        (LAST_MODIFIED, True),
        (AFTER, False),  # a date must match exactly
        (BEFORE, False),
        ("junk", False),
    ],
)
def test_if_range_allows(value: str | None, expected: bool) -> None:
    assert if_range_allows(value, ETAG, 784111777) is expected


def test_if_range_never_matches_a_weak_etag() -> None:
    assert not if_range_allows('W/"a"', 'W/"a"', 0)
    assert not if_range_allows('"a"', 'W/"a"', 0)


def test_normalize_headers_lowercases_and_joins_repeats() -> None:
    pairs = [("If-None-Match", '"a"'), ("if-none-match", '"b"'), ("Range", "bytes=0-1")]
    assert normalize_headers(pairs) == {"if-none-match": '"a", "b"', "range": "bytes=0-1"}
    assert normalize_headers({"RANGE": "x"}) == {"range": "x"}


# --- plan_file_response ----------------------------------------------------------------------


def validators() -> dict[str, str]:
    return {"accept-ranges": "bytes", "etag": ETAG, "last-modified": LAST_MODIFIED}


def test_plan_full_get() -> None:
    assert plan() == ResponsePlan(
        200,
        0,
        SIZE,
        True,
        {"content-type": "application/octet-stream", "content-length": "1000", **validators()},
    )


def test_plan_range() -> None:
    result = plan({"Range": "bytes=-100"})
    assert (result.status, result.offset, result.length, result.send_body) == (206, 900, 100, True)
    assert result.headers == {
        "content-type": "application/octet-stream",
        "content-length": "100",
        "content-range": "bytes 900-999/1000",
        **validators(),
    }


def test_plan_unsatisfiable() -> None:
    result = plan({"range": "bytes=1000-"})
    assert result == ResponsePlan(
        416,
        0,
        0,
        False,
        {"content-length": "0", "content-range": "bytes */1000", **validators()},
    )


def test_plan_ignored_ranges_send_everything() -> None:
    for header in ("bytes=0-1,5-6", "lines=1-2", "bytes=x"):
        result = plan({"range": header})
        assert (result.status, result.offset, result.length) == (200, 0, SIZE)
        assert "content-range" not in result.headers


def test_plan_not_modified() -> None:
    result = plan({"If-None-Match": ETAG, "Range": "bytes=0-1"})
    assert result == ResponsePlan(304, 0, 0, False, validators())
    assert plan({"if-modified-since": AFTER}).status == 304


def test_plan_precondition_failed() -> None:
    result = plan({"if-match": '"old"', "range": "bytes=0-1"})
    assert result == ResponsePlan(412, 0, 0, False, {"content-length": "0", **validators()})


@pytest.mark.parametrize(
    ("if_range", "status"),
    [(ETAG, 206), (LAST_MODIFIED, 206), ('"stale"', 200), (AFTER, 200), (f"W/{ETAG}", 200)],
)
def test_plan_if_range(if_range: str, status: int) -> None:
    result = plan({"range": "bytes=10-19", "if-range": if_range})
    assert result.status == status
    assert result.length == (10 if status == 206 else SIZE)


def test_plan_stale_if_range_beats_unsatisfiable_range() -> None:
    assert plan({"range": "bytes=5000-", "if-range": '"stale"'}).status == 200


def test_plan_head_has_get_headers_but_no_body() -> None:
    result = plan(method="HEAD")
    assert result.send_body is False
    assert result.headers == plan().headers


def test_plan_head_ignores_range() -> None:
    for header in ("bytes=0-9", "bytes=5000-"):
        result = plan({"range": header}, method="HEAD")
        assert (result.status, result.headers["content-length"]) == (200, "1000")


def test_plan_head_conditionals() -> None:
    assert plan({"if-none-match": ETAG}, method="HEAD").status == 304
    assert plan({"if-match": '"x"'}, method="HEAD").status == 412


def test_plan_empty_file() -> None:
    result = plan_file_response("GET", {"range": "bytes=-10"}, 0, MTIME, ETAG, now=NOW)
    assert (result.status, result.length, result.headers["content-length"]) == (200, 0, "0")
    assert plan_file_response("GET", {"range": "bytes=0-"}, 0, MTIME, ETAG, now=NOW).status == 416


def test_plan_repeated_range_lines_are_ignored() -> None:
    result = plan_file_response(
        "GET", [("Range", "bytes=0-1"), ("Range", "bytes=2-3")], SIZE, MTIME, ETAG, now=NOW
    )
    assert result.status == 200


def test_plan_rejects_other_methods_and_negative_sizes() -> None:
    with pytest.raises(ValueError, match="POST"):
        plan(method="POST")
    with pytest.raises(ValueError, match="negative"):
        plan_file_response("GET", {}, -1, MTIME, ETAG, now=NOW)


@pytest.mark.parametrize(
    ("mtime", "now", "last_modified"),
    [
        (MTIME, NOW, 784111777),  # in the past: its whole seconds
        (NOW - 0.25, NOW, 1_700_000_000),  # the same second as now
        (NOW + 0.25, NOW, 1_700_000_000),  # later in now's second: now's second
        (NOW + 3600, NOW, 1_700_000_000),  # an hour ahead: now ([8.8.2.1])
        (NOW + 1e12, NOW, 1_700_000_000),  # ahead past any date: now
    ],
)
def test_last_modified_is_never_later_than_now(
    mtime: float, now: float, last_modified: int
) -> None:
    assert last_modified_at(mtime, now) == last_modified


#: The Date of an answer planned at NOW, and the future mtime (an hour ahead) of a file.
NOW_DATE = "Tue, 14 Nov 2023 22:13:20 GMT"
FUTURE = NOW + 3600
FUTURE_DATE = "Tue, 14 Nov 2023 23:13:20 GMT"


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({}, 200),
        ({"if-modified-since": NOW_DATE}, 304),  # the Last-Modified it was given: unchanged
        ({"if-unmodified-since": NOW_DATE}, 200),  # not modified since: it proceeds
        ({"range": "bytes=0-9", "if-range": NOW_DATE}, 206),  # the date it was given
        ({"range": "bytes=0-9", "if-range": FUTURE_DATE}, 200),  # a date it never sent
    ],
)
def test_a_file_modified_in_the_future_is_answered_as_modified_now(
    headers: dict[str, str], status: int
) -> None:
    """RFC 9110 8.8.2.1: no Last-Modified later than the Date; the date preconditions
    compare against the Last-Modified sent, not the file's future mtime."""
    result = plan_file_response("GET", headers, SIZE, FUTURE, ETAG, now=NOW)
    assert http_date(NOW) == NOW_DATE and http_date(FUTURE) == FUTURE_DATE
    assert (result.status, result.headers["last-modified"]) == (status, NOW_DATE)


@pytest.mark.parametrize(
    ("value", "sent"),
    [
        (None, None),  # the source sent none: none
        (LAST_MODIFIED, LAST_MODIFIED),  # in the past: as the source wrote it
        ("Sunday, 06-Nov-94 08:49:37 GMT", "Sunday, 06-Nov-94 08:49:37 GMT"),  # RFC 850
        (NOW_DATE, NOW_DATE),  # now's own second: not later than the Date
        (FUTURE_DATE, NOW_DATE),  # an hour ahead: now ([8.8.2.1])
        ("Thu, 01 Jan 2099 00:00:00 GMT", NOW_DATE),
        ("Fri, 31 Dec 9999 23:59:59 GMT", NOW_DATE),  # the calendar's last second
        ("yesterday", None),  # no HTTP-date: none kept
        ("", None),
        ("Sun, 06 Nov 99999 08:49:37 GMT", None),  # a year no date holds
        ("Sun, 06 Nov 1994 99:49:37 GMT", None),  # hour 99
        (f"{LAST_MODIFIED}, {LAST_MODIFIED}", None),  # two dates
    ],
)
def test_a_sources_last_modified_is_kept_never_later_than_now(
    value: str | None, sent: str | None
) -> None:
    assert sent_last_modified(value, NOW) == sent


# --- properties ------------------------------------------------------------------------------


@st.composite
def size_and_range(draw: st.DrawFn) -> tuple[int, str, slice]:
    """A file size, a valid single range header for it, and the reference slice it means."""
    size = draw(st.integers(min_value=1, max_value=2**63))
    kind = draw(st.sampled_from(["closed", "open", "suffix"]))
    if kind == "suffix":
        n = draw(st.integers(min_value=1, max_value=2 * size))
        return size, f"bytes=-{n}", slice(max(0, size - n), size)
    first = draw(st.integers(min_value=0, max_value=size - 1))
    if kind == "open":
        return size, f"bytes={first}-", slice(first, size)
    last = draw(st.integers(min_value=first, max_value=2 * size))
    return size, f"bytes={first}-{last}", slice(first, last + 1)


@given(size_and_range())
def test_planned_range_matches_reference_slice(case: tuple[int, str, slice]) -> None:
    size, header, reference = case
    result = plan_file_response("GET", {"range": header}, size, MTIME, ETAG, now=NOW)
    expected = range(size)[reference]  # a lazy stand-in for the file's bytes
    assert result.status == 206
    assert 0 <= result.offset < result.offset + result.length <= size
    assert range(result.offset, result.offset + result.length) == expected
    last = result.offset + result.length - 1
    assert result.headers["content-range"] == f"bytes {result.offset}-{last}/{size}"
    assert result.headers["content-length"] == str(result.length)


@given(st.integers(min_value=0, max_value=10**6), st.text(max_size=40))
def test_any_range_header_gives_a_consistent_plan(size: int, header: str) -> None:
    result = plan_file_response("GET", {"range": header}, size, MTIME, ETAG, now=NOW)
    assert result.status in (200, 206, 416)
    assert result.offset >= 0
    assert result.offset + result.length <= size
    assert result.headers["accept-ranges"] == "bytes"
    if result.status == 416:
        assert result.headers["content-range"] == f"bytes */{size}"
    else:
        assert result.headers["content-length"] == str(result.length)
