"""What ``fetch`` reads from hostile input without a network: numbers in answers are ASCII digits
and bounded, and a state file that is a link or nested too deeply is not trusted (hostile
answers and ledgers over real connections: tests/integration/test_fetch_hostile.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from names import full_name

from tracker.fetch.sourcechecks import digits, first_byte_total
from tracker.fetch.state import Identity, State, load_state, save_state, state_path, temp_path

FULL = full_name(20_000)


@pytest.mark.parametrize(
    ("text", "value"),
    [("0", 0), ("123", 123), (" 42 ", 42), ("9" * 18, 10**18 - 1), ("²", None), ("\u0661", None)],
)
def test_digits_are_ascii_and_bounded(text: str, value: int | None) -> None:
    assert digits(text) == value
    assert digits("9" * 19) is None and digits("") is None and digits("-1") is None
    # A 0-byte file has no byte 0: "bytes 0-0/0" states nothing.
    assert first_byte_total(f"bytes 0-0/{text.strip()}") == (value or None)
    assert first_byte_total("bytes 0-1/10") is None  # not the byte asked


def test_a_state_file_that_is_a_link_or_deeply_nested_is_not_trusted(tmp_path: Path) -> None:
    name, ledger = FULL, str(tmp_path)
    state = State(name, Identity(100, '"e"'), ((0, 100),))
    Path(temp_path(ledger, name)).write_bytes(b"x" * 100)
    save_state(ledger, state)
    assert load_state(ledger, name) == state
    real = tmp_path / "elsewhere.state"
    Path(state_path(ledger, name)).rename(real)
    Path(state_path(ledger, name)).symlink_to(real)
    assert load_state(ledger, name) is None
    Path(state_path(ledger, name)).unlink()
    Path(state_path(ledger, name)).write_text("[" * 100_000)  # json.loads: RecursionError
    assert load_state(ledger, name) is None
