"""The objects kept beside an archive in the bucket (docs/http-api.md#with-an-object-store-
object_store): what the check of the uploading replica said of it, written before the
upload completes, and read back by every replica.

- ``{key}.proof``: the proof of the check that made the digest (the JSON of
  :meth:`tracker.proof.levels.Proof.to_json`: level, snapshot and bank hashes, note), at most
  :data:`MAX_PROOF` bytes;
- ``{key}.attestation``: the statement the uploading replica signed of that object
  (docs/http-api.md, "Signed statements"), when it signs (``attest``);
- ``{key}.sha256``: the digest line, written last: a replica that reads a digest finds the
  others written.

Everything read back is network input: each read is bounded (one byte over its bound is
read, so that an oversized object is known as one); a proof object that is malformed or over
its bound counts as none (the copy is unproven, ``structure`` only), a document that is not
a valid, unexpired statement of exactly that object (its name, size and SHA-256) is refused:
one line in the log each, ``on_refused(kind)`` told, nothing served.

The uploading replica writes its statement again when it signs it again (half its
``valid_for`` passed, or the copy's proof changed: :func:`restate`), so that the others find
one that holds, unless the one there already says as much for as long (another replica of
its key renewed it), and only over the one it read there (a conditional write). A replica
that restarted has forgotten which objects were its uploads: it takes over renewing a
statement of its own key nobody renews once it holds its own check of those bytes
(:meth:`tracker.objectstore.tier.ObjectTier.take_over`, reading the one there with
:func:`statement_there`). The others read it again in the background once the one they
serve is past half its life (:func:`reread`, from the health watcher's loop, at most once
a second per object), and serve the new one when it is valid and expires later, the old one
until it expires otherwise; and they read it again at their next look at the object after
it expired, or, when it was refused for being checked ahead of their clock (the uploader's
runs ahead), once their clock reached it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

import attrs

from tracker.core.digests import (
    BUCKET,
    Digests,
    Verified,
    parse_sha256sum_line,
    sha256sum_line,
)
from tracker.errors import StatementInvalid, StoreConflict
from tracker.objectstore.keys import (
    ATTESTATION_SUFFIX,
    DIGEST_SUFFIX,
    PROOF_SUFFIX,
    archive_key,
)
from tracker.objectstore.known import same_version
from tracker.observability.logs import log_event
from tracker.proof.levels import STRUCTURE_ONLY, Proof
from tracker.proof.records.attestations import Attestations

if TYPE_CHECKING:
    from tracker.objectstore.bucket import Bucket
    from tracker.proof.statements import Attestation

log = logging.getLogger("tracker.objectstore")

#: The largest proof object taken (a real one is under 300 bytes).
MAX_PROOF = 4096
#: The largest statement document taken (:data:`tracker.proof.statements.MAX_DOCUMENT`, not
#: imported: that module loads cryptography).
MAX_DOCUMENT = 16 * 1024
#: The largest digest object read (one ``sha256sum`` line).
MAX_DIGEST = 4096


def side_objects(key: str, checked: Verified, document: bytes | None) -> list[tuple[str, bytes]]:
    """The objects written beside the archive at ``key`` before its upload completes, in
    order (the digest last), for what its check said (``checked``) and the statement signed
    of it (``document``; None: none)."""
    name = key.rsplit("/", 1)[-1]
    proof = json.dumps(checked.proof.to_json(), sort_keys=True).encode() + b"\n"
    objects = [(key + PROOF_SUFFIX, proof)]
    if document is not None:
        objects.append((key + ATTESTATION_SUFFIX, document))
    objects.append((key + DIGEST_SUFFIX, sha256sum_line(checked.sha256, name).encode()))
    return objects


def proof_of(raw: bytes | None) -> tuple[Proof | None, str]:
    """The proof a proof object holds, or None and why not ("" when there is none)."""
    if raw is None:
        return None, ""
    if len(raw) > MAX_PROOF:
        return None, f"over {MAX_PROOF} bytes"
    try:
        proof = Proof.from_json(json.loads(raw))
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        proof = None
    return (proof, "") if proof is not None else (None, "not a proof")


async def read_copy(
    bucket: Bucket,
    key: str,
    size: int,
    now: float,
    on_refused: Callable[[str], None],
    ahead: Callable[[float], None] | None = None,
) -> Verified | None:
    """What the bucket says of the ``size``-byte object at ``key`` (its digest, the proof
    and statement beside it; ``now``: seconds since the epoch, for the statement's expiry);
    None when it has no digest. ``ahead`` is told when a statement refused for being checked
    ahead of this clock may be taken (seconds since the epoch). Raises StoreError when the
    store failed."""
    name = key.rsplit("/", 1)[-1]
    text = await bucket.get_small(key + DIGEST_SUFFIX, MAX_DIGEST)
    hex_digest = parse_sha256sum_line(text.decode("utf-8", "replace"), name) if text else None
    if hex_digest is None:
        return None
    proof, why = proof_of(await bucket.get_small(key + PROOF_SUFFIX, MAX_PROOF + 1))
    if why:
        on_refused("proof")
        log_event(log, "warning", "bucket_proof_refused", key=key, reason=why)
    attestation = await _statement(bucket, key, (size, hex_digest), now, on_refused, ahead)
    return Verified(hex_digest, proof or STRUCTURE_ONLY, size=size, attestation=attestation)


async def _statement(
    bucket: Bucket,
    key: str,
    copy: tuple[int, str],
    now: float,
    on_refused: Callable[[str], None],
    ahead: Callable[[float], None] | None = None,
) -> Attestation | None:
    """The statement beside the object at ``key`` (of ``copy``: its size and hex SHA-256)
    when it is a valid, unexpired statement of exactly that object; None when there is none
    or it is refused (logged, ``on_refused`` told; ``ahead`` told when time alone makes it
    acceptable). Raises StoreError when the store failed."""
    raw = await bucket.get_small(key + ATTESTATION_SUFFIX, MAX_DOCUMENT + 1)
    if raw is None:
        return None
    # Imported where a document is read: a tracker that reads none never loads cryptography.
    from tracker.proof.records.attesting import of_copy

    try:
        return of_copy(raw, key.rsplit("/", 1)[-1], copy[0], copy[1], now)
    except StatementInvalid as exc:
        on_refused("attestation")
        log_event(log, "warning", "bucket_attestation_refused", key=key, reason=str(exc))
        if ahead is not None and exc.valid_from is not None:
            ahead(exc.valid_from)
        return None


async def statement_there(
    bucket: Bucket, key: str, copy: tuple[int, str]
) -> tuple[Attestation | None, str | None]:
    """The document beside the object at ``key`` when its signature is valid and it names
    exactly that object (``copy``: its size and hex SHA-256), whatever its times say (None:
    none there, or one that does not; not logged, the reads of :func:`read_copy` and
    :func:`reread` tell), and the ETag of the statement object (None: there is none).
    Raises StoreError when the store failed."""
    got = await bucket.get_small_tagged(key + ATTESTATION_SUFFIX, MAX_DOCUMENT + 1)
    if got is None:
        return None, None
    raw, etag = got
    # Imported where a document is read: a tracker that reads none never loads cryptography.
    from tracker.proof.records.attesting import naming

    try:
        return naming(raw, key.rsplit("/", 1)[-1], copy[0], copy[1]), etag
    except StatementInvalid:
        return None, etag


#: What :func:`reread` knows of each statement served of a bucket copy, by archive key: the
#: statement, when it was taken, when its object was last read (seconds since the epoch).
Reads = dict[str, tuple["Attestation | None", float, float]]
#: How often the statement object beside a bucket copy that serves none is read again
#: (seconds): one refused as expired, or none there, when this replica read it (its
#: uploader down past its ``valid_for``) is written again once that replica is back.
LOOK_AGAIN_EVERY = 60.0


async def reread(
    bucket: Bucket,
    prefix: str,
    digests: Digests,
    reads: Reads,
    now: float,
    on_refused: Callable[[str], None],
) -> None:
    """Read again the statement object beside each bucket copy under ``prefix`` whose
    statement, read there, came due (:func:`~tracker.proof.records.attesting.reread_due`), and serve
    the one :func:`~tracker.proof.records.attesting.to_serve` chooses (held in ``digests``);
    beside a copy that serves none, every :data:`LOOK_AGAIN_EVERY` (one read expired, or
    none there, stayed so on this replica for as long as the object did: its statement
    renewed by its uploader back from a long stop was never served here). ``reads`` is kept
    current. A refused document is logged and counted as at start-up; the old statement
    stays served. Raises StoreError when the store failed."""
    served = {
        archive_key(prefix, group, name): (group, name, copy)
        for group, name, holder, copy in digests.held()
        if holder == BUCKET
    }
    for key in [key for key in reads if key not in served]:
        del reads[key]
    for key, (group, name, copy) in served.items():
        held = copy.attestation
        known = reads.get(key)
        if known is None or known[0] != held:
            known = reads[key] = (held, now, now)  # taken since the last pass
        if held is None:
            if now - known[2] < LOOK_AGAIN_EVERY:
                continue
        else:
            # a statement is held: its library is loaded (a tracker reading none never loads it)
            from tracker.proof.records.attesting import reread_due

            if not reread_due(known[1], held.statement.expires, known[2], now):
                continue
        read = await _statement(bucket, key, (copy.size, copy.sha256), now, on_refused)
        if read is None and held is None:
            reads[key] = (None, known[1], now)
            continue
        from tracker.proof.records.attesting import to_serve

        chosen = to_serve(held, read)
        if chosen is None or chosen is held:
            reads[key] = (held, known[1], now)
            continue
        reads[key] = (chosen, now, now)
        digests.hold(BUCKET, group, name, attrs.evolve(copy, attestation=chosen))
        log_event(log, "info", "bucket_attestation_renewed", key=key)


async def restate(
    bucket: Bucket,
    prefix: str,
    attestations: Attestations,
    stated: dict[str, Attestation],
    uploaded: dict[str, str],
) -> dict[str, str]:
    """Write beside each archive this replica uploaded (or took over) its statement when it
    was signed again since it was last written (``stated``: the one last written, by archive
    key; ``uploaded``: the ETag of each such object, by key; both kept current), once a HEAD
    shows the object is still that one. What lies there already saying as much for as long
    (:func:`~tracker.proof.records.attesting.already_said`: another replica of this key
    renewed it lately) is left; the write is conditional on the statement object read (its
    ETag, or none there), so that of two replicas of one key writing at once one writes, and
    the other reads again at its next round. Returns the keys whose object is gone or
    another (retention deleted this upload, another replica uploaded other bytes of the
    name), with why: no statement is written there, the caller forgets the copy. Raises
    StoreError when the store failed."""
    current = {f"{prefix}{group}/{name}": signed for group, name, signed in attestations.uploaded()}
    for known in (stated, uploaded):
        for key in [key for key in known if key not in current]:
            del known[key]  # no longer held: retention deleted it with its statement
    replaced: dict[str, str] = {}
    for key, signed in current.items():
        if stated.get(key) == signed or key not in uploaded:
            continue  # written already, or with its upload (still running)
        info = await bucket.head(key)
        if info is None or not same_version(info.etag, uploaded[key]):
            replaced[key] = "gone" if info is None else "another upload of the name"
            continue
        there, etag = await statement_there(bucket, key, (info.size, signed.statement.sha256))
        from tracker.proof.records.attesting import already_said  # signed: loaded

        if not already_said(there, signed, attestations.valid_for):
            try:
                await bucket.put(
                    key + ATTESTATION_SUFFIX,
                    signed.encode(),
                    if_match=etag or "",
                    if_none_match=etag is None,
                )
            except StoreConflict:
                continue  # written meanwhile: what is there now is read at the next round
        stated[key] = signed
    return replaced
