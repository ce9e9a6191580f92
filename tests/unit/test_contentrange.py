"""One parser of ``Content-Range`` for every reader: fetch's range checks, the proxy's resume
and size checks, the head of a proxied 206. Pure, no network."""

from __future__ import annotations

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tracker.errors import SourceFailed
from tracker.fetch.sourcechecks import Source, check_range, first_byte_total
from tracker.fetch.state import Identity
from tracker.multisource.contentrange import ContentRange, parse_content_range, states_range
from tracker.proxy.failover import resume_problem
from tracker.proxy.transfers import _range_length
from tracker.proxy.upstream import size_problem


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("bytes 0-0/1", ContentRange(0, 0, 1)),
        ("bytes 100-999/1000", ContentRange(100, 999, 1000)),
        ("  bytes 100-999/1000 ", ContentRange(100, 999, 1000)),
        ("bytes  100-999/1000", ContentRange(100, 999, 1000)),
        ("BYTES 1-2/3", ContentRange(1, 2, 3)),
        ("bytes\t1-2/3", ContentRange(1, 2, 3)),
        ("bytes 0-9/*", ContentRange(0, 9, None)),
        ("bytes 007-9/10", ContentRange(7, 9, 10)),
        (None, None),
        ("", None),
        ("bytes */1000", None),  # unsatisfied: no range stated
        ("bytes 5-4/10", None),  # last before first
        ("bytes 0-9/9", None),  # size not past last
        ("bytes 0-0/0", None),
        ("items 0-9/10", None),
        ("bytes0-9/10", None),
        ("bytes 0-9", None),
        ("bytes -1-9/10", None),
        ("bytes +1-9/10", None),
        ("bytes 0-9/1_0", None),
        ("bytes 0-²/10", None),
        ("bytes 0-\u0669/10", None),
        ("bytes 0-9/10, bytes 0-9/10", None),  # a repeated header, joined
        (f"bytes 0-9/{'9' * 19}", None),  # more than MAX_DIGITS digits
        (f"bytes 0-9/{'9' * 18}", ContentRange(0, 9, 10**18 - 1)),
    ],
)
def test_parse_content_range(text: str | None, parsed: ContentRange | None) -> None:
    assert parse_content_range(text) == parsed


@given(st.integers(0, 10**12), st.integers(0, 10**12), st.integers(1, 10**12))
def test_a_stated_range_reads_back(first: int, extra: int, more: int) -> None:
    last, size = first + extra, first + extra + more
    stated = ContentRange(first, last, size)
    assert parse_content_range(stated.text()) == stated
    assert stated.length == last - first + 1
    assert parse_content_range(f"bytes {first}-{last}/*") == ContentRange(first, last, None)


@given(st.text(max_size=60))
def test_any_text_parses_to_nothing_or_a_valid_range(text: str) -> None:
    stated = parse_content_range(text)
    if stated is not None:
        assert 0 <= stated.first <= stated.last
        assert stated.size is None or stated.size > stated.last


#: Header texts close to ``bytes 100-999/1000``: what hostile or sloppy servers send.
NEAR = st.builds(
    lambda unit, gap, first, last, size: f"{unit}{gap}{first}-{last}/{size}",
    st.sampled_from(["bytes", "Bytes", "BYTES", "byte", "items"]),
    st.sampled_from([" ", "  ", "\t", ""]),
    st.sampled_from(["100", "0100", "99", "²", "-100"]),
    st.sampled_from(["999", "998", "1000", "\u0669"]),
    st.sampled_from(["1000", "01000", "*", "2000", "999"]),
)


def _answer(text: str) -> httpx.Response:
    """A 206 with ``text`` as its content-range, sent as UTF-8 (as a hostile server may)."""
    response = httpx.Response(206, headers=[(b"content-range", text.encode())])
    assert response.headers["content-range"] == text
    return response


def _fetch_accepts(text: str) -> bool:
    response = _answer(text)
    source = Source("http://s/f", Identity(1000), ranges=True)
    try:
        check_range(response, source, 100, 1000)
    except SourceFailed:
        return False
    return True


@given(NEAR)
def test_every_reader_agrees_on_a_content_range(text: str) -> None:
    """fetch's piece check, the proxy's resume check and the head of a proxied 206 accept
    exactly the same headers for bytes 100..999 of a 1000-byte file."""
    exact = states_range(text, 100, 999, 1000)
    response = _answer(text)
    assert _fetch_accepts(text) == exact
    assert (resume_problem(response, 100, 1000) is None) == exact
    if exact:
        assert size_problem(response, 1000) is None
        assert _range_length(text) == 900
    stated = parse_content_range(text)
    assert (size_problem(response, 1000) is None) == (stated is not None and stated.size == 1000)
    assert _range_length(text) == (None if stated is None else stated.length)


@pytest.mark.parametrize(
    ("text", "total"),
    [("bytes 0-0/10", 10), ("bytes 0-0/*", None), ("bytes 0-1/10", None), ("x", None)],
)
def test_the_first_byte_gives_the_size(text: str, total: int | None) -> None:
    assert first_byte_total(text) == total


def test_a_206_beyond_its_size_is_no_proof_of_the_size() -> None:
    # Before one parser, the proxy read the total after the last "/" and took this one.
    response = httpx.Response(206, headers={"content-range": "bytes 0-199/100"})
    assert size_problem(response, 100) is not None
