"""Every answer of a download is held to the file its source was inspected with
(tracker/multisource/sources.py): by range and size, and by validators within one origin."""

from __future__ import annotations

import httpx
import pytest

from tracker.errors import SourceFailed
from tracker.multisource.sources import Identity, Source, check_range

SIZE = 100
TRACKER = "http://127.0.0.1:9000/v1/g/snapshot-1-h.tar.zst"
BUCKET = "http://127.0.0.1:9333/bucket/snapshot-1-h.tar.zst?X-Amz-Signature=a"
RELAYED = {"etag": '"relay"', "last-modified": "Mon, 01 Jan 2026 00:00:00 GMT"}
STORED = {"etag": '"object"', "last-modified": "Tue, 02 Jan 2026 00:00:00 GMT"}
CHANGED = {"etag": '"other"', "last-modified": "Wed, 03 Jan 2026 00:00:00 GMT"}


def answer(url: str, validators: dict[str, str], *, via: str | None = None) -> httpx.Response:
    """A 206 of bytes 0-9 from ``url``, brought by a redirect from ``via`` when given."""
    headers = {"content-range": f"bytes 0-9/{SIZE}", **validators}
    response = httpx.Response(206, headers=headers, request=httpx.Request("GET", url))
    if via is not None:
        hop = httpx.Response(303, headers={"location": url}, request=httpx.Request("GET", via))
        response.history = [hop]
    return response


def source() -> Source:
    return Source(TRACKER, Identity(SIZE, RELAYED["etag"], RELAYED["last-modified"]), True)


@pytest.mark.parametrize(
    ("answers", "fails_at"),
    [
        # the relay's answers, then the bucket's once the upload completed: one archive
        ([(TRACKER, RELAYED, None), (BUCKET, STORED, TRACKER), (TRACKER, RELAYED, None)], None),
        ([(BUCKET, STORED, TRACKER), (BUCKET, STORED, TRACKER)], None),
        # another file at the tracker's own origin
        ([(TRACKER, RELAYED, None), (TRACKER, CHANGED, None)], 1),
        # another file behind the bucket's origin, after its first answer there
        ([(BUCKET, STORED, TRACKER), (BUCKET, CHANGED, TRACKER)], 1),
        # a redirect back to the source's own origin is held to the source's validators
        ([(TRACKER, CHANGED, "http://127.0.0.1:9000/old")], 0),
    ],
    ids=["relay-then-bucket", "bucket-twice", "changed-here", "changed-there", "same-origin"],
)
def test_validators_are_compared_within_one_origin(
    answers: list[tuple[str, dict[str, str], str | None]], fails_at: int | None
) -> None:
    one = source()
    for index, (url, validators, via) in enumerate(answers):
        if index == fails_at:
            with pytest.raises(SourceFailed, match="the file changed"):
                check_range(answer(url, validators, via=via), one, 0, 10)
            return
        check_range(answer(url, validators, via=via), one, 0, 10)
    assert fails_at is None
