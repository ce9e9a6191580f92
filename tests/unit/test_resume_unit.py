"""Whether an answer to a resume request is the rest that was asked for (tracker.proxy.upstream's
decision, as a table; resumes over real connections: tests/integration/test_resume.py)."""

from __future__ import annotations

import httpx
import pytest

from tracker.proxy.upstream import resume_problem


@pytest.mark.parametrize(
    ("status", "headers", "problem"),
    [
        (206, {"content-range": "bytes 100-999/1000", "content-length": "900"}, None),
        (206, {"content-range": "bytes  100-999/1000"}, None),
        (200, {"content-length": "1000"}, "answered 200"),
        (206, {"content-range": "bytes 100-999/2000"}, "content-range"),
        (206, {"content-range": "bytes 0-999/1000"}, "content-range"),
        (206, {}, "content-range"),
        (206, {"content-range": "bytes 100-999/1000", "content-length": "10"}, "content-length"),
    ],
)
def test_resume_problem(status: int, headers: dict[str, str], problem: str | None) -> None:
    response = httpx.Response(status, headers=headers)
    found = resume_problem(response, 100, 1000)
    if problem is None:
        assert found is None
    else:
        assert found is not None and problem in found
