"""The proof of an archive from its head: redirect mode's bounded read (docs/architecture.md,
"Proven archives").

agave writes the manifest before the account storages, so the first bytes of an archive
prove it to ``manifest``: :func:`prove_head` runs the archive check over at most ``limit``
raw bytes (``manifest_read``) and stops once the manifest's decoder read every field it
knows. An archive whose manifest does not end within ``limit`` bytes stays at ``structure``
with a note saying so; one that fails the check or its proof before that is refused
(ArchiveInvalid), as a full check would.
"""

from __future__ import annotations

from collections.abc import Callable

from tracker.core.snapshots import parse_archive_name
from tracker.errors import ArchiveInvalid
from tracker.proof.archive.archivecheck import check_stream
from tracker.proof.archive.checklimits import CANCELLED
from tracker.proof.formats.prover import ArchiveProver
from tracker.proof.levels import Level, Proof


def prove_head(read: Callable[[int], bytes], name: str, limit: int) -> Proof:
    """The proof of the archive ``name`` from at most ``limit`` of the raw bytes ``read(n)``
    returns; ArchiveInvalid when the head shows it bad."""
    parsed = parse_archive_name(name)
    if parsed is None:
        raise ArchiveInvalid(f"not a snapshot archive name: {name!r}")
    prover = ArchiveProver(parsed.slot, parsed.base_slot, parsed.hash)
    taken = 0

    def bounded(count: int) -> bytes:
        nonlocal taken
        if taken >= limit:
            return b""
        data = read(min(count, limit - taken))
        taken += len(data)
        return data

    try:
        return check_stream(
            bounded, name, prefetch=False, cancelled=lambda: prover.manifest_done, prover=prover
        ).proof
    except ArchiveInvalid as exc:
        if prover.manifest_done:  # stopped there on purpose (or failed after it: not seen)
            return prover.proof()
        if taken >= limit and exc.reason != CANCELLED:
            return Proof(
                Level.STRUCTURE,
                note=f"its manifest does not end within the first {limit} bytes (manifest_read)",
            )
        raise
