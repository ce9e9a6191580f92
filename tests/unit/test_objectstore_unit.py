"""The object-store tier's pure parts: config checks, retention, part sizes, masking."""

from __future__ import annotations

import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
import trio.testing
import urllib3.exceptions
from helpers_config import load, problem_at, problems
from names import full_name, incremental_name

from tracker.objectstore import keys
from tracker.objectstore.bucket import verdict
from tracker.objectstore.keys import Archive, archive_of, legacy_kind
from tracker.objectstore.locks import old_enough
from tracker.objectstore.replicas import HolderRoute, base_url, holder_route, own_url_warning
from tracker.objectstore.retainer import RETRY_AFTER, Retainer
from tracker.objectstore.retention import (
    MAX_AHEAD,
    Retirement,
    ahead_of,
    clock_ahead,
    retirement,
    superseded,
    url_life,
)
from tracker.objectstore.storeanswers import store_time
from tracker.objectstore.storehealth import StoreHealth
from tracker.objectstore.upload import MAX_PARTS, MIN_PART, part_size

STORE = """
proxy_snapshot_downloads: true
proxy_snapshot_cache_dir: cache
object_store:
{body}
"""


def store(body: str) -> str:
    return STORE.format(body="\n".join("  " + line for line in body.strip().splitlines()))


def test_the_spec_example_loads_with_secrets_from_files(tmp_path: Path) -> None:
    (tmp_path / "key").write_text("AKEXAMPLE\n")
    (tmp_path / "secret").write_text("s3cr3t\n")
    config = load(
        tmp_path,
        store("""
endpoint: "http://127.0.0.1:8333/"
bucket: snapshots
prefix: fleet
region: eu-west-1
access_key_id_file: key
secret_access_key_file: secret
addressing_style: virtual
direct_serve: true
direct_serve_ttl: 15m
public_endpoint: "https://objects.example.org"
lock_ttl: 60s
replica_url: "http://10.0.0.5:8458/"
keep_previous: 2
"""),
    )
    s = config.object_store
    assert s is not None
    assert (s.endpoint, s.prefix, s.replica_url) == (
        "http://127.0.0.1:8333",
        "fleet/",
        "http://10.0.0.5:8458",
    )
    assert (s.direct_serve_ttl, s.lock_ttl, s.keep_previous) == (900.0, 60.0, 2)
    assert s.request_timeout == 2.0  # the default: the longest a request waits for the store
    assert (s.resolved_access_key_id, s.resolved_secret_access_key) == ("AKEXAMPLE", "s3cr3t")
    assert "s3cr3t" not in repr(config) and "AKEXAMPLE" not in repr(config)


@pytest.mark.parametrize(
    ("body", "path", "says"),
    [
        ("bucket: Snap_shots", "object_store.bucket", "not an S3 bucket name"),
        ("bucket: b1x\nprefix: /abs", "object_store.prefix", "relative key prefix"),
        ("bucket: b1x\nprefix: a/../b", "object_store.prefix", "relative key prefix"),
        # a "." segment: clients drop it from a presigned URL's path, SeaweedFS refuses it
        ("bucket: b1x\nprefix: x/./", "object_store.prefix", "relative key prefix"),
        ("bucket: b1x\nprefix: '.'", "object_store.prefix", "relative key prefix"),
        ("bucket: b1x\nendpoint: ftp://x", "object_store.endpoint", "http(s) URL"),
        ("bucket: b1x\npublic_endpoint: http://u:p@x", "object_store.public_endpoint", "creden"),
        ("bucket: b1x\naddressing_style: dns", "object_store.addressing_style", "'path'"),
        ("bucket: b1x\ndirect_serve_ttl: 169h", "object_store.direct_serve_ttl", "to 7d"),
        ("bucket: b1x\nlock_ttl: 0s", "object_store.lock_ttl", "from 1s"),
        ("bucket: b1x\nkeep_previous: -1", "object_store.keep_previous", "from 0"),
        ("bucket: b1x\nrequest_timeout: 0s", "object_store.request_timeout", "from 0.1s"),
        ("bucket: b1x\nsurprise: 1", "object_store.surprise", "unknown key"),
        ("bucket: b1x\nreplicas: http://a", "object_store.replicas", "expected a list"),
        ("bucket: b1x\nreplicas: [http://a, ftp://b]", "object_store.replicas[1]", "http(s)"),
        ("bucket: b1x\nreplicas: ['']", "object_store.replicas[0]", "not empty"),
        ("bucket: b1x\nreplicas: ['http://u:p@a']", "object_store.replicas[0]", "creden"),
        ("bucket: b1x\nreplicas: ['http://a/?x=1']", "object_store.replicas[0]", "query"),
        ("bucket: b1x\naccess_key_id: AK", "object_store", "both access_key_id"),
        ("region: x", "object_store.bucket", "required"),
        # the S3 client refuses these at start: serve stopped with a traceback
        ("bucket: b1x\nregion: 'bad region/'", "object_store.region", "not a region name"),
        ("bucket: b1x\nregion: a..b", "object_store.region", "not a region name"),
        ("bucket: b1x\nregion: '-'", "object_store.region", "not a region name"),
        ("bucket: b1x\nregion: '12345'", "object_store.region", "not a region name"),
        ("bucket: b1x\nregion: ''", "object_store.region", "not a region name"),
    ],
)
def test_bad_settings_name_their_key(tmp_path: Path, body: str, path: str, says: str) -> None:
    found = problems(tmp_path, store(body))
    assert says in problem_at(found, path)
    assert "AK" not in " ".join(f for f in found if "access_key_id" not in f)


def test_the_store_needs_the_disk_cache_to_stage_its_refreshes(tmp_path: Path) -> None:
    found = problems(tmp_path, "object_store: {bucket: snapshots}\n")
    assert "proxy_snapshot_cache_dir" in problem_at(found, "object_store")


def test_retention_keeps_the_newest_of_each_kind() -> None:
    fulls = [full_name(slot) for slot in (100, 300, 200)]
    incrementals = [incremental_name(300, slot) for slot in (310, 320)]
    names = [*fulls, *incrementals, "notes.txt"]
    assert superseded(names, full=True, keep_previous=1) == [full_name(100)]
    assert superseded(names, full=True, keep_previous=0) == [full_name(200), full_name(100)]
    assert superseded(names, full=False, keep_previous=0) == [incremental_name(300, 310)]
    assert superseded(names, full=True, keep_previous=5) == []


@pytest.mark.parametrize(
    ("handed", "delete", "wait"),
    [
        ({}, (), None),
        ({"a": None}, ("a",), None),  # never handed out
        ({"a": 20.0}, ("a",), None),  # its last URL expired
        ({"a": 15.0}, ("a",), None),  # exactly the hold: expired
        ({"a": 5.0}, (), 10.0),  # a URL may be valid 10 s more
        ({"a": -2.0}, (), 17.0),  # handed out "after" the store's Date (clock steps)
        ({"a": None, "b": 14.5, "c": 3.0, "d": 30.0}, ("a", "d"), 0.5),  # the soonest wait
    ],
)
def test_retirement_deletes_what_no_valid_url_names_and_waits_for_the_rest(
    handed: dict[str, float | None], delete: tuple[str, ...], wait: float | None
) -> None:
    assert retirement(handed, hold=15.0) == Retirement(delete, wait)


@pytest.mark.parametrize(
    ("operation", "code", "status", "says"),
    [
        ("PUT", "PreconditionFailed", 412, "conflict"),
        ("DELETE", "", 412, "conflict"),  # a lock's release after a takeover
        ("HEAD", "", 404, "absent"),
        ("GET", "InvalidRange", 416, "absent"),
        # housekeeping a bucket policy refuses: that housekeeping is skipped
        ("DELETE", "AccessDenied", 403, "denied"),
        ("ListMultipartUploads", "AccessDenied", 403, "denied"),
        ("AbortMultipartUpload", "AccessDenied", 403, "denied"),
        # what serving or filling the bucket needs, refused: the store is unusable
        ("GET", "AccessDenied", 403, "down"),
        ("HEAD", "", 403, "down"),
        ("PUT", "AccessDenied", 403, "down"),
        ("UploadPart", "AccessDenied", 403, "down"),
        ("LIST", "AccessDenied", 403, "down"),
        # wrong or expired credentials fail every call, housekeeping too
        ("DELETE", "SignatureDoesNotMatch", 403, "down"),
        ("ListMultipartUploads", "InvalidAccessKeyId", 403, "down"),
        ("DELETE", "", 403, "down"),  # no code said: not known to be a policy's
        ("DELETE", "InternalError", 500, "down"),
        ("DELETE", "SlowDown", 503, "down"),
    ],
)
def test_only_a_refused_housekeeping_call_leaves_the_store_up(
    operation: str, code: str, status: int, says: str
) -> None:
    assert verdict(operation, code, status) == says


@pytest.mark.parametrize(
    ("calls", "told"),
    [
        ("", []),  # nothing answered yet: not up (the metric starts at 0)
        ("f", []),  # failed before any answer: still not up, nothing changed
        ("a", [True]),
        ("fa", [True]),
        ("afa", [True, False, True]),
        ("aa", [True]),  # told on a change only
        ("r", [True]),  # a read of stored bytes is an answer
    ],
)
def test_the_store_is_reported_up_only_once_it_answered(calls: str, told: list[bool]) -> None:
    seen: list[bool] = []
    health = StoreHealth(on_change=seen.append)
    for call in calls:
        {"a": health.answered, "r": health.read_worked}.get(call, lambda: health.failed("x"))()
    assert seen == told
    assert health.reported_up() == (told[-1] if told else False)
    assert health.usable() == (not calls or calls[-1] != "f")  # requests ask it meanwhile


FULL, INCR = full_name(100), incremental_name(100, 150)


@pytest.mark.parametrize(
    ("key", "archive"),
    [
        (f"p/main/{FULL}", Archive("main", FULL, True)),
        (f"p/main/{INCR}", Archive("main", INCR, False)),
        (f"p/main/{FULL}.sha256", None),  # its digest
        (f"p/main/{FULL}.part", None),
        (f"p/main/sub/{FULL}", None),
        (f"p/.locks/main/{FULL}.lock", None),
        (f"p/.locks/main/{FULL}", None),  # an older version's lock
        (f"p/.handed/main/{FULL}.handed", None),
        (f"p/{FULL}", None),  # no group
        (f"q/main/{FULL}", None),  # another prefix
        ("p/main/snapshot-0100-" + FULL.split("-", 2)[2], None),  # not canonical (a leading 0)
        ("p/main/notes.txt", None),
        (f"p/-x/{FULL}", Archive("-x", FULL, True)),
        (f"p/a b/{FULL}", None),  # not a group name
    ],
)
def test_only_canonical_archive_keys_are_archives(key: str, archive: Archive | None) -> None:
    assert archive_of("p/", key) == archive


@pytest.mark.parametrize(
    ("key", "kind"),
    [
        (f"p/.locks/main/{FULL}", "lock"),
        (f"p/.handed/main/{INCR}", "mark"),
        (f"p/.locks/main/{FULL}.lock", None),  # today's
        (f"p/.handed/main/{FULL}.handed", None),
        (f"p/main/{FULL}", None),
        ("p/.locks/main/notes.txt", None),
    ],
)
def test_old_locks_and_marks_are_told_apart(key: str, kind: str | None) -> None:
    assert legacy_kind("p/", key) == kind


def test_no_key_of_an_archive_but_its_own_ends_in_its_name() -> None:
    made = [make("p/", "main", FULL) for make in (keys.digest_key, keys.lock_key, keys.mark_key)]
    sides = keys.side_keys("p/", "main", FULL)
    assert [key.removeprefix(f"p/main/{FULL}") for key in sides] == [
        ".proof",
        ".attestation",
        ".sha256",
    ]
    for key in made + sides:
        assert not key.endswith(FULL) and archive_of("p/", key) is None, key
    assert archive_of("p/", keys.archive_key("p/", "main", FULL)) == Archive("main", FULL, True)


def test_parts_fit_the_store_limits() -> None:
    assert part_size(1) == MIN_PART
    for size in (1, 100 * 1024**3, 5 * 1024**4):  # 100 GiB, 5 TiB (S3's largest object)
        step = part_size(size)
        assert step >= MIN_PART and -(-size // step) <= MAX_PARTS


def test_the_replicas_example_and_its_second_replica_pass_check_config(tmp_path: Path) -> None:
    """``examples/replicas.yml`` and the replica-b copy its comment makes with ``sed``."""
    example = Path(__file__).resolve().parents[2] / "examples" / "replicas.yml"
    second = tmp_path / "replica-b.yml"
    script = "/replicas:/!s/8458/8468/g; s/8457/8467/; s/replica-a/replica-b/"
    assert script in example.read_text()  # the command the example's comment gives
    with second.open("w") as out:
        subprocess.run(["sed", "-e", script, str(example)], stdout=out, check=True, timeout=30)
    assert "replica-b" in second.read_text() and "8468" in second.read_text()
    for path in (example, second):  # each lists both, its own replica_url among them
        assert 'replicas: ["http://127.0.0.1:8458", "http://127.0.0.1:8468"]' in path.read_text()
    for path in (example, second):
        result = subprocess.run(
            [sys.executable, "-m", "tracker", "check-config", "--config", str(path)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, (path.name, result.stdout, result.stderr)
        assert result.stdout.strip().endswith("OK"), result.stdout
        assert "warning" not in result.stderr, result.stderr


def test_an_age_in_whole_seconds_is_judged_late_never_early() -> None:
    # An upload started at 10.9 s shows Initiated 10 s; looked at 0.15 s later by our own
    # clock (no lock, so no store Date) it must not pass for 1 s old with lock_ttl 1 s.
    shown = datetime(2026, 11, 23, 12, 0, 10, tzinfo=UTC)
    assert not old_enough(shown, shown + timedelta(seconds=1.05), lock_ttl=1.0)
    assert not old_enough(shown, shown + timedelta(seconds=1.99), lock_ttl=1.0)
    assert old_enough(shown, shown + timedelta(seconds=2.0), lock_ttl=1.0)
    # A date in another zone is the same instant.
    assert old_enough(shown.astimezone(timezone(timedelta(hours=2))), shown + timedelta(3), 1.0)


def test_a_date_past_the_calendars_edge_in_utc_is_judged() -> None:
    # A store listing an upload Initiated 0001-01-01T00:00:00+05:00 (botocore keeps the
    # offset): its conversion to UTC overflowed out of the tier's start-up, which ended the
    # service at each start while the store listed it.
    now = datetime(2026, 11, 23, 12, 0, 0, tzinfo=UTC)
    past = datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=5)))
    future = datetime(9999, 12, 31, 23, 59, 59, tzinfo=timezone(timedelta(hours=-5)))
    assert old_enough(past, now, lock_ttl=1.0)
    assert not old_enough(future, now, lock_ttl=1.0)


@pytest.mark.parametrize(
    ("text", "base"),
    [
        ("http://10.0.0.5:8458", "http://10.0.0.5:8458"),
        ("HTTP://Replica-A.example:80/", "http://replica-a.example"),
        ("https://a.example:443/t/", "https://a.example/t"),
        ("http://[::1]:8458", "http://[::1]:8458"),
        ("http://u:p@a.example", None),
        ("http://a.example/?x=1", None),
        ("http://a.example/#f", None),
        ("ftp://a.example", None),
        ("http://", None),
        ("http://a.example:99999", None),
        ("http://a.example/\nx", None),
        ("http://a .example", None),
        ("http://a.example/" + "x" * 3000, None),
        ("", None),
    ],
)
def test_a_replica_url_from_the_bucket_as_a_base_url(text: str, base: str | None) -> None:
    assert base_url(text) == base


LISTED = ("http://10.0.0.5:8458", "http://10.0.0.6:8458/")


@pytest.mark.parametrize(
    ("replica_url", "replicas", "route"),
    [
        ("http://10.0.0.6:8458", LISTED, HolderRoute("http://10.0.0.6:8458", trusted=True)),
        ("HTTP://10.0.0.6:8458/", LISTED, HolderRoute("http://10.0.0.6:8458", trusted=True)),
        ("http://127.0.0.1:8457", LISTED, "is not in object_store.replicas"),
        ("http://10.0.0.6:8459", LISTED, "is not in object_store.replicas"),
        ("http://10.0.0.6:8458", (), HolderRoute("http://10.0.0.6:8458", trusted=False)),
        ("http://169.254.169.254", (), HolderRoute("http://169.254.169.254", trusted=False)),
        ("http://10.0.0.5:8458/", LISTED, ""),  # this replica's own: silently not followed
        ("http://10.0.0.5:8458", (), ""),
        ("", LISTED, "no replica_url"),
        ("http://x@10.0.0.6:8458", LISTED, "not an http(s) base URL"),
        ("file:///etc/passwd", (), "not an http(s) base URL"),
        # one replica however its address is spelled (core.hosts.canonical_host)
        (
            "http://[2001:db8:0::a]:8458",
            ("http://[2001:db8::a]:8458",),
            HolderRoute("http://[2001:db8:0::a]:8458", trusted=True),
        ),
        (
            "http://[::ffff:10.0.0.6]:8458",
            LISTED,
            HolderRoute("http://[::ffff:10.0.0.6]:8458", trusted=True),
        ),
        ("http://[::ffff:10.0.0.5]:8458", LISTED, ""),
        ("http://[2001:db8::b]:8458", ("http://[2001:db8::a]:8458",), "is not in"),
    ],
)
def test_a_holder_is_followed_only_where_the_operator_allows(
    replica_url: str, replicas: tuple[str, ...], route: HolderRoute | str
) -> None:
    got = holder_route(replica_url, own="http://10.0.0.5:8458", replicas=replicas)
    if isinstance(route, HolderRoute) or route == "":
        assert got == route
    else:
        assert isinstance(got, str) and route in got, got


@pytest.mark.parametrize(
    ("settings", "says"),
    [
        ("replica_url: http://10.0.0.5:8458", "10.0.0.5 is a private address"),
        ("replica_url: http://localhost:8458", "127.0.0.1 is a loopback address"),
        ("replica_url: http://10.0.0.5:8458\negress_allow: ['10.0.0.0/8']", None),
        ("replica_url: http://203.0.113.9:8458", "203.0.113.9 is a private"),  # TEST-NET-3
        ("replica_url: http://replica-a.internal:8458", None),  # a name: resolved when asked
        ("replica_url: http://10.0.0.5:8458\nreplicas: ['http://10.0.0.5:8458/']", None),
        ("replica_url: http://10.0.0.5:8458\nreplicas: ['http://10.0.0.6:8458']", "not in"),
        ("replica_url: ''", None),
    ],
)
def test_check_config_says_when_other_replicas_would_refuse_this_one(
    tmp_path: Path, settings: str, says: str | None
) -> None:
    store_part, _, egress = settings.partition("\negress_allow: ")
    text = store("bucket: b1x\n" + store_part)
    if egress:
        text = f"egress:\n  allow: {egress}\n" + text
    warning = own_url_warning(load(tmp_path, text))
    if says is None:
        assert warning is None
    else:
        assert warning is not None and says in warning, warning
        assert warning.startswith("object_store.replica_url: ")


def test_check_config_prints_the_warning_and_passes(tmp_path: Path) -> None:
    path = tmp_path / "replica.yml"
    path.write_text(store("bucket: b1x\nreplica_url: http://127.0.0.1:8458"))
    result = subprocess.run(
        [sys.executable, "-m", "tracker", "check-config", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0 and result.stdout.strip().endswith("OK"), result
    assert "warning: object_store.replica_url: " in result.stderr
    assert "object_store.replicas or their network in egress.allow" in result.stderr


@pytest.mark.parametrize(
    ("date", "expected"),
    [
        ("Mon, 01 Jan 2024 00:00:00 GMT", datetime(2024, 1, 1, tzinfo=UTC)),
        # RFC 5322's "-0000": a zone not known, parsed naive; read as UTC.
        ("Mon, 01 Jan 2024 00:00:00 -0000", datetime(2024, 1, 1, tzinfo=UTC)),
    ],
)
def test_the_store_time_is_aware(date: str, expected: datetime) -> None:
    assert store_time({"ResponseMetadata": {"HTTPHeaders": {"date": date}}}) == expected


@pytest.mark.parametrize(
    "date", ["not a date", "Mon, 01 Jan 2024 00:00:00 +9999999999999999999999"]
)
def test_a_store_time_that_is_none_is_ours(date: str) -> None:
    before = datetime.now(UTC)
    when = store_time({"ResponseMetadata": {"HTTPHeaders": {"date": date}}})
    assert before <= when <= datetime.now(UTC)


@pytest.mark.parametrize(
    ("ours", "store", "ahead"),
    [
        (1000.0, 1000.0, 0),
        (1000.4, 1000.0, 1),  # the store's Date is whole seconds: rounded up
        (1030.0, 1000.0, 30),
        (990.0, 1000.0, 0),  # behind: its URLs expire early, nothing to hold
        (1_000_000.0, 0.0, MAX_AHEAD),
    ],
)
def test_how_far_our_clock_runs_ahead(ours: float, store: float, ahead: int) -> None:
    assert ahead_of(ours, store) == ahead


@pytest.mark.parametrize(
    ("metadata", "ahead"),
    [
        ({"ahead": "30"}, 30),
        ({}, 0),  # a mark of an older version without it, or one of this version
        ({"ahead": "-5"}, 0),
        ({"ahead": "١٢"}, 0),  # digits, but not ASCII ones
        ({"ahead": "99999999999"}, 0),
        ({"ahead": "9999"}, MAX_AHEAD),
        ({"ahead": "3.5"}, 0),
    ],
)
def test_what_a_mark_says_of_its_replicas_clock(metadata: dict[str, str], ahead: int) -> None:
    assert clock_ahead(metadata) == ahead


@pytest.mark.parametrize(
    ("ttl", "ahead", "life"),
    [
        (900.0, 0, 900.0),
        (900.0, 30, 870.0),  # expires ttl after the mark on the store's clock
        (900.0, 450, 450.0),
        (900.0, 451, None),  # a clock that far off hands out no URL
        (2.0, 1, 1.0),
        (900.0, MAX_AHEAD, None),
    ],
)
def test_how_long_a_url_is_signed_for(ttl: float, ahead: int, life: float | None) -> None:
    assert url_life(ttl, ahead) == life


@pytest.mark.parametrize(
    "error",
    [
        urllib3.exceptions.SSLError("decryption failed or bad record mac"),
        urllib3.exceptions.ProtocolError("Connection broken"),
    ],
)
async def test_urllib3s_own_errors_of_a_streamed_body_are_store_errors(error: Exception) -> None:
    # botocore wraps only urllib3's read timeouts and protocol errors while a body streams:
    # a TLS record failing its MAC came out as urllib3's SSLError (no OSError), past the
    # tier's calls, and ended the service from its start-up and the learned documents' sync.
    from tracker.errors import StoreError

    def body_read(**_kwargs: object) -> bytes:
        raise error

    with pytest.raises(StoreError, match="get_object: "):
        await _bucket()._call("get_object", body_read)


def test_a_head_answer_from_a_date_past_the_calendars_edge_in_utc() -> None:
    # An object's Last-Modified of 0001-01-01T00:00:00+05:00 overflowed in astimezone(UTC):
    # a 500 for that HEAD; the answer's date is held to 1970-9999 as every other.
    from tracker.objectstore.storeanswers import ObjectInfo
    from tracker.proxy.bucketcopies import head_response

    edge = datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=5)))
    answer = head_response(ObjectInfo("p/g/x", 5, '"e"', edge))
    assert answer.headers["last-modified"] == "Thu, 01 Jan 1970 00:00:00 GMT"


@pytest.mark.parametrize(
    ("metadata", "asked", "status"),
    [
        ({}, [], 200),
        ({}, [("If-None-Match", '"e"')], 304),
        ({}, [("If-None-Match", '"other", "e"')], 304),
        ({}, [("If-None-Match", "*")], 304),
        ({}, [("If-Match", '"other"')], 412),
        ({}, [("If-Match", '"e"')], 200),
        ({}, [("If-Modified-Since", "Sat, 01 Jan 2000 00:00:00 GMT")], 304),
        ({}, [("If-Modified-Since", "Fri, 31 Dec 1999 23:59:59 GMT")], 200),
        ({}, [("If-Unmodified-Since", "Fri, 31 Dec 1999 23:59:59 GMT")], 412),
        # the upstream's own date, kept in the object's metadata, is the one compared
        ({"upstream-last-modified": "Mon, 01 Jan 2024 00:00:00 GMT"},
         [("If-Modified-Since", "Sat, 01 Jan 2000 00:00:00 GMT")], 200),
        # a date the bucket garbled is dropped: the object's own date is the one compared
        ({"upstream-last-modified": "yesterday"},
         [("If-Modified-Since", "Sat, 01 Jan 2000 00:00:00 GMT")], 304),
        ({"upstream-last-modified": "yesterday"},
         [("If-Unmodified-Since", "Sat, 01 Jan 2000 00:00:00 GMT")], 200),
        # so is one in the future (a copy of a source whose clock ran ahead): the answer's
        # date is never later than now, and its conditionals are judged against that
        ({"upstream-last-modified": "Thu, 01 Jan 2099 00:00:00 GMT"},
         [("If-Modified-Since", "Sat, 01 Jan 2000 00:00:00 GMT")], 304),
        ({"upstream-last-modified": "Thu, 01 Jan 2099 00:00:00 GMT"},
         [("If-Unmodified-Since", "Fri, 31 Dec 1999 23:59:59 GMT")], 412),
    ],
)  # fmt: skip
def test_a_head_from_the_bucket_answers_its_conditionals(
    metadata: dict[str, str], asked: list[tuple[str, str]], status: int
) -> None:
    from tracker.objectstore.storeanswers import ObjectInfo
    from tracker.proxy.bucketcopies import head_response

    stored = datetime(2000, 1, 1, tzinfo=UTC)
    answer = head_response(ObjectInfo("p/g/x", 5, '"e"', stored, metadata), None, asked)
    assert answer.status == status
    modified = metadata.get("upstream-last-modified", "")
    kept = modified if modified.startswith("Mon") else "Sat, 01 Jan 2000 00:00:00 GMT"
    assert answer.headers["last-modified"] == kept
    assert answer.headers["etag"] == '"e"'
    assert ("content-length" in answer.headers) == (status != 304)


async def test_a_retention_failing_as_no_rule_foresaw_is_asked_again(
    autojump_clock: trio.testing.MockClock,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Its due entry was deleted before it ran: the exception ended the timer task, whose
    # supervisor started it again without that group's schedule (its archives kept until
    # the next upload).
    runs: list[tuple[str, bool]] = []

    async def retain(self: Retainer, group: str, *, full: bool) -> None:
        runs.append((group, full))
        if len(runs) == 1:
            raise ValueError("nothing foresaw this")

    monkeypatch.setattr(Retainer, "retain", retain)
    failed: list[str] = []
    none: Any = None
    retainer = Retainer(none, none, none, none, lambda op, _exc: failed.append(op))
    retainer.schedule("mainnet", True, 0.0)
    with trio.move_on_after(RETRY_AFTER + 1):
        await retainer.retire_when_due()
    assert runs == [("mainnet", True), ("mainnet", True)]
    assert any(r.msg == "retention_error" and r.exc_info for r in caplog.records)


def _bucket() -> Any:
    from tracker.config.schema import ObjectStore
    from tracker.objectstore.bucket import Bucket

    store = ObjectStore(
        endpoint="http://127.0.0.1:9", bucket="b", access_key_id="k", secret_access_key="s"
    )
    return Bucket(store)


async def test_a_listing_page_of_more_than_was_asked_for_is_cut_to_the_bound() -> None:
    # MAX_LISTED was checked before each page only: one page of a million entries (asked
    # for 1,000) was taken whole.
    from tracker.objectstore.bucket import MAX_LISTED

    when = datetime(2026, 11, 28, tzinfo=UTC)
    item = {"Key": "p/g/x", "Size": 1, "ETag": '"e"', "LastModified": when}

    class Store:
        def list_objects_v2(self, **_kwargs: object) -> dict[str, object]:
            return {"Contents": [item] * (MAX_LISTED + 5000), "IsTruncated": False}

    bucket = _bucket()
    bucket._client = Store()  # the store's answer, no network
    assert len(await bucket.list_objects("p/")) == MAX_LISTED


class EndlessListings:
    """A store whose listings never end: every page says it is truncated and names the next
    one, a new token each time (``fresh``) or the one just sent again; pages have no entry,
    so the MAX_LISTED bound never comes."""

    def __init__(self, fresh: bool) -> None:
        self.fresh = fresh
        self.pages = 0

    def _next(self) -> str:
        self.pages += 1
        return f"token-{self.pages}" if self.fresh else "token"

    def list_objects_v2(self, **_kwargs: object) -> dict[str, object]:
        return {"Contents": [], "IsTruncated": True, "NextContinuationToken": self._next()}

    def list_multipart_uploads(self, **_kwargs: object) -> dict[str, object]:
        marker = self._next()
        return {"IsTruncated": True, "NextKeyMarker": marker, "NextUploadIdMarker": marker}


@pytest.mark.parametrize("fresh", [True, False], ids=["new-tokens", "same-token"])
@pytest.mark.parametrize("operation", ["LIST", "ListMultipartUploads"])
async def test_a_listing_that_never_ends_is_a_store_error(operation: str, fresh: bool) -> None:
    # Pages were asked for until MAX_LISTED entries came: a store whose truncated pages hold
    # none (the same continuation token again, or a new one each time) held the start-up or
    # the retention of a group in that loop for good.
    from tracker.errors import StoreError
    from tracker.objectstore.bucket import MAX_PAGES

    store = EndlessListings(fresh)
    bucket = _bucket()
    bucket._client = store  # the store's answers, no network
    listing = bucket.list_objects if operation == "LIST" else bucket.list_uploads
    with trio.fail_after(20), pytest.raises(StoreError) as raised:
        await listing("p/")
    why = f"more than {MAX_PAGES} pages" if fresh else "the same page again"
    assert str(raised.value) == f"{operation}: a listing that does not end ({why})"
    assert store.pages == (MAX_PAGES if fresh else 2)
    assert not bucket.health.up


async def test_a_call_of_the_trackers_own_has_a_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    # boto's timeouts bound each read: a store trickling a byte every 10 s held the start-up,
    # the retention or the sync of learned documents for good.
    import threading

    from tracker.errors import StoreError
    from tracker.objectstore import bucket as bucket_module

    monkeypatch.setattr(bucket_module, "CALL_DEADLINE", 0.2)
    released = threading.Event()

    def trickling(**_kwargs: object) -> bytes:
        released.wait(30)
        return b""

    try:
        with pytest.raises(StoreError, match=r"LIST: no answer within 0\.2s"):
            await _bucket()._call("LIST", trickling)
    finally:
        released.set()


async def test_a_denied_archive_delete_leaves_that_archive_and_retention_goes_on() -> None:
    # docs/replicas.md: a housekeeping call the bucket's policy refuses "costs that
    # housekeeping only ... the object stays, retention goes on with the rest". A denied
    # delete of one archive (archives left to a lifecycle rule) ended the whole retention:
    # the index was never told what the bucket holds (on_listed), nor the rest retired.
    import botocore.exceptions

    from tracker.core.digests import Digests
    from tracker.objectstore.known import Known
    from tracker.objectstore.retainer import Retainer

    when = datetime(2000, 1, 1, tzinfo=UTC)
    names = [full_name(100), full_name(200), full_name(300)]
    objects = {f"p/g/{name}" for name in names}

    def error(code: str, status: int) -> botocore.exceptions.ClientError:
        answer: Any = {"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}
        return botocore.exceptions.ClientError(answer, "op")

    class Store:
        def list_objects_v2(self, Prefix: str, **_kwargs: object) -> dict[str, object]:
            items = [
                {"Key": k, "Size": 5, "ETag": '"e"', "LastModified": when}
                for k in sorted(objects)
                if k.startswith(Prefix)
            ]
            return {"Contents": items, "IsTruncated": False}

        def head_object(self, Key: str, **_kwargs: object) -> dict[str, object]:
            if Key not in objects:
                raise error("404", 404)
            return {"ContentLength": 5, "ETag": '"e"', "LastModified": when, "Metadata": {}}

        def put_object(self, Key: str, **_kwargs: object) -> dict[str, object]:
            objects.add(Key)
            return {"ETag": '"e"'}

        def delete_object(self, Key: str, **_kwargs: object) -> dict[str, object]:
            if Key == f"p/g/{names[0]}":  # this one is the lifecycle rule's
                raise error("AccessDenied", 403)
            objects.discard(Key)
            return {}

    bucket = _bucket()
    bucket._client = Store()
    store = attrs.evolve(bucket.store, prefix="p/", keep_previous=0)
    told: list[list[str]] = []
    retainer = Retainer(store, bucket, Known(), Digests(), lambda op, exc: None)
    retainer.on_listed = lambda _group, held: told.append([n for n, _s, _t in held])
    await retainer.retain("g", full=True)
    assert bucket.health.up
    assert f"p/g/{names[1]}" not in objects  # the rest retired
    assert told == [[names[0], names[2]]]  # and the index told what the bucket holds


def test_the_store_clients_answers_go_through_the_bounded_session() -> None:
    """The canary of botocore's internals that botoclients relies on (tracker/zerocopy/
    README.md, "Library behaviour relied on outside these packages"): the client's endpoint
    sends through ``http_session`` (wrapped in place), a request carries ``stream_output``,
    an ``AWSResponse`` is made of (url, status, headers, raw), and urllib3's response reads
    what has come with ``read1``: an answer read whole stops at the bound."""
    import io

    import urllib3
    from botocore.awsrequest import AWSPreparedRequest, AWSResponse
    from botocore.httpsession import URLLib3Session

    from tracker.clientwire.storewire import MAX_ANSWER, BoundedAnswer, BoundedSession
    from tracker.config.schema import ObjectStore
    from tracker.errors import StoreError
    from tracker.objectstore.botoclients import make_client

    store = ObjectStore(
        endpoint="http://127.0.0.1:9", bucket="b", access_key_id="k", secret_access_key="s"
    )
    client = make_client(store, store.endpoint, deadline=60.0)
    session = client._endpoint.http_session  # type: ignore[attr-defined]
    assert isinstance(session, BoundedSession)
    assert isinstance(session._inner, URLLib3Session)
    request = AWSPreparedRequest("GET", "http://127.0.0.1:9/b", {}, None, False)
    assert request.stream_output is False

    def answer(size: int) -> BoundedAnswer:
        body = io.BytesIO(b"x" * size)
        raw = urllib3.HTTPResponse(body=body, status=200, preload_content=False)
        made = AWSResponse("http://127.0.0.1:9/b", 200, {}, raw)
        return BoundedAnswer(made, time.monotonic(), 60.0)

    assert answer(MAX_ANSWER).content == b"x" * MAX_ANSWER
    with pytest.raises(StoreError, match="an answer over"):
        _ = answer(MAX_ANSWER + 1).content


def test_the_store_clients_pools_make_connections_a_call_can_hang_up() -> None:
    """The canary of botocore's and urllib3's internals that CallLine relies on (tracker/
    zerocopy/README.md): the session's pool managers, direct and through a proxy, make their
    pools of its ``_pool_classes_by_scheme`` (changed in place), a pool's connections are of
    its ``ConnectionCls``, and the connection a request uses is taken with ``_get_conn`` and
    given back with ``_put_conn`` in the thread of the call."""
    from tracker.clientwire.storewire import CallLine
    from tracker.config.schema import ObjectStore
    from tracker.errors import StoreError
    from tracker.objectstore.botoclients import make_client

    store = ObjectStore(
        endpoint="http://127.0.0.1:9", bucket="b", access_key_id="k", secret_access_key="s"
    )
    client = make_client(store, store.endpoint, deadline=60.0)
    inner = client._endpoint.http_session._inner  # type: ignore[attr-defined]
    managers = [inner._manager, inner._get_proxy_manager("http://127.0.0.1:8")]
    for manager in managers:
        for url in ("http://127.0.0.1:9/b", "https://127.0.0.1:9/b"):
            pool = manager.connection_from_url(url)
            assert type(pool).__name__.startswith("_Lined"), (url, type(pool))
            assert type(pool).ConnectionCls.__name__.startswith("_Lined")
    pool = inner._manager.connection_from_url("http://127.0.0.1:9/b")
    line = CallLine()

    def taken() -> Any:
        conn = pool._get_conn()  # a connection not connected yet: no socket
        assert conn.line is line
        line.hang_up()  # from the call itself here; the event loop's in the daemon
        pool._put_conn(conn)
        assert conn.line is None
        return conn

    assert line.run(taken).sock is None
    line.hang_up()  # after the call: nothing to do
    given_up = CallLine()
    given_up.hang_up()
    with pytest.raises(StoreError, match="given up before it began"):
        given_up.run(lambda: None)


def test_a_connections_twin_shut_down_ends_a_read_blocked_in_another_thread() -> None:
    """The canary of the kernel's part (Linux): shutting down a duplicate descriptor of a
    socket makes a read blocked on the socket in another thread return at once, though the
    peer stays open and sends nothing (a socket pair stands in for the store's connection)."""
    import socket
    import threading

    from tracker.clientwire.storewire import _Hangable

    ours, store = socket.socketpair()
    ours.settimeout(30.0)  # botocore's read timeout: far past the test's patience

    class Plain:
        def _new_conn(self) -> socket.socket:
            return ours

        def close(self) -> None:
            ours.close()

    class Conn(_Hangable, Plain):
        pass

    conn = Conn()
    sock = conn._new_conn()
    reading, read = threading.Event(), []

    def read_on() -> None:
        reading.set()
        read.append(sock.recv(1))

    thread = threading.Thread(target=read_on)
    thread.start()
    assert reading.wait(5)
    conn.hang_up()
    thread.join(5)
    assert read == [b""]
    conn.close()
    assert conn._twin is None
    store.close()


def test_a_connection_closed_in_its_call_keeps_its_twin_hangable_until_the_call_ends() -> None:
    """http.client closes a connection whose answer ends with it (``Connection: close``,
    HTTP/1.0) as soon as the head is read, the body read on from the socket in the same
    call: its twin closed with it, a call given up then had nothing to shut down. The call
    keeps the twin: hung up, the read ends; the call over, the twin is closed (no
    descriptor left), and a connection closed outside a call closes its twin at once."""
    import socket
    import threading

    from tracker.clientwire.storewire import CallLine, _Hangable

    ours, store = socket.socketpair()
    ours.settimeout(30.0)

    class Plain:
        def _new_conn(self) -> socket.socket:
            return ours

        def close(self) -> None:
            pass  # as http.client's: the answer's reader holds the socket on

    class Conn(_Hangable, Plain):
        pass

    line, conn = CallLine(), Conn()
    reading, read, twins = threading.Event(), [], []

    def call() -> None:
        sock = conn._new_conn()
        conn.line = line
        line.hold(conn)
        twins.append(conn._twin)
        conn.close()  # the head said the connection ends with the answer
        assert conn._twin is None
        reading.set()
        read.append(sock.recv(1))

    thread = threading.Thread(target=line.run, args=(call,))
    thread.start()
    assert reading.wait(5)
    line.hang_up()
    thread.join(5)
    assert read == [b""]
    assert twins[0].fileno() == -1  # closed as the call ended
    outside = Conn()
    outside._new_conn()
    twin = outside._twin
    assert twin is not None
    outside.close()
    assert twin.fileno() == -1
    ours.close()
    store.close()
