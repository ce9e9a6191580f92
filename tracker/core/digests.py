"""SHA-256 digests of the archives the tracker holds verified, and their wire forms.

A digest is known once the tracker itself checked its copy of an archive (the disk cache's
file, or the bucket's object, docs/http-api.md "Verified archives"): it travels with the
bytes as the ``sha256`` key of the JSON, the ``.sha256`` routes and the ``repr-digest``
header. Archives of one slot and hash made by different nodes are not byte-identical, so a
digest belongs to the tracker's copy, not to the name: it is dropped when that copy goes.
"""

from __future__ import annotations

import base64
import re
from typing import TYPE_CHECKING, TypeGuard

import attrs

from tracker.core.snapshots import parse_archive_name
from tracker.proof.levels import STRUCTURE_ONLY, Level, Proof, shortfall

if TYPE_CHECKING:  # not at run time: an idle tracker never loads cryptography
    from tracker.proof.statements import Attestation

_HEX = re.compile(r"[0-9a-f]{64}")

#: The holders of local files start with this, their path after it
#: (:func:`tracker.proof.records.localcopies.holder`): each file is its own copy.
LOCAL = "local:"
#: The holder of the disk cache's copies, and the bucket's.
CACHE = "cache"
BUCKET = "bucket"


def is_sha256_hex(value: object) -> TypeGuard[str]:
    """True for a SHA-256 as the tracker writes it everywhere: 64 lower-case hex digits."""
    return isinstance(value, str) and _HEX.fullmatch(value) is not None


def sha256sum_line(hex_digest: str, name: str) -> str:
    """The ``sha256sum`` line of an archive (what ``sha256sum -c`` reads)."""
    return f"{hex_digest}  {name}\n"


def parse_sha256sum_line(text: str, name: str) -> str | None:
    """The digest of a ``sha256sum`` line for ``name``; None unless it is exactly that."""
    hex_digest, sep, rest = text.partition("  ")
    if not sep or rest != f"{name}\n" or not is_sha256_hex(hex_digest):
        return None
    return hex_digest


def repr_digest(hex_digest: str) -> str:
    """The RFC 9530 ``repr-digest`` field value of a SHA-256 given in hex."""
    raw = bytes.fromhex(hex_digest)
    return f"sha-256=:{base64.b64encode(raw).decode()}:"


def below_required(
    proof: Proof, required: Level, name: str, *, loadable_by: str | None = None
) -> str | None:
    """Why the archive ``name`` proven to ``proof`` is below ``required`` (a group's
    ``trust.require``, ``fetch --require``; an incremental needs ``manifest`` where a full
    needs ``accounts``) or one its validators cannot load (``trust.loadable_by``), None when
    it reaches it (:func:`tracker.proof.levels.shortfall`)."""
    parsed = parse_archive_name(name)
    full = parsed is None or parsed.is_full
    return shortfall(proof, required, is_full=full, loadable_by=loadable_by)


def covers(name: str, proof: Proof) -> bool:
    """True when ``proof`` vouches for every byte of a copy of ``name`` made of several
    sources' pieces as much as one source's copy would be: a full proven to ``accounts`` or
    more (docs/architecture.md, "The release rule")."""
    parsed = parse_archive_name(name)
    return parsed is not None and parsed.is_full and proof.level >= Level.ACCOUNTS


@attrs.frozen
class Verified:
    """What the check said of one held copy: its SHA-256 (hex), what it proved, its size
    (0: not known) and when this tracker's check of it ended (seconds since the epoch; None:
    this tracker did not check it, e.g. a bucket copy another replica checked). A copy with
    both is one this tracker signs a statement of (docs/http-api.md, "Signed statements");
    ``attestation`` is the statement the replica that checked a bucket copy left beside it,
    verified when read (None: none, or one that was refused)."""

    sha256: str
    proof: Proof = STRUCTURE_ONLY
    size: int = 0
    checked_at: float | None = None
    attestation: Attestation | None = None


class Digests:
    """The digest of each archive the tracker holds verified, and what its check proved
    (docs/architecture.md, "Proven archives"), by (group, name).

    Each holder of copies (``"cache"``, ``"bucket"``, each local file) puts and drops its
    own: a copy gone from the disk cache still has its digest while the bucket holds it.
    ``version`` changes with every change, so that renderings kept across requests (the
    JSON listings) know when to render again.
    """

    def __init__(self) -> None:
        self._known: dict[tuple[str, str], dict[str, Verified]] = {}
        self.version = 0

    def get(self, group: str, name: str) -> str | None:
        """The lower-case hex SHA-256 of ``name`` of ``group``, if held verified."""
        held = self.verified(group, name)
        return held.sha256 if held is not None else None

    def verified(self, group: str, name: str) -> Verified | None:
        """What the check said of the held copy of ``name`` of ``group`` (the best proven,
        when several holders have one)."""
        held = self._known.get((group, name))
        if not held:
            return None
        return max(held.values(), key=lambda v: v.proof.level)

    def served(self, group: str, name: str) -> Verified | None:
        """The copy of ``name`` of ``group`` the archive's route serves when no local file
        of it is served: the disk cache's when it holds one, else the bucket's (the route
        sends no client to a bucket copy of other bytes than the cache's: docs/http-api.md,
        "Verified archives"), with the best proof held of those same bytes. None: neither
        holds one."""
        held = self._known.get((group, name), {})
        first = held.get(CACHE) or held.get(BUCKET)
        if first is None:
            return None
        same = [v for h, v in held.items() if h in (CACHE, BUCKET) and v.sha256 == first.sha256]
        return max(same, key=lambda v: v.proof.level)

    def of(self, holder: str, group: str, name: str) -> Verified | None:
        """What the check said of ``holder``'s copy of ``name`` of ``group``, if held."""
        return self._known.get((group, name), {}).get(holder)

    def put(
        self,
        holder: str,
        group: str,
        name: str,
        hex_digest: str,
        proof: Proof = STRUCTURE_ONLY,
    ) -> None:
        """Record the digest of ``holder``'s verified copy of ``name``, and its proof; a new
        proof of the same copy (say, lifted to ``cluster``) keeps what else is known of it."""
        known = self._known.get((group, name), {}).get(holder)
        if known is not None and known.sha256 == hex_digest:
            value = attrs.evolve(known, proof=proof)
        else:
            value = Verified(hex_digest, proof)
        self.hold(holder, group, name, value)

    def hold(self, holder: str, group: str, name: str, value: Verified) -> None:
        """Record what the check said of ``holder``'s copy of ``name`` of ``group``."""
        held = self._known.setdefault((group, name), {})
        if held.get(holder) != value:
            held[holder] = value
            self.version += 1

    def copies(self, group: str, name: str) -> list[Verified]:
        """What the check said of each held copy of ``name`` of ``group``."""
        return list(self._known.get((group, name), {}).values())

    def held(self) -> list[tuple[str, str, str, Verified]]:
        """Every held copy: (group, name, holder, what its check said)."""
        return [
            (group, name, holder, value)
            for (group, name), held in self._known.items()
            for holder, value in held.items()
        ]

    def drop(self, holder: str, group: str, name: str) -> None:
        """Forget ``holder``'s copy of ``name`` (it is gone)."""
        held = self._known.get((group, name))
        if held is not None and held.pop(holder, None) is not None:
            self.version += 1
            if not held:
                del self._known[(group, name)]
