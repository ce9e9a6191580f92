"""The statements the daemon signs of the copies it holds, and those it serves
(docs/http-api.md, "Signed statements"). No I/O: the key and the time are passed in.

With ``attest`` configured, every copy :class:`~tracker.core.digests.Digests` holds that this
tracker checked itself and whose size it knows (:func:`tracker.proof.records.attesting.held_copy`:
the disk cache's files, the bucket copies it uploaded or took over after a restart) has a
statement signed with ``attest.key``, signed again when
:func:`tracker.proof.records.attesting.due` says so (half its ``valid_for`` passed, or the
copy's proof changed). :meth:`Attestations.sync` does it on the request path, and does
nothing unless the digests changed or a statement came due: the JSON listings call it
before they look at :attr:`Attestations.version`. Served beside them are the documents other
replicas left in the bucket (``Verified.attestation``, checked when read by
:mod:`tracker.objectstore.sides`).

Nothing here imports :mod:`tracker.proof.statements` (and so cryptography) unless a key is
configured: an idle tracker never loads it.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from tracker.core.digests import BUCKET, Digests, Verified

if TYPE_CHECKING:
    from tracker.proof.statements import Attestation, Signer


class Attestations:
    """The statements this tracker signed of the copies in ``digests``, by (group, name,
    holder), and the documents it serves of an archive."""

    def __init__(self, digests: Digests) -> None:
        self._digests = digests
        self._signer: Signer | None = None
        self._valid_for = 0.0
        self._own: dict[tuple[str, str, str], Attestation] = {}
        #: The holders of ``_own``'s statements, by (group, name).
        self._holders: dict[tuple[str, str], list[str]] = {}
        #: ``digests.version`` when :meth:`sync` last looked, and when a statement comes due.
        self._seen = -1
        self._next = math.inf
        #: The time of the last :meth:`sync`: statements of the bucket expired by then are
        #: not served.
        self._now = 0.0
        #: Changes with every statement signed or dropped (the listings render again).
        self.version = 0
        #: The last statement this tracker signed: when (seconds since the epoch), of which
        #: archive (group, name); None when it signed none since it started (or since the
        #: key changed).
        self.last_signed: tuple[float, str, str] | None = None
        #: When the key in use was loaded (seconds since the epoch; None: nothing is signed).
        self.since: float | None = None

    @property
    def public_key(self) -> str | None:
        """The signing key's public half (base58), None when nothing is signed."""
        return self._signer.public_key if self._signer is not None else None

    def configure(self, signer: Signer | None, valid_for: float, now: float = 0.0) -> None:
        """Sign with ``signer`` (None: sign nothing) for ``valid_for`` seconds: at start and
        on every reload (``now``: seconds since the epoch, when the key is loaded). Another
        key or validity drops what was signed; it is signed again at the next :meth:`sync`."""
        key = signer.public_key if signer else None
        if self.public_key == key and valid_for == self._valid_for:
            return
        if self.public_key != key:  # what the card says is this key's (since, last signed)
            self.since = now if signer is not None else None
            self.last_signed = None
        self._signer, self._valid_for = signer, valid_for
        if self._own:
            self._keep({})
            self.version += 1
        self._seen = -1

    def sync(self, now: float) -> None:
        """Sign what is due at ``now`` (seconds since the epoch), forget statements of copies
        no longer held, stop serving the bucket's statements that expired. Cheap when
        nothing changed."""
        if self._digests.version == self._seen and now < self._next:
            return
        held = self._digests.held()
        kept = self._signed(held, now) if self._signer is not None else {}
        changed = kept != self._own or now >= self._next
        self._keep(kept)
        self._seen, self._now = self._digests.version, now
        halves = [a.statement.expires - self._valid_for / 2 for a in kept.values()]
        ends = [v.attestation.statement.expires for *_k, v in held if v.attestation is not None]
        self._next = min((t for t in halves + ends if t > now), default=math.inf)
        if changed:
            self.version += 1

    def _signed(
        self, held: list[tuple[str, str, str, Verified]], now: float
    ) -> dict[tuple[str, str, str], Attestation]:
        """This tracker's statement of each copy in ``held`` it may sign, signed when due."""
        from tracker.proof.records.attesting import due, held_copy, statement_of

        signer, valid_for = self._signer, self._valid_for
        assert signer is not None
        kept: dict[tuple[str, str, str], Attestation] = {}
        for group, name, holder, verified in held:
            copy = held_copy(name, verified)
            if copy is None:
                continue
            wanted = statement_of(copy, now, valid_for)
            signed = self._own.get((group, name, holder))
            ahead = copy.checked_at > now  # the clock went back since the check
            if signed is None or due(signed.statement, wanted, now, valid_for, ahead=ahead):
                signed = signer.sign(wanted)
                self.last_signed = (now, group, name)
            kept[(group, name, holder)] = signed
        return kept

    def sign(self, group: str, name: str, verified: Verified, now: float) -> Attestation | None:
        """The statement of a bucket copy being uploaded (written beside it), kept as that
        copy's own until it is due; None when nothing is signed or it cannot be."""
        from tracker.proof.records.attesting import held_copy, statement_of

        copy = held_copy(name, verified)
        if self._signer is None or copy is None:
            return None
        signed = self._signer.sign(statement_of(copy, now, self._valid_for))
        self.last_signed = (now, group, name)
        self._keep({**self._own, (group, name, BUCKET): signed})
        return signed

    @property
    def held(self) -> int:
        """How many statements of its own this tracker holds (as of the last :meth:`sync`)."""
        return len(self._own)

    @property
    def valid_for(self) -> float:
        """How long each statement holds (seconds; 0 when nothing is signed)."""
        return self._valid_for if self._signer is not None else 0.0

    def forget(self, group: str, name: str, holder: str) -> None:
        """Drop the statement signed of a copy that never came to be (a failed upload)."""
        own = dict(self._own)
        if own.pop((group, name, holder), None) is not None:
            self._keep(own)

    def uploaded(self) -> list[tuple[str, str, Attestation]]:
        """This tracker's statement of each bucket copy it uploaded: (group, name, it)."""
        return [(g, n, a) for (g, n, holder), a in self._own.items() if holder == BUCKET]

    def documents(self, group: str, name: str) -> list[Attestation]:
        """The documents served of ``name`` of ``group`` as of the last :meth:`sync`: this
        tracker's own (the best proven first), then each other replica's left in the bucket
        that has not expired; each once."""
        own = [self._own[(group, name, holder)] for holder in self._holders.get((group, name), ())]
        own.sort(key=lambda a: a.statement.level, reverse=True)
        held = self._digests.copies(group, name)
        peers = [
            v.attestation
            for v in held
            if v.attestation is not None and v.attestation.statement.expires > self._now
        ]
        found: list[Attestation] = []
        for attestation in own + peers:
            if attestation not in found:
                found.append(attestation)
        return found

    def documents_json(self, group: str, name: str, sha256: str) -> list[dict[str, str]]:
        """:meth:`documents` of the copy of digest ``sha256`` (the one listed: never a
        statement of other bytes of the name), as the JSON listings carry them
        (``attestations``)."""
        return [a.to_json() for a in self.documents(group, name) if a.statement.sha256 == sha256]

    def _keep(self, own: dict[tuple[str, str, str], Attestation]) -> None:
        self._own = own
        self._holders = {}
        for group, name, holder in own:
            self._holders.setdefault((group, name), []).append(holder)
