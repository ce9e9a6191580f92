"""A sidecar's snapshot list parsed without a server: strict validation of every entry, one bad
entry failing the whole list by name, JSON array structure errors, bounded memory and lazy
decoding (the probe against real servers: tests/integration/test_sources_sidecar.py)."""

from __future__ import annotations

import json
import tracemalloc
from typing import Any

import httpx
import pytest
from helpers_sources import HASHES, file_json, info_json

from tracker.core.snapshots import U64_MAX
from tracker.discovery.sidecar import parse_snapshot_list
from tracker.errors import ProbeError
from tracker.net.limits import iter_json_array, same_host_redirect

H0, H1, H2 = HASHES[:3]
MiB = 1024 * 1024


FULL = file_json(100, H0, size=1000, mod_time="2026-11-21T10:00:00.123456789Z")

GOOD = info_json(FULL)


def with_file(**changes: Any) -> dict[str, Any]:
    """GOOD with its one file changed (None removes a key)."""
    return GOOD | {"files": [{k: v for k, v in (FULL | changes).items() if v is not None}]}


@pytest.mark.parametrize(
    ("entry", "reason"),
    [
        (GOOD | {"slot": "100"}, "slot: not an unsigned 64-bit integer: '100'"),
        (GOOD | {"slot": True}, "slot: not an unsigned 64-bit integer: True"),
        (GOOD | {"slot": -1}, "slot: not an unsigned 64-bit integer"),
        (GOOD | {"slot": U64_MAX + 1}, "slot: not an unsigned 64-bit integer"),
        (GOOD | {"slot": 100.0}, "slot: not an unsigned 64-bit integer"),
        (GOOD | {"size": "1"}, "size: not an unsigned 64-bit integer"),
        (GOOD | {"hash": "abc"}, "hash: not a base58 32-byte hash: 'abc'"),
        (GOOD | {"slot": 101}, "files: no file is the entry's snapshot"),
        (GOOD | {"base_slot": 7}, "files: no file is the entry's snapshot"),
        (GOOD | {"files": []}, "files: not a non-empty array"),
        (GOOD | {"files": "x"}, "files: not a non-empty array"),
        ({k: v for k, v in GOOD.items() if k != "files"}, "files: not a non-empty array"),
        (GOOD | {"files": [FULL, FULL, FULL]}, "files: 3 files, a chain has at most 2"),
        (GOOD | {"files": [FULL, file_json(90, H2)]}, "files: snapshot-90-"),
        (GOOD | {"files": [7]}, "files[0]: not a JSON object: 7"),
        (with_file(hash=H2[:-2]), "files[0].hash: not a base58 32-byte hash"),
        (with_file(hash=None), "files[0].hash: not a base58 32-byte hash: None"),
        (with_file(slot=101), "files[0].file_name: 'snapshot-100-"),
        (with_file(ext=".tar.gz"), "files[0].file_name: 'snapshot-100-"),
        (with_file(base_slot=5), "files[0].file_name: 'snapshot-100-"),
        (with_file(file_name="snapshot-100.tar.zst"), "files[0].file_name: not a snapshot"),
        (with_file(file_name=["x"]), "files[0].file_name: not a string"),
        (with_file(size=-1), "files[0].size: not an unsigned 64-bit integer: -1"),
        (with_file(size=1.5), "files[0].size: not an unsigned 64-bit integer: 1.5"),
        (with_file(mod_time="yesterday"), "files[0].mod_time: not an RFC 3339 time"),
        (with_file(mod_time="2026-13-01T00:00:00Z"), "files[0].mod_time: not an RFC 3339"),
        (with_file(mod_time="2026-11-21T10:00:00"), "files[0].mod_time: not an RFC 3339"),
        # Past the calendar once in UTC (OverflowError: it ended the scrape loop).
        (with_file(mod_time="0001-01-01T00:00:00+01:00"), "files[0].mod_time: not an RFC 3339"),
        (with_file(mod_time="9999-12-31T23:59:59-01:00"), "files[0].mod_time: not an RFC 3339"),
        (with_file(mod_time=1700000000), "files[0].mod_time: not an RFC 3339"),
        (with_file(sha256="ab" * 31), "files[0].sha256: not a SHA-256 (64 hex digits)"),
        (with_file(sha256="xy" * 32), "files[0].sha256: not a SHA-256 (64 hex digits)"),
        (with_file(sha256=7), "files[0].sha256: not a SHA-256 (64 hex digits): 7"),
        ([GOOD], "not a JSON object: [{"),
        # The same archive at another size than an earlier entry listed it at: one of the
        # two is a lie the tracker cannot tell from the other (a full listed on its own and
        # as an incremental's base, or twice).
        (with_file(size=999), f"{FULL['file_name']}: size 999, entry 0 listed size 1000"),
        (
            info_json(file_json(150, H1, base=100, size=10), FULL | {"size": 7}),
            f"{FULL['file_name']}: size 7, entry 0 listed size 1000",
        ),
    ],
)
def test_one_bad_entry_fails_the_whole_list_naming_it(entry: Any, reason: str) -> None:
    text = json.dumps([GOOD, entry])
    with pytest.raises(ProbeError) as info:
        parse_snapshot_list(text, "http://x", max_entries=10)
    assert str(info.value).startswith(f"entry 1: {reason}")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("published", "kept"),
    [(None, ""), ("ab" * 32, "ab" * 32), ("AB" * 32, "ab" * 32)],
)
def test_a_published_sha256_is_kept_with_the_file(published: str | None, kept: str) -> None:
    """The digest a source publishes for its copy (another tracker's listing carries one),
    lower-cased: what a refresh from several sources matches them by."""
    text = json.dumps([with_file(sha256=published)])
    (info,) = parse_snapshot_list(text, "http://x", max_entries=1)
    assert info.files[0].sha256 == kept


def test_an_archive_listed_again_at_the_same_size_or_none_is_taken() -> None:
    """Only two sizes disagree: the same size again (a full listed on its own and as an
    incremental's base) or none (unknown) is no contradiction."""
    incremental = file_json(150, H1, base=100, size=10)
    listed = [GOOD, info_json(incremental, FULL), info_json(incremental, with_file()["files"][0])]
    listed.append(with_file(size=None))
    infos = parse_snapshot_list(json.dumps(listed), "http://x", max_entries=10)
    assert [i.files[-1].size for i in infos] == [1000, 1000, 1000, 0]


def test_full_info_may_carry_base_slot_zero() -> None:
    (info,) = parse_snapshot_list(json.dumps([GOOD | {"base_slot": 0}]), "http://x", max_entries=1)
    assert info.base_slot == info.slot == 100


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("[{", "invalid JSON at character 2: Expecting property name"),
        ('{"slot": 1}', "answer is not a JSON array"),
        ("", "answer is not a JSON array"),
        (" [ 1 , 2 ] x", "invalid JSON at character 11: data after the array"),
        ("[1 2]", "invalid JSON at character 3: expected ',' or ']'"),
        ("[1,]", "invalid JSON at character 3: Expecting value"),
        ("[1, NaN]", "entry 1: invalid JSON: NaN is not valid JSON"),
        ("[-Infinity]", "entry 0: invalid JSON: -Infinity is not valid JSON"),
        ("[" * 100_000, "entry 0: JSON nested too deeply"),
        ("[" + "9" * 5000 + "]", "entry 0: invalid JSON: Exceeds the limit"),
        ('[1, {"a": x}, ' + "2, " * 10_000 + "3]", "invalid JSON at character 10: Expecting"),
    ],
)
def test_array_structure_errors(text: str, reason: str) -> None:
    with pytest.raises(ProbeError) as info:
        list(iter_json_array(text, max_items=10))
    assert str(info.value).startswith(reason)
    assert "\n" not in str(info.value)


def test_one_huge_entry_is_refused_with_bounded_memory() -> None:
    text = '[{"files": [' + "{}," * (2 * MiB) + "{}]}]"  # 6 MiB: ~150 MiB if decoded whole
    tracemalloc.start()
    try:
        with pytest.raises(ProbeError, match=r"larger than"):
            parse_snapshot_list(text, "http://x", max_entries=10)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2 * MiB


def test_array_elements_are_decoded_lazily_up_to_the_limit() -> None:
    text = "[" + "0," * 1_000_000 + "0]"
    seen = []
    with pytest.raises(ProbeError, match=r"^more than 10 entries$"):
        seen.extend(iter_json_array(text, max_items=10))
    assert seen == [0] * 10


@pytest.mark.parametrize(
    ("asked", "status", "location", "followed"),
    [
        # the sidecar's own origin: a path moved, absolute or relative
        (
            "http://h:13080/v1/snapshots",
            301,
            "/new/v1/snapshots",
            "http://h:13080/new/v1/snapshots",
        ),
        ("http://h:13080/a/v1/snapshots", 308, "b/x", "http://h:13080/a/v1/b/x"),
        ("http://H:13080/v1/snapshots", 302, "http://h:13080/y", "http://h:13080/y"),
        # its https upgrade, on the same host (port 443)
        ("http://h:13080/v1/snapshots", 301, "https://h/v1/snapshots", "https://h/v1/snapshots"),
        ("http://h/v1/snapshots", 301, "https://h:443/v1/snapshots", "https://h/v1/snapshots"),
        ("http://h:13080/v1/snapshots", 301, "https://h:8443/v1/snapshots", None),
        # a sidecar configured with userinfo: it goes along (it was refused as another's)
        ("http://u:p@h:13080/old", 308, "/new", "http://u:p@h:13080/new"),
        ("http://u:p@h:13080/old", 308, "http://h:13080/new", "http://u:p@h:13080/new"),
        ("http://u:p@h/v1/snapshots", 301, "https://h/v1/snapshots", "https://u:p@h/v1/snapshots"),
        # another origin: not followed (its credentials are the sidecar's)
        ("http://h:13080/v1/snapshots", 301, "http://h:13081/v1/snapshots", None),
        ("http://h:13080/v1/snapshots", 301, "http://other:13080/v1/snapshots", None),
        ("https://h/v1/snapshots", 301, "http://h/v1/snapshots", None),  # a downgrade
        ("http://h:13080/v1/snapshots", 301, "http://u:p@h:13080/x", None),
        ("http://h:13080/v1/snapshots", 301, "ftp://h/x", None),
        ("http://h:13080/v1/snapshots", 301, "http://[zz/x", None),
        # no redirect
        ("http://h:13080/v1/snapshots", 301, "", None),
        ("http://h:13080/v1/snapshots", 404, "/x", None),
    ],
)
def test_a_probe_follows_a_redirect_to_its_own_origin_only(
    asked: str, status: int, location: str, followed: str | None
) -> None:
    headers = {"location": location} if location else {}
    answer = httpx.Response(status, headers=headers, request=httpx.Request("GET", asked))
    assert same_host_redirect(asked, answer) == followed
