"""Tests of tracker.config: the parsers of durations, addresses and targets."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from helpers_config import load
from hypothesis import given
from hypothesis import strategies as st

from tracker.config.schema import (
    check_target,
    format_address,
    parse_address,
    parse_duration,
)
from tracker.config.values import check_http_url, size_in

# --- parsers --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("15s", 15.0),
        ("500ms", 0.5),
        ("1m30s", 90.0),
        ("1h", 3600.0),
        ("1.5s", 1.5),
        ("2h45m", 9900.0),
        ("7d", 604800.0),
        ("1d12h", 129600.0),
        ("300us", 0.0003),
        ("300µs", 0.0003),
        ("300μs", 0.0003),
        ("1500000ns", 0.0015),
        (".5s", 0.5),
        ("5.s", 5.0),
        ("1h1m1s1ms", 3661.001),
        ("+3s", 3.0),
        ("0", 0.0),
        ("-0s", 0.0),
        (15, 15.0),
        (2.5, 2.5),
        (0, 0.0),
    ],
)
def test_parse_duration(value: object, seconds: float) -> None:
    assert parse_duration(value) == pytest.approx(seconds, rel=1e-12, abs=0)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("-1s", "must not be negative"),
        (-1, "must not be negative"),
        (-0.5, "must not be negative"),
        ("15", "missing unit in duration '15'"),
        ("1.5", "missing unit"),
        ("", "expected a duration"),
        ("s", "expected a duration"),
        ("1x", "expected a duration"),
        ("1s ", "expected a duration"),
        ("1 s", "expected a duration"),
        ("1m-5s", "expected a duration"),
        ("1w", "expected a duration"),
        (".s", "expected a duration"),
        ("+", "expected a duration"),
        (True, "got a boolean"),
        (None, "got null"),
        ([1], "got a list"),
        (float("nan"), "expected a duration"),
        (float("inf"), "expected a duration"),
        # float() of it overflowed: an OverflowError past every caller's ValueError
        ("1" + "0" * 400 + "h", "longer than Go's longest"),
        ("100000000000000000000h", "longer than Go's longest"),
        (1e300, "longer than Go's longest"),
        (10**400, "longer than Go's longest"),  # a YAML integer of 400 digits
        (-(10**400), "must not be negative"),
    ],
)
def test_parse_duration_rejects(value: object, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_duration(value)


@given(st.integers(0, 100), st.integers(0, 59), st.integers(0, 59), st.integers(0, 999))
def test_parse_duration_adds_up_components(h: int, m: int, s: int, ms: int) -> None:
    expected = h * 3600 + m * 60 + s + ms / 1000
    assert parse_duration(f"{h}h{m}m{s}s{ms}ms") == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (":8458", ("", 8458)),
        ("127.0.0.1:8457", ("127.0.0.1", 8457)),
        ("localhost:0", ("localhost", 0)),
        ("tracker.example.org:65535", ("tracker.example.org", 65535)),
        ("[::1]:8458", ("::1", 8458)),
        ("[::]:80", ("::", 80)),
        ("[fe80::1%eth0]:80", ("fe80::1%eth0", 80)),
    ],
)
def test_parse_address(text: str, expected: tuple[str, int]) -> None:
    assert parse_address(text) == expected
    assert format_address(*expected) == text


@pytest.mark.parametrize(
    "text",
    [
        "",
        "8458",
        "localhost",
        "localhost:",
        "localhost:http",
        "localhost:65536",
        "localhost:-1",
        "::1:8458",
        "[::1]",
        "[::1]8458",
        "[not-v6]:80",
        "[::1:80",
        "http://localhost:80",
        "bad host:80",
        "-host:80",
    ],
)
def test_parse_address_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="not a valid address") as info:
        parse_address(text)
    assert repr(text) in str(info.value)


def test_an_unbracketed_listen_address_is_told_bracketed() -> None:
    with pytest.raises(ValueError, match=re.escape("needs brackets: [::1]:8458")):
        parse_address("::1:8458")


@pytest.mark.parametrize(
    "text",
    [
        "10.0.0.1:13080",
        "node-1.example.org:1",
        "node",
        "[2001:db8::1]:13080",
        "[::1]",
        "[fe80::1%eth0]:8899",
    ],
)
def test_check_target_accepts(text: str) -> None:
    assert check_target(text) == text


@pytest.mark.parametrize(
    "text",
    [
        *("", ":13080", "h:0", "h:65536", "h:x", "http://h:1", "h:1/path", "::1", "a b:1"),
        # a zone id is an interface's name: these made URLs no parser splits again
        *("[fe80::1%eth0#x?y]:8899", "[fe80::1%a b]:1", "[fe80::1%\u00e9]:1", "[fe80::1%a\x00]:1"),
        "[fe80::1%25eth0]:8899",  # RFC 6874's form: never reaches an interface "25eth0"
    ],
)
def test_check_target_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="not a host:port target"):
        check_target(text)


def test_a_target_zone_in_rfc_6874_form_is_told_how_to_write_it() -> None:
    with pytest.raises(ValueError, match=r"write the zone id as %eth0, not %25eth0"):
        check_target("[fe80::1%25eth0]:8899")


#: URLs of http_targets, rpc, public_url, fetch --tracker (values.check_http_url): "" where
#: one is taken, else a piece of the reason given.
@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("http://[fe80::1%eth0]:8461", ""),
        ("http://[2001:db8::3]:8899/x", ""),
        ("http://[fe80::1%25v0]:8461", "write the zone id as %eth0, not %25eth0"),
        ("http://[fe80::1%25eth0]:8461/", "write the zone id as %eth0, not %25eth0"),
        # an unbracketed IPv6 address: said so, with the URL it meant (not "port must be...")
        ("http://2001:db8::3:8899", "needs brackets: http://[2001:db8::3]:8899, got"),
        ("https://::1:8458/v1", "needs brackets: https://[::1]:8458/v1, got"),
        ("http://2001:db8::1", "needs brackets: http://[2001:db8::1], got"),
        ("http://u:p@2001:db8::3:8899/x", "needs brackets: http://***@[2001:db8::3]:8899/x"),
        # colons that hold no address: a port's problem, not an address's
        ("http://a:b:c", "port must be a number from 1 to 65535"),
        ("http://host:8899:1/", "port must be a number from 1 to 65535"),
        ("http://h:99999", "port must be a number from 1 to 65535"),
    ],
)
def test_check_http_url(url: str, problem: str) -> None:
    if not problem:
        check_http_url(url)
        return
    with pytest.raises(ValueError, match=re.escape(problem)):
        check_http_url(url)


@pytest.mark.parametrize(
    ("text", "size", "rate"),
    [
        ("4096", 4096, 4096),
        (4096, 4096, 4096),
        ("16MiB", 16 * 1024**2, 16 * 1024**2),
        ("1.5GB", 1_500_000_000, 1_500_000_000),
        ("100M", 100_000_000, 100_000_000),
        ("50MB/s", None, 50_000_000),
        ("50M/s", None, 50_000_000),
        ("50MiB/s", None, 50 * 1024**2),
        ("4096/s", None, 4096),
        ("50MB/h", None, None),
        ("-1", None, None),
        (-1, None, None),
        (True, None, None),
        (1.5, None, None),
        (2**51, None, None),
        ("9" * 5000, None, None),
    ],
)
def test_one_rule_reads_sizes_and_rates(text: object, size: int | None, rate: int | None) -> None:
    for check, expected in ((size_in(0), size), (size_in(0, per_second=True), rate)):
        if expected is None:
            with pytest.raises(ValueError, match=r"expected a size|must be from"):
                check(text)
        else:
            assert check(text) == expected


def test_a_rate_reads_the_same_in_every_key_that_takes_one(tmp_path: Path) -> None:
    for text in ("50MB/s", "50M/s", "50MiB/s"):
        config = load(
            tmp_path,
            f"target_groups: [{{group: g, source_limits: {{max_rate: {text}}},"
            f" ranking: {{assumed_throughput: {text}}}}}]\n",
        )
        group = config.target_groups[0]
        assert group.source_limits.max_rate == group.ranking.assumed_throughput


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (366 * 86400.0, "366d"),  # was 3.16224e+07s
        (60.0, "1m"),
        (90.0, "90s"),
        (7200.0, "2h"),
        (0.5, "0.5s"),
        (1.0, "1s"),
        (86400.0 + 1, "86401s"),
    ],
)
def test_a_duration_is_shown_as_the_config_writes_it(seconds: float, text: str) -> None:
    from tracker.config.values import duration_text

    assert duration_text(seconds) == text
