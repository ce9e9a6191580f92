"""The bytes tests serve and compare: seeded random payloads and their SHA-256."""

from __future__ import annotations

import hashlib
import random

MiB = 1024 * 1024


def archive_bytes(size: int, seed: int = 0) -> bytes:
    """``size`` random bytes, the same for the same ``seed`` (an opaque archive body)."""
    return random.Random(seed).randbytes(size)


def sha256(data: bytes) -> str:
    """The hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()
