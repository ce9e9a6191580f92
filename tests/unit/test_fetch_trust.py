"""fetch's trust in signed statements (fetch.trust): how many trusted keys vouch, as tables."""

from __future__ import annotations

import json

import base58
import pytest
from helpers_statements import NOW, SHA, expected, signer, statement

from tracker.fetch.trust import (
    LOW_ORDER_KEYS,
    MAX_REASONS,
    TrustPolicy,
    public_key,
    unvouched,
)
from tracker.proof.levels import Level


def policy(keys: list[int], minimum: int = 1, required: Level = Level.STRUCTURE) -> TrustPolicy:
    return TrustPolicy(frozenset(signer(k).public_key for k in keys), minimum, required)


GOOD = {n: signer(n).sign(statement()).encode() for n in (1, 2, 3)}


@pytest.mark.parametrize(
    ("documents", "trusted", "minimum", "reason"),
    [
        ([GOOD[1]], [1], 1, None),
        ([GOOD[1], GOOD[2]], [1, 2], 2, None),
        ([GOOD[1], GOOD[1]], [1, 2], 2, "1 of the 2 trusted statements needed"),
        ([GOOD[1], GOOD[3]], [1, 2], 2, "not a trusted key"),
        ([], [1], 1, "0 of the 1 trusted statements needed vouch for it (none found)"),
        ([b"{}", GOOD[2]], [1], 1, "not a {statement, signer, signature} document"),
        ([b"x" * 10_000_000], [1], 1, "over 16384 bytes"),
        ([signer(1).sign(statement(expires=NOW)).encode()], [1], 1, "expired at"),
        ([signer(1).sign(statement(size=1)).encode()], [1], 1, "names size 1"),
        ([signer(1).sign(statement(sha256="cd" * 32)).encode()], [1], 1, "names sha256"),
    ],
)
def test_an_archive_is_vouched_for_by_enough_trusted_keys(
    documents: list[bytes], trusted: list[int], minimum: int, reason: str | None
) -> None:
    found = unvouched(documents, policy(trusted, minimum), expected())
    if reason is None:
        assert found is None
    else:
        assert found is not None and reason in found and "\n" not in found


def test_the_level_named_must_reach_the_required_one() -> None:
    low = [signer(1).sign(statement(level=Level.MANIFEST)).encode()]
    assert unvouched(low, policy([1], required=Level.MANIFEST), expected()) is None
    found = unvouched(low, policy([1]), expected(required=Level.ACCOUNTS))
    assert found is not None and "below the required accounts" in found


#: A key whose base58 is 43 letters: room for a trailing blank within the 44 a key may have.
SHORT_KEY = base58.b58encode(bytes([3, *range(1, 32)])).decode()


@pytest.mark.parametrize(
    ("text", "taken"),
    [
        (signer(1).public_key, True),
        ("0" * 44, False),  # not base58
        ("abc", False),
        ("1" * 45, False),
        (SHA, False),
        # base58's decoder drops trailing blanks: "K " read as K, yet compared as text it
        # was a second key (one signer met --trust-min 2)
        (SHORT_KEY, True),
        (SHORT_KEY + " ", False),
        (SHORT_KEY + "\r", False),
    ],
)
def test_a_trust_key_is_a_base58_public_key(text: str, taken: bool) -> None:
    if taken:
        assert public_key(text) == text
    else:
        with pytest.raises(ValueError, match="not a base58 public key"):
            public_key(text)


def test_the_line_names_the_keys_that_vouched_for_nothing() -> None:
    found = unvouched([GOOD[1]], policy([1, 2, 3], 3), expected())
    assert found is not None
    assert found.startswith("1 of the 3 trusted statements needed vouch for it; none from ")
    missing = found.split("; none from ")[1]
    assert missing == ", ".join(sorted([signer(2).public_key, signer(3).public_key]))
    assert signer(1).public_key not in missing


def test_the_line_names_a_bounded_number_of_reasons() -> None:
    forged = [signer(1).sign(statement(size=n)).encode() for n in range(1, 21)]
    found = unvouched(forged, policy([1]), expected())
    assert found is not None and "\n" not in found
    assert found.count("names size") == MAX_REASONS
    assert f"and {20 - MAX_REASONS} more" in found


KEY1, KEY2 = signer(1).public_key, signer(2).public_key


@pytest.mark.parametrize(
    ("flags", "reason"),
    [
        ([], ""),
        (["--trust-key", KEY1], ""),
        (["--trust-key", KEY1, "--trust-key", KEY2, "--trust-min", "2"], ""),
        # Statements come from a tracker, name the SHA-256 the check computes, and N keys
        # vouch only when N are listed.
        (["--trust-key", KEY1, "--verify=false"], "--trust-key needs --verify true"),
        (["--trust-key", KEY1, "--trust-min", "2"], "--trust-min 2 needs as many distinct"),
        (["--trust-key", KEY1, "--trust-key", KEY1, "--trust-min", "2"], "1 given"),
        (["--trust-key", KEY1, "--tracker", "", "--source", "http://s"], "needs --tracker"),
    ],
)
def test_trust_flags_that_cannot_work_are_a_usage_error(flags: list[str], reason: str) -> None:
    from tracker.cli import build_parser
    from tracker.fetch.flags import trust_usage

    args = build_parser().parse_args(["fetch", "--ledger", "l", "--tracker", "http://t", *flags])
    found = trust_usage(args)
    assert (reason in found) if reason else found == ""


def test_the_trust_flags_reach_the_downloads_settings() -> None:
    from tracker.cli import build_parser
    from tracker.fetch.flags import options_of

    argv = ["fetch", "--ledger", "l", "--tracker", "http://t", "--require", "manifest"]
    plain = options_of(build_parser().parse_args(argv)).settings.trust
    assert not plain.active
    args = build_parser().parse_args([*argv, "--trust-key", KEY1, "--trust-key", KEY2])
    trust = options_of(args).settings.trust
    assert trust == TrustPolicy(frozenset({KEY1, KEY2}), 1, Level.MANIFEST)


def test_a_usage_error_exits_2_before_anything_runs(capsys: pytest.CaptureFixture[str]) -> None:
    from tracker.cli import main

    argv = ["fetch", "--ledger", "l", "--tracker", "http://t", "--trust-key", KEY1]
    with pytest.raises(SystemExit) as exited:
        main([*argv, "--trust-min", "3"])
    assert exited.value.code == 2
    assert "--trust-min 3 needs as many distinct --trust-key, 1 given" in capsys.readouterr().err


def test_a_listed_document_of_no_text_costs_only_itself() -> None:
    """A listing's JSON may carry a lone surrogate: refused with a reason, GOOD[1] counts."""
    from tracker.fetch.trust import listed_documents

    junk = {"statement": "\ud800", "signer": signer(2).public_key, "signature": "x"}
    documents = [*listed_documents([junk]), GOOD[1]]
    assert unvouched(documents, policy([1]), expected()) is None
    found = unvouched(documents, policy([1, 2], 2), expected())
    assert found is not None and "statement: not ASCII" in found


def test_a_low_order_trust_key_is_refused() -> None:
    """Trusting a low-order key would trust anyone: the all-zero key (base58 ``1`` x 32, the
    System Program's address) takes a forged statement, no secret needed."""
    zero = "1" * 32
    forged = [
        json.dumps(
            {
                "statement": statement(checked_at=n).canonical().decode(),
                "signer": zero,
                "signature": base58.b58encode(bytes(64)).decode(),
            }
        ).encode()
        for n in range(64)
    ]
    taken = [
        d for d in forged if unvouched([d], TrustPolicy(frozenset({zero})), expected()) is None
    ]
    assert taken, "the library refuses them all: the blocklist guards nothing any more"
    for raw in LOW_ORDER_KEYS:
        text = base58.b58encode(raw).decode()
        with pytest.raises(ValueError, match="a low-order point"):
            public_key(text)
    assert public_key(signer(1).public_key) == signer(1).public_key


def test_a_low_order_trust_key_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    from tracker.cli import main

    with pytest.raises(SystemExit) as exited:
        main(["fetch", "--ledger", "l", "--tracker", "http://t", "--trust-key", "1" * 32])
    assert exited.value.code == 2
    assert "a low-order point" in capsys.readouterr().err
