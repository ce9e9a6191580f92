"""A real S3 server for the object-store tests (:mod:`bench.weed`) and the tests' settings."""

from __future__ import annotations

import os
import sys
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.weed import (
    ACCESS_KEY,
    BUCKET,
    SECRET_KEY,
    Weed,
    free_ports,
    start_weed,
    weed_binary,
)

__all__ = [
    "ACCESS_KEY",
    "BUCKET",
    "SECRET_KEY",
    "Weed",
    "free_ports",
    "start_weed",
    "store_settings",
    "uploaded_parts",
    "weed_binary",
]


def store_settings(weed: Weed, prefix: str, **overrides: Any) -> dict[str, Any]:
    """The ``object_store`` mapping of a config file for ``weed``."""
    settings: dict[str, Any] = {
        "endpoint": weed.endpoint,
        "bucket": BUCKET,
        "prefix": prefix,
        "access_key_id": ACCESS_KEY,
        "secret_access_key": SECRET_KEY,
    }
    settings.update(overrides)
    return settings


def uploaded_parts(weed: Weed, prefix: str) -> int:
    """Parts uploaded so far to the incomplete multipart uploads under ``prefix``."""
    s3 = weed.client()
    page = s3.list_multipart_uploads(Bucket=BUCKET, Prefix=prefix)
    count = 0
    for upload in page.get("Uploads", []) or []:
        listed = s3.list_parts(Bucket=BUCKET, Key=upload["Key"], UploadId=upload["UploadId"])
        count += len(listed.get("Parts", []) or [])
    return count
