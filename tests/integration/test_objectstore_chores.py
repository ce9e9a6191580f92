"""What the bucket's housekeeping costs a tracker over a real SeaweedFS bucket
(docs/replicas.md): housekeeping calls that an operator's bucket policy denies each cost
that housekeeping, never the store."""

from __future__ import annotations

import json
import secrets
from pathlib import Path

import httpx
import pytest
import trio
from helpers_bucket import bucket_tracker
from helpers_bytes import MiB, archive_bytes
from helpers_proxy import GROUP, wait_for
from helpers_s3 import Weed
from helpers_tls import client_tls
from helpers_upstream import FakeUpstream
from names import full_name

FULL = full_name(9000)
NEWER = full_name(9500)
FULL_DATA = archive_bytes(MiB + 4321, seed=95)

#: What the ``upstream`` fixture (tests/integration/conftest.py) serves.
UPSTREAM_FILES = {FULL: FULL_DATA}
#: ``direct_serve_ttl`` of the tests whose URLs must expire.
TTL = 3.0


def deny(weed: Weed, bucket: str, prefix: str) -> None:
    """A bucket policy over ``bucket`` (created here) that allows everything but two
    housekeeping calls: the listing of incomplete uploads, and deleting hand-out marks."""
    s3 = weed.client()
    s3.create_bucket(Bucket=bucket)
    arn = f"arn:aws:s3:::{bucket}"
    statements = [
        {"Effect": "Allow", "Principal": "*", "Action": "s3:*", "Resource": [arn, f"{arn}/*"]},
        {
            "Effect": "Deny",
            "Principal": "*",
            "Action": "s3:ListBucketMultipartUploads",
            "Resource": arn,
        },
        {
            "Effect": "Deny",
            "Principal": "*",
            "Action": "s3:DeleteObject",
            "Resource": f"{arn}/{prefix}.handed/*",
        },
    ]
    s3.put_bucket_policy(
        Bucket=bucket, Policy=json.dumps({"Version": "2012-10-17", "Statement": statements})
    )


@pytest.mark.usefixtures("quick_handout_margin")
async def test_a_denied_housekeeping_call_costs_that_housekeeping_not_the_store(
    weed: Weed, upstream: FakeUpstream, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An operator's bucket policy denies listing incomplete uploads (the clean-up after
    each upload) and deleting hand-out marks (retention's, after the archive): the store
    stays up, URLs are handed out, and retention deletes what it retires; each refusal is
    logged once."""
    from tracker.objectstore.retainer import HANDOUT_MARGIN

    bucket = f"denied-{secrets.token_hex(4)}"
    prefix = f"t-{secrets.token_hex(4)}/"
    deny(weed, bucket, prefix)
    s3 = weed.client()

    def listed() -> set[str]:
        page = s3.list_objects_v2(Bucket=bucket, Prefix=prefix)
        return {o["Key"] for o in page.get("Contents", [])}

    settings = {"bucket": bucket, "prefix": prefix, "keep_previous": 0, "direct_serve_ttl": TTL}
    async with bucket_tracker(weed, upstream, tmp_path, **settings) as t:
        objects = t.parts.objects
        assert objects is not None
        tier = objects.tier
        async with httpx.AsyncClient(verify=client_tls(), timeout=60) as client:
            assert (await client.get(t.url(FULL))).content == FULL_DATA
            await wait_for(lambda: f"{prefix}{GROUP}/{FULL}" in listed(), timeout=30)
            await wait_for(lambda: tier.uploads_running == 0, timeout=30)
            # the upload's clean-up asked for the incomplete uploads: denied
            handed = await client.get(t.url(FULL))
            assert handed.status_code == 303, handed.status_code
            assert (await client.get(handed.headers["location"])).content == FULL_DATA
            # retention of FULL (handed out: a mark to delete after it, denied)
            s3.put_object(Bucket=bucket, Key=f"{prefix}{GROUP}/{NEWER}", Body=b"newer")
            await trio.sleep(TTL + HANDOUT_MARGIN + 1)  # the URL expired: retention may retire
            await tier.retain(GROUP, full=True)
        assert f"{prefix}{GROUP}/{FULL}" not in listed()
        assert tier.bucket.health.up and tier.bucket.health.last_error == "", (
            tier.bucket.health.last_error
        )
        assert f"{prefix}.handed/{GROUP}/{FULL}.handed" in listed()  # the policy's to keep
        denied = [r for r in caplog.records if r.getMessage() == "object_store_call_denied"]
        # once each: the listing of uploads, the deletes (a retiring mark at the upload's
        # retention, FULL's marks at the last)
        assert len(denied) == 2, denied
