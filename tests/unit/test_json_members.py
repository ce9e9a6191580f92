"""The members of a JSON-RPC answer walked one bounded value at a time, into nested objects
(:func:`tracker.net.limits.iter_json_members`): a table."""

from __future__ import annotations

import pytest

from tracker.errors import ProbeError
from tracker.net.limits import iter_json_member, iter_json_members


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            '{"jsonrpc":"2.0","result":{"slot":1,"transactions":[{"a":1},2]},"id":1}',
            [
                ("jsonrpc", "2.0"),
                ("slot", 1),
                ("transactions[]", {"a": 1}),
                ("transactions[]", 2),
                ("transactions", []),
                ("id", 1),
            ],
        ),
        ('{"result":{"transactions":[]}}', [("transactions", [])]),
        ('{"error":{"code":-32007}}', [("error", {"code": -32007})]),
        ('{"result":null}', [("result", None)]),  # not an object: one value
        ('{"result":{"transactions":7}}', [("transactions", 7)]),  # not an array: one value
        ('{"transactions":[1]}', [("transactions", [1])]),  # not inside `result`
    ],
)
def test_members_and_elements(text: str, expected: list[tuple[str, object]]) -> None:
    found = list(iter_json_members(text, {"transactions"}, within=("result",), max_items=10))
    assert found == expected


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ('{"result":{"transactions":[1,2,3]}}', "more than 2 entries"),
        ('{"result":{"transactions":[1,2', "invalid JSON"),
        ('{"result":{"big":"' + "x" * 200 + '"}}', "larger than 100 characters"),
        ('{"result":{}} {}', "data after the object"),
        ("[]", "not a JSON object"),
    ],
)
def test_hostile_answers_fail_in_one_line(text: str, reason: str) -> None:
    with pytest.raises(ProbeError, match=reason):
        list(
            iter_json_members(
                text, {"transactions"}, within=("result",), max_items=2, max_item_chars=100
            )
        )


def test_the_array_member_of_an_answer() -> None:
    assert list(iter_json_member('{"result":[1,2]}', "result", max_items=5)) == [1, 2]
    assert list(iter_json_member('{"result":[]}', "result", max_items=5)) == []
    for text in ('{"result":7}', '{"error":{}}', '{"result[]":[1]}'):
        with pytest.raises(ProbeError, match="no 'result' array"):
            list(iter_json_member(text, "result", max_items=5))


def _cut_at(token: str, before: str) -> str:
    """An array of one object whose first 2,048-character window (the decoder's first
    try) ends inside ``token``, ``before`` leading up to it."""
    pad = 2048 - len('[{"pad":"",') - len(before) - 2
    return '[{"pad":"' + "x" * pad + '",' + before + token + "}]"


@pytest.mark.parametrize(
    ("before", "token"),
    [
        ('"ok":', "true"),
        ('"ok":', "false"),
        ('"no":', "null"),
        ('"name":"', '\\u00e9t\\u00e9"'),
    ],
)
def test_an_element_whose_first_window_ends_inside_a_token_is_read_whole(
    before: str, token: str
) -> None:
    # The decoder blames the token's start, characters before the window's end: a valid
    # answer (Consul's catalog with its tags, a sidecar's listing with unknown keys) was
    # "invalid JSON at character 2045" every round.
    import json

    from tracker.net.limits import iter_json_array

    for shift in range(len(token) + 1):
        text = _cut_at(token, " " * shift + before)
        assert list(iter_json_array(text, max_items=1)) == json.loads(text)
