"""What ``fetch`` reads from a tracker's JSON: the URLs of each archive. Pure, no network."""

from __future__ import annotations

import json
from typing import Any

import pytest
from names import full_name

from tracker.fetch.listing import snapshots_from_json, source_url
from tracker.fetch.trust import MAX_LISTED, listed_documents

NAME = full_name(1000)
TRACKER = "http://tracker:8458"
ROUTE = f"{TRACKER}/v1/mainnet/{NAME}"


def entry(**file: Any) -> dict[str, Any]:
    return {"slot": 1000, "group": "mainnet", "files": [{"file_name": NAME, "slot": 1000, **file}]}


@pytest.mark.parametrize(
    ("file", "url"),
    [
        # A sidecar's file: a bare name; its url is where the sidecar serves it.
        ({"url": f"http://a:8899/v1/snapshot/{NAME}"}, f"http://a:8899/v1/snapshot/{NAME}"),
        ({"url": f"https://b/api/v1/snapshot/{NAME}"}, f"https://b/api/v1/snapshot/{NAME}"),
        # An older tracker: a sidecar's file has no URL at all, an HTTP source's name is one.
        ({}, ""),
        ({"file_name": f"http://c/{NAME}"}, f"http://c/{NAME}"),
        # url wins over an absolute file_name.
        ({"file_name": f"http://c/{NAME}", "url": f"http://d/{NAME}"}, f"http://d/{NAME}"),
        # Not a plain http(s) URL: skipped.
        ({"url": f"file:///etc/{NAME}"}, ""),
        ({"url": f"http://a/{NAME}\nx"}, ""),
        ({"url": f"http://a/ {NAME}"}, ""),
        ({"url": f"http://a/\u00e9/{NAME}"}, ""),
        ({"url": "http://a/" + "x" * 5000}, ""),
        ({"url": 42}, ""),
        ({"url": None, "file_name": f"http://c/{NAME}"}, f"http://c/{NAME}"),
    ],
)
def test_source_url(file: dict[str, Any], url: str) -> None:
    assert source_url({"file_name": NAME, **file}) == url


def test_every_source_of_an_archive_is_listed_after_the_trackers_route() -> None:
    """Two sidecars holding the same archive: both URLs (the tracker's JSON gives their names
    bare), after the tracker's own route, each once, in the tracker's order."""
    entries = [
        entry(url=f"http://a/v1/snapshot/{NAME}", size=10),
        entry(url=f"http://b/v1/snapshot/{NAME}", size=10),
        entry(url=f"http://a/v1/snapshot/{NAME}", size=10),
        entry(size=10),  # a source of an older tracker: only the route leads there
    ]
    [snapshot] = snapshots_from_json(TRACKER, entries)
    assert snapshot.full is not None
    assert snapshot.full.urls == (
        ROUTE,
        f"http://a/v1/snapshot/{NAME}",
        f"http://b/v1/snapshot/{NAME}",
    )
    assert snapshot.full.size == 10


def test_a_size_that_is_not_a_positive_integer_is_unknown() -> None:
    for size in (True, -1, "10", 1.5, None):
        [snapshot] = snapshots_from_json(TRACKER, [entry(size=size)])
        assert snapshot.full is not None and snapshot.full.size == 0, size


def test_the_sha256_the_tracker_lists_is_kept_when_well_formed() -> None:
    digest = "ab" * 32
    entries = [
        entry(sha256=digest),
        entry(sha256=digest.upper()),  # not lower-case hex: skipped
        entry(sha256="ab" * 31),
        entry(sha256=["ab" * 32]),
    ]
    [snapshot] = snapshots_from_json(TRACKER, entries)
    assert snapshot.full is not None and snapshot.full.sha256 == {digest}
    [bare] = snapshots_from_json(TRACKER, [entry()])
    assert bare.full is not None and bare.full.sha256 == frozenset()


DOC = {"statement": "{}", "signer": "s", "signature": "g"}


@pytest.mark.parametrize(
    ("listed", "documents"),
    [
        # Each listed file's attestations: the route's objects, as bytes; one of each.
        ([DOC], 1),
        ([DOC, DOC, {**DOC, "signer": "t"}], 2),
        # Not a list: none; a member that is no document stays, to be refused with why.
        ({"statement": "x"}, 0),
        ("x", 0),
        ([1, "x", None], 3),
        # A listing is network input: a bounded number per file.
        ([{**DOC, "signer": str(n)} for n in range(100)], 32),
    ],
)
def test_a_listed_files_statements_are_kept(listed: object, documents: int) -> None:
    [snapshot] = snapshots_from_json(TRACKER, [entry(attestations=listed)])
    assert snapshot.full is not None
    assert len(snapshot.full.statements) == documents
    assert snapshot.full.statements_url == ROUTE + ".attestation"


def test_statements_of_one_file_in_several_entries_are_gathered_once() -> None:
    other = {**DOC, "signer": "t"}
    entries = [entry(attestations=[DOC]), entry(attestations=[DOC, other]), entry()]
    [snapshot] = snapshots_from_json(TRACKER, entries)
    assert snapshot.full is not None
    assert [json.loads(d)["signer"] for d in snapshot.full.statements] == ["s", "t"]


def test_statements_of_one_file_are_bounded_across_entries() -> None:
    entries = [
        entry(attestations=[{**DOC, "signer": f"{e}-{n}"} for n in range(10)]) for e in range(10)
    ]
    [snapshot] = snapshots_from_json(TRACKER, entries)
    assert snapshot.full is not None and len(snapshot.full.statements) == MAX_LISTED


def test_a_listed_attestations_member_is_read_only_so_far() -> None:
    many = [{**DOC, "signer": str(n)} for n in range(10_000)]
    assert len(listed_documents(many)) == MAX_LISTED
    assert listed_documents([DOC, DOC]) == (json.dumps(DOC, sort_keys=True).encode(),)


def test_an_entry_of_a_group_no_url_can_name_is_skipped() -> None:
    # A hostile tracker's "group": "\ud800" (a lone surrogate of a JSON escape): quoting it
    # into the route raised a UnicodeEncodeError, and the whole fetch ended.
    bad = {**entry(size=10), "group": "\ud800"}
    other = {**entry(size=10), "group": 7}
    [snapshot] = snapshots_from_json(TRACKER, [bad, other, entry(size=10)])
    assert snapshot.full is not None and snapshot.full.urls[0] == ROUTE


class CountedUrl(str):
    """A listed URL that counts how often it is compared for equality (a list's ``in``
    compares with every element; a dict's lookup with those of the same hash only)."""

    compared = 0

    def __eq__(self, other: object) -> bool:
        CountedUrl.compared += 1
        return str.__eq__(self, other)

    __hash__ = str.__hash__


def test_the_urls_of_an_archive_are_gathered_in_linear_work() -> None:
    # A listing of 16 MiB (hostile, or a fleet's) names one archive at some 180,000 URLs:
    # each checked against every URL before it took 202 s of the event loop (measured),
    # no signal nor --download-timeout heard meanwhile. Counted, not timed: comparisons.
    count = 2_000
    entries = [entry(url=CountedUrl(f"http://h{n}/v1/snapshot/{NAME}")) for n in range(count)]
    entries.append(entry(url=CountedUrl(f"http://h0/v1/snapshot/{NAME}")))  # once
    CountedUrl.compared = 0
    [snapshot] = snapshots_from_json(TRACKER, entries)
    assert snapshot.full is not None and len(snapshot.full.urls) == count + 1
    assert snapshot.full.urls[:2] == (ROUTE, f"http://h0/v1/snapshot/{NAME}")
    assert CountedUrl.compared <= 2 * count, CountedUrl.compared
