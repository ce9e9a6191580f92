"""The strict parsers of network input (tracker.core.untrusted), as tables."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from tracker.config.targetfile import is_host_port
from tracker.core.untrusted import LAST_SECOND, ascii_digits, load_json, port_number, utc_time
from tracker.errors import ProbeError, RpcError


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("0", 0),
        ("8899", 8899),
        ("18446744073709551615", 2**64 - 1),
        ("007", 7),
        ("", None),
        ("²", None),  # str.isdigit() is True, int() raises
        ("1²", None),
        ("٣", None),  # int() would read an Arabic-Indic 3
        ("\uff11\uff12", None),  # fullwidth digits, int() reads 12
        ("+1", None),
        ("-1", None),
        (" 1", None),
        ("1_000", None),
        ("1" * 21, None),
    ],
)
def test_ascii_digits(text: str, value: int | None) -> None:
    assert ascii_digits(text) == value


@pytest.mark.parametrize(
    ("text", "value"),
    [("1", 1), ("65535", 65535), ("0", None), ("65536", None), ("²", None), ("000080", None)],
)
def test_port_number(text: str, value: int | None) -> None:
    assert port_number(text) == value


def test_host_port_entries_refuse_unicode_digits() -> None:
    assert is_host_port("h:8899") and not is_host_port("h:²") and not is_host_port("h:٨٨")


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"[" * 5000 + b"]" * 5000, "JSON nested too deeply"),
        (b'{"a": ' + b"9" * 5000 + b"}", "invalid JSON: Exceeds the limit"),
        (b"[NaN]", "invalid JSON: NaN is not valid JSON"),
        (b"[1,", "invalid JSON: Expecting value: line 1 column 4 (char 3)"),
        (b'"\xff"', "answer is not UTF-8"),
        (b"", "invalid JSON: Expecting value"),
    ],
)
@pytest.mark.parametrize("error", [ProbeError, RpcError])
def test_load_json_maps_every_failure_to_the_callers_error(
    data: bytes, reason: str, error: type[ProbeError | RpcError]
) -> None:
    with pytest.raises(error) as info:
        load_json(data, error)
    assert str(info.value).startswith(reason) and "\n" not in str(info.value)


def test_load_json_size_cap_and_values() -> None:
    assert load_json(b'{"result": [1, "x", null]}', ProbeError) == {"result": [1, "x", None]}
    with pytest.raises(ProbeError, match="exceeds the limit of 4"):
        load_json(b"[1, 2]", ProbeError, max_bytes=4)


@pytest.mark.parametrize(
    ("seconds", "expected"),
    [
        (784111777.0, datetime(1994, 11, 6, 8, 49, 37, tzinfo=UTC)),
        # A file's mtime may be any: a tmpfs keeps a year past 9999 (a source's date was
        # stamped on a cached file), which datetime.fromtimestamp refuses.
        (LAST_SECOND + 10**9, datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)),
        (-1.0, datetime(1970, 1, 1, tzinfo=UTC)),
        (float("nan"), datetime(1970, 1, 1, tzinfo=UTC)),
        (float("inf"), datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)),
    ],
)
def test_utc_time_of_any_mtime(seconds: float, expected: datetime) -> None:
    assert utc_time(seconds) == expected
