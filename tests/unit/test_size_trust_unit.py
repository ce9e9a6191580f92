"""Whether an answer's length agrees with the size its source advertised (tracker.proxy.upstream's
decision, as a table; a source failed for it over real connections:
tests/integration/test_size_trust.py)."""

from __future__ import annotations

import httpx
import pytest

from tracker.proxy.upstream import size_problem


@pytest.mark.parametrize(
    ("status", "headers", "exact", "problem"),
    [
        (200, {"content-length": "100"}, False, None),
        (200, {}, False, None),  # no length: the body is counted against the advertised size
        (200, {"content-length": "50"}, False, "content-length '50' is not the advertised size"),
        (206, {"content-range": "bytes 0-9/100"}, False, None),
        (206, {"content-range": "bytes 0-9/200"}, False, "is not of the advertised size 100"),
        (206, {"content-range": "bytes 0-9/*"}, False, "is not of the advertised size 100"),
        (304, {}, False, None),
        # The bucket and a holder replica always state the length: one that does not fails.
        (200, {"content-length": "100"}, True, None),
        (200, {}, True, "no content-length: not shown to be the advertised size 100"),
        (200, {"content-length": "50"}, True, "content-length '50' is not the advertised size"),
        (206, {"content-range": "bytes 0-9/*"}, True, "is not of the advertised size 100"),
        (304, {}, True, None),
    ],
)
def test_size_problem(
    status: int, headers: dict[str, str], exact: bool, problem: str | None
) -> None:
    found = size_problem(httpx.Response(status, headers=headers), 100, exact=exact)
    if problem is None:
        assert found is None
    else:
        assert found is not None and problem in found
    unknown = size_problem(httpx.Response(status, headers=headers), 0, exact=exact)
    assert unknown is None  # size unknown
