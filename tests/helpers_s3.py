"""A real S3 server for the object-store tests (:mod:`bench.weed`) and the tests' settings."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.weed import ACCESS_KEY, BUCKET, SECRET_KEY, Weed, free_ports, start_weed, weed_binary

__all__ = [
    "ACCESS_KEY",
    "BUCKET",
    "SECRET_KEY",
    "Weed",
    "free_ports",
    "start_weed",
    "store_settings",
    "uploaded_parts",
    "volumes_away",
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


@contextmanager
def volumes_away(weed: Weed) -> Iterator[None]:
    """``weed`` restarted without the bucket's volume files, and on exit restarted with them.

    Meanwhile the store answers from its metadata (the bucket, HEAD of any object, writes of
    new objects) while a GET of an object stored before is answered 500 ("volume not
    found"): what SeaweedFS answers after a restart until its volume server has registered
    with the master again (seen for seconds after ``weed mini`` restarts), made to last.
    """
    data, aside = weed.root / "data", weed.root / "volumes-away"
    aside.mkdir(exist_ok=True)
    # Killed, not stopped: its data stays as a graceful stop leaves it (weed writes each
    # object before it answers), and a graceful stop takes it 2 s (bench/weed.py)
    weed.stop(graceful=False)
    moved = [Path(shutil.move(path, aside)) for path in data.glob(f"{BUCKET}_*")]
    assert moved, list(data.iterdir())
    weed.start()
    try:
        yield
    finally:
        weed.stop(graceful=False)
        for path in moved:
            shutil.move(path, data)
        weed.start()
