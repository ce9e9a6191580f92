"""Archive names for tests: valid, canonical, deterministic unless a hash is given."""

from __future__ import annotations

import hashlib
import os

import base58


def archive_hash(seed: int) -> str:
    """A valid base58 snapshot hash (32 bytes), the same for the same ``seed``."""
    return str(base58.b58encode(hashlib.sha256(str(seed).encode()).digest()).decode())


def new_hash() -> str:
    """A random valid snapshot hash."""
    return str(base58.b58encode(os.urandom(32)).decode())


def full_name(slot: int, hash_: str | None = None, ext: str = ".tar.zst") -> str:
    """A full snapshot archive name (its hash derived from ``slot`` unless given)."""
    return f"snapshot-{slot}-{hash_ or archive_hash(slot)}{ext}"


def incremental_name(base: int, slot: int, hash_: str | None = None, ext: str = ".tar.zst") -> str:
    """An incremental snapshot archive name (its hash derived from the slots unless given)."""
    return f"incremental-snapshot-{base}-{slot}-{hash_ or archive_hash(slot * 7 + base)}{ext}"
