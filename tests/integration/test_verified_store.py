"""Verified archives and the object store (docs/http-api.md, "Verified archives"): a tracker
over a real SeaweedFS bucket and a real upstream, with real archives (tests/archives.py).

A bad copy never reaches the bucket (no object, no digest object, the multipart upload
aborted); a good one is completed with its ``{key}.sha256`` object, and its digest is then
known to every replica from the bucket alone.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
from pathlib import Path

from archives import bad_variants, build_archive, compress, make_tar, snapshot_entries
from helpers_proxy import GROUP, wait_for
from helpers_replicas import idle, replica
from helpers_s3 import BUCKET, Weed
from helpers_upstream import FakeUpstream, serving
from helpers_wire import raw_request

from tracker.proof.levels import Level

NAME, GOOD = build_archive(9500, compression="zst", seed=95)


def repr_digest(data: bytes) -> str:
    return "sha-256=:" + base64.b64encode(hashlib.sha256(data).digest()).decode() + ":"


async def test_a_bad_archive_never_reaches_the_bucket(weed: Weed, tmp_path: Path) -> None:
    prefix = f"v-{secrets.token_hex(4)}/"
    bad = bad_variants(NAME, GOOD)["flipped_byte"]
    async with (
        serving(FakeUpstream(files={NAME: bad})) as up,
        replica(weed, up, tmp_path, prefix) as t,
    ):
        first = await raw_request(t.base, f"/v1/{GROUP}/{NAME}", idle=1.0)
        # A broken body, or a 502 when the check failed before the head could go out.
        assert first.status == 502 or (first.closed and len(first.body) < len(GOOD))
        await wait_for(
            lambda: t.counter("snapshot_tracker_archives_rejected_total", group=GROUP) == 1
        )
        await idle(t)
        assert weed.objects(prefix) == {}  # neither the archive nor a digest object
        assert weed.uploads(prefix) == []  # the multipart upload was aborted
        assert t.counter("snapshot_tracker_object_uploads_total", outcome="ok") == 0


async def test_a_good_archive_is_completed_with_its_digest_known_to_every_replica(
    weed: Weed, tmp_path: Path
) -> None:
    prefix = f"v-{secrets.token_hex(4)}/"
    key = f"{prefix}{GROUP}/{NAME}"
    digest = hashlib.sha256(GOOD).hexdigest()
    async with serving(FakeUpstream(files={NAME: GOOD})) as up:
        async with replica(weed, up, tmp_path, prefix) as first:
            fill = await raw_request(first.base, f"/v1/{GROUP}/{NAME}")
            assert fill.status == 200 and fill.body == GOOD
            await wait_for(lambda: key in weed.objects(prefix), timeout=30)
            await idle(first)
            proven = first.parts.streamer.digests.verified(GROUP, NAME)
            assert proven is not None and proven.proof.level > Level.STRUCTURE
        objects = weed.objects(prefix)
        assert objects[key] == len(GOOD)
        # No other key ends in the name; no statement without attest.
        assert set(objects) == {key, key + ".sha256", key + ".proof"}
        s3 = weed.client()
        line = s3.get_object(Bucket=BUCKET, Key=key + ".sha256")["Body"].read().decode()
        assert line == f"{digest}  {NAME}\n"
        # Another replica, its own empty disk cache: HEAD from the object's metadata, a
        # Firedancer GET streamed from the bucket; both with the digest from the bucket.
        async with replica(weed, up, tmp_path, prefix) as second:
            head = await raw_request(second.base, f"/v1/{GROUP}/{NAME}", method="HEAD")
            assert head.status == 200 and head.header("repr-digest") == repr_digest(GOOD)
            streamed = await raw_request(
                second.base, f"/v1/{GROUP}/{NAME}", headers=[("user-agent", "Firedancer/0.1")]
            )
            assert streamed.status == 200 and streamed.body == GOOD
            assert streamed.header("repr-digest") == repr_digest(GOOD)
            line_answer = await raw_request(second.base, f"/v1/{GROUP}/{NAME}.sha256")
            assert line_answer.body.decode() == f"{digest}  {NAME}\n"
            # The proof of the first replica's check, from the bucket: the copy is proven.
            known = second.parts.streamer.digests.verified(GROUP, NAME)
            assert known is not None and known.proof == proven.proof
        assert len(up.gets(NAME)) == 1  # the second replica never asked the source


async def test_a_cache_copy_other_than_the_bucket_s_is_served_and_listed_alone(
    weed: Weed, tmp_path: Path
) -> None:
    """The bucket's object of a name became another replica's upload, other bytes of the
    same snapshot (another node's compression), while this replica's cache holds its own:
    the listing, ``.sha256`` and HEAD gave the cache's digest and a curl GET a 303 to the
    bucket's bytes, which ``sha256sum -c`` refused. Every route serves and lists the cache's
    copy now; the bucket's copy is read again (its own digest) for when the cache has none."""
    prefix = f"v-{secrets.token_hex(4)}/"
    key = f"{prefix}{GROUP}/{NAME}"
    curl = [("user-agent", "curl/8.5.0")]  # a client the bucket's 303 is for
    entries = snapshot_entries(9500, accounts=3, account_size=64 * 1024, seed=95)
    other = compress(make_tar(entries), "zst", pieces=2)
    assert other != GOOD
    good_line, other_line = (f"{hashlib.sha256(d).hexdigest()}  {NAME}\n" for d in (GOOD, other))
    async with (
        serving(FakeUpstream(files={NAME: GOOD})) as up,
        replica(weed, up, tmp_path, prefix) as t,
    ):
        objects = t.parts.objects
        assert objects is not None
        digests = t.parts.streamer.digests
        fill = await raw_request(t.base, f"/v1/{GROUP}/{NAME}", headers=curl)
        assert fill.status == 200 and fill.body == GOOD
        await wait_for(lambda: key in weed.objects(prefix), timeout=30)
        await idle(t)
        await objects.tier.retain(GROUP, full=True)  # the store's listing: the same object
        assert digests.of("bucket", GROUP, NAME) is not None
        # the same bytes in the bucket: a curl GET is sent there
        sent = await raw_request(t.base, f"/v1/{GROUP}/{NAME}", headers=curl)
        assert sent.status == 303
        s3 = weed.client()
        for side in (key, *(key + s for s in (".sha256", ".proof"))):
            s3.delete_object(Bucket=BUCKET, Key=side)  # the other replica's retention
        s3.put_object(Bucket=BUCKET, Key=key + ".sha256", Body=other_line.encode())
        s3.put_object(Bucket=BUCKET, Key=key, Body=other)  # its upload: digest first
        await objects.tier.retain(GROUP, full=True)  # the listing shows another object
        assert digests.of("bucket", GROUP, NAME) is None
        objects.tier.known.forget(key)  # (as KNOWN_FOR later)
        got = await raw_request(t.base, f"/v1/{GROUP}/{NAME}", headers=curl)
        assert got.status == 200 and got.body == GOOD
        line = await raw_request(t.base, f"/v1/{GROUP}/{NAME}.sha256")
        assert line.body.decode() == good_line
        head = await raw_request(t.base, f"/v1/{GROUP}/{NAME}", method="HEAD")
        assert head.header("repr-digest") == repr_digest(GOOD)
        listing = await raw_request(t.base, f"/v1/snapshots?group={GROUP}")
        listed = [f for s in json.loads(listing.body) for f in s["files"]]
        assert [f["sha256"] for f in listed if f["url"].endswith(NAME)] == [good_line[:64]]
        # the bucket's copy read again, its own digest held beside the cache's
        bucket_copy = digests.of("bucket", GROUP, NAME)
        assert bucket_copy is not None and bucket_copy.sha256 == other_line[:64]
