"""A small writer of agave account storages: the writer for examples, tests and the bench. Pure.

:func:`write_storage` lays accounts out as agave's append vec does (the format is in
:mod:`tracker.proof.storages`): each record at a multiple of 8, the obsolete hash zeroed. The
result's length is the storage's ``accounts_current_len`` (the last record's data ends there,
unpadded); a file with spare capacity after it is ``write_storage(...).ljust(size, b"\\0")``.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

import attrs

from tracker.proof.storages import aligned

_HEAD = struct.Struct("<QQ32sQQ32sB7x32x")


@attrs.frozen
class Account:
    """One stored version of an account."""

    pubkey: bytes
    lamports: int
    data: bytes = b""
    owner: bytes = bytes(32)
    executable: bool = False
    rent_epoch: int = 0
    write_version: int = 0


def write_storage(accounts: Iterable[Account]) -> bytes:
    """The bytes of a storage holding ``accounts`` in order (its ``accounts_current_len`` is
    the length of the result)."""
    out = bytearray()
    for account in accounts:
        out += bytes(aligned(len(out)) - len(out))
        out += _HEAD.pack(
            account.write_version,
            len(account.data),
            account.pubkey,
            account.lamports,
            account.rent_epoch,
            account.owner,
            1 if account.executable else 0,
        )
        out += account.data
    return bytes(out)
