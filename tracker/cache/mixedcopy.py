"""What vouches for every byte of a copy taken from several sources at once. Pure.

A copy from one source is that source's file: the checks judge it as a whole. A copy made
of several sources' pieces is a file no source may hold: a liar's pieces that keep the
archive well formed (a byte changed inside a stored zstd block decodes as well as the true
one) pass every check that does not read them. So such a copy counts as checked only once
every byte of it is vouched for as much as one source's copy would be (docs/architecture.md,
"The release rule"):

- its SHA-256 equals a digest the tracker trusts for the archive: one published by a
  known source (``trust.known_sources``) of the group, every known source that publishes
  one agreeing; or
- the level the check proves covers every byte: a full proven to ``accounts`` (each
  account storage adds up to the manifest's lattice hash, the manifest is the name's).

Where neither can be had (an incremental without a trusted digest: its level stops at
``manifest``), the refresh takes the file from one source (:func:`plan` says None).
"""

from __future__ import annotations

from collections.abc import Iterable, Set

import attrs

from tracker.core.digests import covers
from tracker.core.snapshots import is_known, parse_archive_name
from tracker.errors import ArchiveInvalid, CacheError
from tracker.proof.levels import Proof


@attrs.frozen
class Vouching:
    """What must vouch for a copy from several sources: ``sha256`` (hex), the digest its
    bytes must have (``source``: who publishes it), or, when "", the level its check
    proves (``accounts``, a full)."""

    sha256: str = ""
    source: str = ""

    @property
    def by_level(self) -> bool:
        """True when the level vouches, not a digest: the bytes it does not bind (every
        member but the account storages) must then be vouched for apart."""
        return not self.sha256

    def vouch(self, name: str, sha256: str, proof: Proof) -> None:
        """Return when the copy of ``name`` whose check gave ``sha256`` and ``proof`` is
        vouched for. Raises ArchiveInvalid when its digest is not the trusted one (some
        source's bytes are wrong: the caller compares the sources), CacheError when the
        level it counted on was not reached (no source is to blame: the copy is not
        kept)."""
        if self.sha256:
            if sha256 != self.sha256:
                raise ArchiveInvalid(
                    f"sha256 {sha256} of the copy from several sources is not {self.sha256}, "
                    f"the digest {self.source} publishes"
                )
            return
        if not covers(name, proof):
            why = f": {proof.note}" if proof.note else ""
            raise CacheError(
                f"the copy of {name} from several sources is proven to {proof.level.label}"
                f"{why}; without a trusted digest only accounts vouches for every byte"
            )


def trusted_digest(
    published: Iterable[tuple[str, str]], known_sources: Set[str]
) -> tuple[str, str]:
    """The digest the tracker trusts for an archive, and who publishes it, from each
    source's ``(target, published sha256 or "")``: the one known sources publish when
    they all agree; ``("", "")`` when none does, or they disagree."""
    digests = {
        (digest, target)
        for target, digest in published
        if digest and is_known(target, known_sources)
    }
    values = {digest for digest, _target in digests}
    if len(values) != 1:
        return "", ""
    digest = values.pop()
    return digest, min(target for value, target in digests if value == digest)


def plan(
    name: str, trusted: tuple[str, str], first_published: str, proves_accounts: bool
) -> Vouching | str:
    """How a copy of ``name`` from several sources would be vouched for (``trusted``: the
    trusted digest and who publishes it, :func:`trusted_digest`; ``first_published``: the
    digest the first source publishes, "" none; ``proves_accounts``: fulls are proven to
    ``accounts``), or, when nothing could, why it comes from its first source alone."""
    digest, source = trusted
    if digest and first_published and first_published != digest:
        return f"the first source publishes sha256 {first_published}, {source} {digest}"
    if digest:
        return Vouching(digest, source)
    parsed = parse_archive_name(name)
    if parsed is not None and parsed.is_full and proves_accounts:
        return Vouching()
    what = "a full not proven to accounts" if parsed is None or parsed.is_full else "an incremental"
    return f"{what} without a digest a known source publishes: no check vouches for every byte"
