"""What the store answers, as values: objects and incomplete uploads, read from boto3's
answers (network input: a field missing or of the wrong type raises, and the bucket turns
that into a StoreError)."""

from __future__ import annotations

import email.utils
from datetime import UTC, datetime
from typing import Any

import attrs


@attrs.frozen
class ObjectInfo:
    """What the store says of one object."""

    key: str
    size: int
    etag: str
    last_modified: datetime
    metadata: dict[str, str] = attrs.Factory(dict)


@attrs.frozen
class UploadInfo:
    """An incomplete multipart upload."""

    key: str
    upload_id: str
    initiated: datetime


def aware(value: object) -> datetime:
    """A date of an answer (boto3 parses it), in UTC when the store gave no zone."""
    if not isinstance(value, datetime):
        raise TypeError(f"not a date: {type(value).__name__}")
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def listed(page: Any) -> list[ObjectInfo]:
    """The objects of one page of a listing."""
    return [
        ObjectInfo(
            key=str(item["Key"]),
            size=int(item["Size"]),
            etag=str(item.get("ETag", "")),
            last_modified=aware(item["LastModified"]),
        )
        for item in page.get("Contents", []) or []
    ]


def uploads(page: Any) -> list[UploadInfo]:
    """The incomplete uploads of one page of their listing."""
    return [
        UploadInfo(str(item["Key"]), str(item["UploadId"]), aware(item["Initiated"]))
        for item in page.get("Uploads", []) or []
    ]


def store_time(answer: Any) -> datetime:
    """The store's clock from an answer's ``Date`` header (ours when it has none)."""
    date = answer.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date", "")
    try:
        when = email.utils.parsedate_to_datetime(date) if date else datetime.now(UTC)
    except (TypeError, ValueError, OverflowError):
        return datetime.now(UTC)
    # A date whose zone is "-0000" (RFC 5322: unknown) parses naive; it can only be UTC, and
    # a naive time beside the store's aware ones would be a TypeError in every comparison.
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)
