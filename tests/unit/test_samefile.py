"""The one "same file" rule, and every reader of it agreeing: fetch's resumed state, fetch's
check of each answer, the proxy's resume. Pure, no network."""

from __future__ import annotations

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tracker.fetch.state import Identity
from tracker.multisource.samefile import Sameness, Validators, not_same_reason, sameness
from tracker.multisource.sources import same_validators
from tracker.proxy.failover import resumable, same_representation

SAME, DIFFERENT, UNPROVEN = Sameness.SAME, Sameness.DIFFERENT, Sameness.UNPROVEN
MON, TUE = "Mon, 02 Nov 2026 10:00:00 GMT", "Tue, 03 Nov 2026 10:00:00 GMT"


@pytest.mark.parametrize(
    ("first", "later", "verdict"),
    [
        (Validators('"a"', MON), Validators('"a"', MON), SAME),
        (Validators('"a"', MON), Validators('"a"', TUE), SAME),  # the strong ETag decides
        (Validators('"a"'), Validators('"a"'), SAME),
        (Validators("", MON), Validators("", MON), SAME),
        (Validators('W/"a"', MON), Validators('W/"a"', MON), SAME),
        # A tracker's cache gives the file its own ETag and keeps the date: not proven.
        (Validators('"a"', MON), Validators('"b"', MON), UNPROVEN),
        (Validators("", MON), Validators('W/"x"', MON), UNPROVEN),
        (Validators('"a"', MON), Validators("", MON), UNPROVEN),
        (Validators('W/"a"'), Validators('W/"a"'), UNPROVEN),  # weak, no date
        (Validators(), Validators(), UNPROVEN),
        (Validators('"a"'), Validators(), UNPROVEN),
        (Validators("", MON), Validators(), UNPROVEN),
        (Validators('"a"', MON), Validators('"b"', TUE), DIFFERENT),
        (Validators("", MON), Validators("", TUE), DIFFERENT),
        (Validators('W/"a"', MON), Validators('W/"a"', TUE), DIFFERENT),
        (Validators('"a"'), Validators('"b"'), DIFFERENT),
        (Validators('"a"'), Validators('W/"a"'), DIFFERENT),
    ],
)
def test_the_rule(first: Validators, later: Validators, verdict: Sameness) -> None:
    assert sameness(first, later) is verdict
    assert sameness(later, first) is verdict


def test_the_reasons_name_what_differs() -> None:
    assert not_same_reason(Validators(), Validators()) == (
        "the first answer had neither a strong ETag nor a Last-Modified date"
    )
    assert not_same_reason(Validators('"a"'), Validators('"b"')) == (
        "etag '\"b\"' is not the first answer's '\"a\"'"
    )
    assert not_same_reason(Validators("", MON), Validators("", TUE)) == (
        f"last-modified {TUE!r} is not the first answer's {MON!r}"
    )
    assert not_same_reason(Validators("", MON), Validators("", MON)) is None


def test_validators_of_headers_and_if_range() -> None:
    headers = httpx.Headers({"ETag": ' "a" ', "Last-Modified": MON})
    assert Validators.of(headers) == Validators('"a"', MON)
    assert Validators('"a"', MON).if_range() == '"a"'
    assert Validators('W/"a"', MON).if_range() == MON
    assert Validators('W/"a"').if_range() is None


VALIDATORS = st.builds(
    Validators,
    st.sampled_from(["", '"a"', '"b"', 'W/"a"', 'W/"b"']),
    st.sampled_from(["", MON, TUE]),
)


@given(VALIDATORS, VALIDATORS)
def test_the_rule_is_symmetric_and_its_reason_is_given_exactly_when_not_same(
    first: Validators, later: Validators
) -> None:
    assert sameness(first, later) is sameness(later, first)
    assert (not_same_reason(first, later) is None) == (sameness(first, later) is SAME)
    if first.etag != later.etag and (first.strong or later.strong):
        assert sameness(first, later) is not SAME  # another strong ETag never proves it


@given(VALIDATORS)
def test_an_answer_is_itself_when_it_has_something_to_prove_it(only: Validators) -> None:
    expected = SAME if only.if_range() is not None else UNPROVEN
    assert sameness(only, only) is expected


def _response(validators: Validators) -> httpx.Response:
    headers = {"etag": validators.etag, "last-modified": validators.last_modified}
    return httpx.Response(200, headers={k: v for k, v in headers.items() if v})


@given(VALIDATORS, VALIDATORS)
def test_every_reader_agrees_on_the_same_file(first: Validators, later: Validators) -> None:
    """What fetch resumes from its state file, the proxy resumes after a break; what fetch
    refuses mid-download, neither resumes."""
    proxy_resumes = resumable(_response(first)) and (
        same_representation(_response(first), _response(later)) is None
    )
    fetch_resumes = Identity(10, first.etag, first.last_modified).same_file(
        Identity(10, later.etag, later.last_modified)
    )
    fetch_keeps = same_validators(_response(later), Identity(10, first.etag, first.last_modified))
    assert proxy_resumes == fetch_resumes == (sameness(first, later) is SAME)
    assert fetch_keeps == (sameness(first, later) is not DIFFERENT)
    if proxy_resumes:
        assert fetch_keeps
