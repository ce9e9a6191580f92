"""Where the tier's objects live in the bucket, and which keys are archives (pure).

For the archive ``name`` of ``group`` under ``prefix``:

- the archive: ``{prefix}{group}/{name}``;
- its digest: ``{prefix}{group}/{name}.sha256``, the proof of the check that made it
  ``{name}.proof`` and the statement the uploading replica signed of it ``{name}.attestation``
  (all three written before the upload completes: :mod:`~tracker.objectstore.sides`);
- its refresh lock: ``{prefix}.locks/{group}/{name}.lock``
  (:mod:`~tracker.objectstore.locks`);
- the mark of its last hand-out: ``{prefix}.handed/{group}/{name}.handed``, and once
  retention is deleting it, ``{prefix}.handed/{group}/{name}.retiring`` (no URL of it is
  handed out any more: :mod:`~tracker.objectstore.retainer`).

No key but the archive's own ends in the archive's name, so a listing or a mirror of the
bucket never shows a 34-byte lock or an empty mark as a "snapshot", and every listing the
tier makes keeps only canonical archive keys (:func:`archive_of`): digests, locks, marks and
anything else someone put there are not archives. Locks and marks of older versions had no
suffix (:func:`legacy_kind`); start-up deletes those that expired.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

from tracker.config.values import group_name
from tracker.core.snapshots import parse_archive_name

LOCKS = ".locks/"
MARKS = ".handed/"
LOCK_SUFFIX = ".lock"
MARK_SUFFIX = ".handed"
RETIRING_SUFFIX = ".retiring"
DIGEST_SUFFIX = ".sha256"
PROOF_SUFFIX = ".proof"
ATTESTATION_SUFFIX = ".attestation"
#: The objects kept beside an archive (its key and one of these), gone with it.
SIDE_SUFFIXES = (PROOF_SUFFIX, ATTESTATION_SUFFIX, DIGEST_SUFFIX)
_LEGACY: tuple[tuple[str, Literal["lock", "mark"]], ...] = ((LOCKS, "lock"), (MARKS, "mark"))


def archive_key(prefix: str, group: str, name: str) -> str:
    """The key of archive ``name`` of ``group``."""
    return f"{prefix}{group}/{name}"


def digest_key(prefix: str, group: str, name: str) -> str:
    """The key of the archive's SHA-256 digest object."""
    return f"{prefix}{group}/{name}{DIGEST_SUFFIX}"


def side_keys(prefix: str, group: str, name: str) -> list[str]:
    """The keys of the objects kept beside the archive: its proof, statement and digest."""
    return [f"{prefix}{group}/{name}{suffix}" for suffix in SIDE_SUFFIXES]


def lock_key(prefix: str, group: str, name: str) -> str:
    """The key of the archive's refresh lock."""
    return f"{prefix}{LOCKS}{group}/{name}{LOCK_SUFFIX}"


def mark_key(prefix: str, group: str, name: str) -> str:
    """The key of the mark of the archive's last hand-out."""
    return f"{prefix}{MARKS}{group}/{name}{MARK_SUFFIX}"


def retiring_key(prefix: str, group: str, name: str) -> str:
    """The key that says retention is deleting the archive: no URL of it is handed out."""
    return f"{prefix}{MARKS}{group}/{name}{RETIRING_SUFFIX}"


def legacy_mark_key(prefix: str, group: str, name: str) -> str:
    """Where an older version put the mark (no suffix): read and deleted, never written."""
    return f"{prefix}{MARKS}{group}/{name}"


class Archive(NamedTuple):
    """What an archive's key names."""

    group: str
    name: str
    full: bool


def archive_of(prefix: str, key: str) -> Archive | None:
    """The archive ``key`` is the key of, under ``prefix``: a valid group name, then a
    canonical archive name (as :func:`~tracker.core.snapshots.parse_archive_name` renders
    it); None for any other key."""
    if not key.startswith(prefix):
        return None
    group, slash, name = key[len(prefix) :].partition("/")
    if not slash or not _is_group(group):
        return None
    parsed = parse_archive_name(name)
    if parsed is None or parsed.file_name != name:
        return None
    return Archive(group, name, parsed.is_full)


def side_of(prefix: str, key: str) -> Archive | None:
    """The archive ``key`` is a side object of (the archive's key and one of
    :data:`SIDE_SUFFIXES`), whether or not that archive is there; None for any other key."""
    for suffix in SIDE_SUFFIXES:
        if key.endswith(suffix):
            return archive_of(prefix, key.removesuffix(suffix))
    return None


def legacy_kind(prefix: str, key: str) -> Literal["lock", "mark"] | None:
    """``"lock"`` or ``"mark"`` for a lock or mark key of an older version, which ends in
    the archive's name; None for any other key."""
    for folder, kind in _LEGACY:
        if key.startswith(prefix + folder):
            inner = prefix + key[len(prefix) + len(folder) :]
            return kind if archive_of(prefix, inner) is not None else None
    return None


def _is_group(text: str) -> bool:
    try:
        group_name(text)
    except ValueError:
        return False
    return True
