"""The exception tree of the tracker.

Third-party exceptions (httpx, OSError, YAML, cattrs) are translated into these at the module
boundary where they happen (httpx's, httpcore's and h11's in :mod:`tracker.net` and the fenced
:mod:`tracker.zerocopy` only), so callers handle one family; no other module defines an
exception class::

    TrackerError
    ├── ConfigError        the config file (or a reload) is invalid; carries every problem
    │   └── ConfigNotReady every problem is a path it names that did not answer (a hung
    │                      mount): the environment is not ready, not the config
    ├── FieldProblems      problems of the fields of one config object while it is structured
    │                      (gathered into ConfigError by tracker.config.loading)
    ├── ProbeError         one probe of one target failed; the message becomes ``last_error``
    ├── RequestError       a client request is malformed or names nothing known (4xx)
    ├── EgressRefused      the egress policy refuses every address of a host from the network
    ├── TransportError     an HTTP exchange failed below HTTP: connect, TLS, timeout, protocol,
    │                      a body broken off, a URL httpx cannot take (httpx's errors, mapped
    │                      once in tracker.net)
    ├── SourceFailed       one source of a file's bytes failed: a local file ended early, an
    │   │                  upstream refused, broke or answered something else than the file
    │   ├── CopyRejected   ``fetch``: a complete copy failed its check or has another SHA-256
    │   ├── SourceBusy     a source is at its ``source_limits.max_transfers``
    │   ├── SourceOverloaded a source answered 503/429: busy now (it backs off, unpriced)
    │   ├── SourceGone     a source answered 404/410 for a file it listed (pruned since)
    │   └── SourceWithdrawn a reload removed the source while a request to it waited
    ├── UpstreamError      proxy mode: no source could deliver the bytes (502)
    │   └── SourcesBusy    every source of the file stayed busy (503)
    ├── RpcError           the ``rpc`` node could not tell the current slot (/v1/health 502)
    │                      or the votes for a slot (the cluster level)
    ├── CacheError         the disk cache could not store a file (disk full, read-only, ...)
    ├── StateError         a kept state file or object of what the tracker learned is corrupt
    ├── StoreError         the object store refused or could not be reached (one line)
    │   └── StoreConflict  a conditional write lost (412/409): another replica was first
    ├── ClientGone         the client's connection closed while a body was being sent
    ├── FetchError         ``snapshot-tracker fetch`` could not put the wanted archives in place
    ├── ArchiveInvalid     an archive failed its check (compression, tar, entries); one line
    ├── CopyCutShort       a check of a file being written read all that came before the
    │                      writer stopped short of the end: no verdict (tracker.fetch)
    ├── EndOfInput         a stream parser's stream ended while it wanted bytes (thrown into it
    │                      by tracker.proof.formats.streamparse; it words its own ArchiveInvalid)
    ├── StatementInvalid   a signed statement about an archive (an attestation) or its signing
    │                      key is malformed, badly signed, expired or about another file
    ├── VoteInvalid        a vote instruction's data does not decode (the cluster level)
    ├── CertificateInvalid an Alpenglow finality certificate, its signer bitmap, a block
    │                      footer or a BLS key does not decode or check (the cluster level)
    ├── NoRoom             the accounts proof cannot go on in its memory or its temporary
    │                      space (the archive stays at ``manifest`` with the note)
    └── KernelsUnavailable the proof's compiled kernels could not be loaded (numba, LLVM's
                           library): the tracker's own shortage, never the archive's
"""

from __future__ import annotations

import errno
from datetime import datetime
from typing import TypeVar


class TrackerError(Exception):
    """Base class of every error the tracker raises on purpose."""


class ConfigError(TrackerError):
    """The config is invalid. ``problems`` lists one ``key.path: reason`` line per problem."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


class ConfigNotReady(ConfigError):
    """Every problem of the config is a path it names that did not answer within its bound
    (a hung NFS or FUSE mount, one not up yet): the file may be right, the machine is not
    ready. ``serve`` and ``check-config`` exit 75 (``EX_TEMPFAIL``), which the systemd unit
    retries, where a config error's 2 is never retried (docs/configuration.md, "Paths on a
    hung mount")."""


class FieldProblems(TrackerError):
    """Problems found across the fields of one config object, each with a key path relative
    to it (attribute names and list indexes); raised while the config is structured and
    turned into ConfigError's lines by :mod:`tracker.config.loading`."""

    def __init__(self, problems: list[tuple[tuple[str | int, ...], str]]) -> None:
        super().__init__("; ".join(message for _, message in problems))
        self.problems = problems


class ProbeError(TrackerError):
    """A probe of one target failed; ``str(exc)`` is a one-line reason for the operator."""


class EgressRefused(TrackerError):
    """A host that came from the network resolves to no address the egress policy allows;
    ``str(exc)`` is a one-line reason naming the host and why."""


class TransportError(TrackerError):
    """An HTTP exchange failed below HTTP (connect, TLS, timeout, protocol, a body broken
    off, a URL httpx cannot take); ``str(exc)`` is a one-line reason such as ``cannot
    connect: Connection refused``, the library's exception is its ``__cause__``."""


class SourceFailed(TrackerError):
    """One source of a file's bytes failed; ``str(exc)`` is a one-line reason.

    Proxy mode then asks the next source of the file (none left: UpstreamError); a body that
    already sent bytes raises it into the server, which aborts the connection short of its
    content-length. ``fetch`` gives the piece back and drops a source that keeps failing.
    """


class CopyRejected(SourceFailed):
    """``snapshot-tracker fetch``: a complete copy failed the archive check or has another
    SHA-256 than the tracker's (deleted; the sources not yet tried are next)."""


class RequestError(TrackerError):
    """A client request cannot be answered: ``status`` is the 4xx (or 5xx) code, ``reason``
    one line; ``retry_after``: the seconds a 503's client should wait (None: the default)."""

    def __init__(self, status: int, reason: str, *, retry_after: float | None = None) -> None:
        self.status = status
        self.reason = reason
        self.retry_after = retry_after
        super().__init__(f"{status}: {reason}")


class UpstreamError(TrackerError):
    """No upstream source delivered the requested bytes; the reason is one line."""


class SourceBusy(SourceFailed):
    """A source already has its ``source_limits.max_transfers`` transfers from this tracker;
    the next source of the file is asked (none left: SourcesBusy). ``retry_after``: the
    seconds until its first transfer expects to end (None: unknown)."""

    def __init__(self, reason: str, *, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.retry_after = retry_after


class SourceOverloaded(SourceFailed):
    """The source itself answered that it is too busy to serve now: 503 (agave's RPC and
    nginx's ``limit_conn`` at their connection limit) or 429 (a rate limiter). The next
    source is asked, and this one is asked after the others for a short back-off; not held
    against its throughput (docs/ranking.md, "Busy answers"). ``retry_after``: the seconds
    its ``Retry-After`` asked for (None: none stated)."""

    def __init__(self, reason: str, *, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.retry_after = retry_after


class SourceGone(SourceFailed):
    """The source answered 404 or 410 for a file its listing named: it pruned the file since
    the listing was read (agave keeps a few archives and deletes the older). The next source
    is asked; not held against the source's throughput (docs/ranking.md, "Failed
    transfers"): a listing is a scrape round old."""


class SourceWithdrawn(SourceFailed):
    """A reload removed the group or the source while a request to it waited: the source is
    asked nothing and the next one is (none left: UpstreamError). Not the source's failure:
    it ranks nothing against it."""


class SourcesBusy(UpstreamError):
    """Every source of a file was at its ``max_transfers`` for the bounded wait: answered
    503 with the one-line reason and ``retry_after`` (seconds; None: the default)."""

    def __init__(self, reason: str, *, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.retry_after = retry_after


class RpcError(TrackerError):
    """The RPC node could not tell the current slot, or the votes for a slot and the stakes
    (tracker.proof.cluster.clustervotes); the message is one line."""


class CacheError(TrackerError):
    """The disk cache could not store a file; the reason is one line."""


class StateError(TrackerError):
    """What the tracker learned could not be read back (a corrupt state file or object)."""


class StoreError(TrackerError):
    """The object store (docs/http-api.md#with-an-object-store-object_store) failed an operation;
    the message is one line naming the
    operation and the store's answer, never a credential. ``down``: the store itself is
    unusable (unreachable, wrong credentials, 5xx), not just this one object; ``dated``: the
    store's clock when it answered (its ``Date``; None: no answer, or none said);
    ``denied``: a housekeeping call the bucket's policy refuses (AccessDenied), never
    ``down`` (:func:`tracker.objectstore.bucket.verdict`)."""

    def __init__(
        self,
        message: str,
        *,
        down: bool = True,
        dated: datetime | None = None,
        denied: bool = False,
    ) -> None:
        self.down = down
        self.dated = dated
        self.denied = denied
        super().__init__(message)


class StoreConflict(StoreError):
    """A conditional write (``If-None-Match: *``, ``If-Match``) found another replica's
    object: a lock is held or was taken over."""

    def __init__(self, message: str) -> None:
        super().__init__(message, down=False)


class ClientGone(TrackerError):
    """The client's connection closed (or stalled out) while its body was being sent."""


class FetchError(TrackerError):
    """``snapshot-tracker fetch`` could not put the wanted archives into the ledger (one line:
    tracker unreachable, nothing to fetch, no space, every source failed)."""


class ArchiveInvalid(TrackerError):
    """The archive failed its check (docs/architecture.md, "Verified archives"): ``reason`` is
    one line for the operator, e.g. ``zstd: frame checksum mismatch in the frame at byte 0``
    or ``tar: missing snapshots/status_cache``; ``str(exc)`` is the same line."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class CopyCutShort(TrackerError):
    """A following check (:class:`~tracker.proof.archive.archivecheck.GrowingFile`) read every
    byte its writer put on disk before the writer stopped short of the end (a download whose
    sources all failed): those bytes did not fail it, the rest never comes. No verdict on the
    archive, neither way."""


class EndOfInput(TrackerError):
    """Thrown into a stream parser (:mod:`tracker.proof.formats.streamparse`) when the stream ends
    while it still wants bytes; ``at`` is the stream's length (every byte the parser was
    given, including a partial read)."""

    def __init__(self, at: int) -> None:
        self.at = at
        super().__init__(f"stream ends at byte {at}")


class StatementInvalid(TrackerError):
    """A signed statement about an archive (docs/http-api.md, "Signed statements"), or the key
    that signs them, cannot be taken: malformed, signed by another key or badly, expired, about
    another size or digest, or a key file of the wrong mode; ``str(exc)`` is one line.
    ``valid_from``: when time alone makes it acceptable (seconds since the epoch: one
    checked ahead of this clock by more than the skew allowed), None for every other
    refusal."""

    def __init__(self, message: str, *, valid_from: float | None = None) -> None:
        self.valid_from = valid_from
        super().__init__(message)


class VoteInvalid(TrackerError):
    """A vote-program instruction's data does not decode as its kind (docs/architecture.md,
    "The cluster level"); the message is one line."""


class CertificateInvalid(TrackerError):
    """An Alpenglow certificate, its bitmap, a block footer or a vote account's BLS key does
    not decode, or does not check against the rank map (docs/http-api.md, "The cluster
    level"); the message is one line."""


class NoRoom(TrackerError):
    """The accounts proof cannot go on in its memory budget or its temporary space
    (docs/architecture.md, "Bounded memory"); ``note`` says why, in one line. ``local``:
    the tracker's own shortage (its budget, its disk), checked again later; False: what the
    archive asks of the proof (one pubkey's versions past any budget), no cause of ours."""

    def __init__(self, note: str, *, local: bool = True) -> None:
        super().__init__(note)
        self.note = note
        self.local = local


class KernelsUnavailable(TrackerError):
    """The proof's compiled kernels could not be loaded (numba or LLVM's library failed to
    load or to compile, as under a memory limit): the tracker's own shortage, never a verdict
    on the archive being checked (:func:`own_shortage`); the message is one line."""


_E = TypeVar("_E", bound=BaseException)


def first_leaf(exc: BaseException) -> BaseException:
    """``exc``, or the first exception that is no group inside it: what a one-line reason
    names (``ValueError``, not ``ExceptionGroup``) when nurseries wrapped it."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def sole_leaf(exc: BaseException, kinds: type[_E] | tuple[type[_E], ...]) -> _E | None:
    """``exc`` when it is one of ``kinds``, or the first exception of a group (as a nursery
    raises it) that holds nothing else; None otherwise."""
    if isinstance(exc, kinds):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        matched, rest = exc.split(kinds)
        leaf = first_leaf(matched) if matched is not None and rest is None else None
        return leaf if isinstance(leaf, kinds) else None
    return None


def interruption_in(exc: BaseException) -> BaseException | None:
    """The KeyboardInterrupt or SystemExit ``exc`` is, holds (a group, as trio raises it out
    of a nursery) or was raised from or during (its ``__cause__`` and ``__context__``
    chain); None when it holds none."""
    seen: set[int] = set()
    link: BaseException | None = exc
    while link is not None and id(link) not in seen:
        if isinstance(link, KeyboardInterrupt | SystemExit):
            return link
        seen.add(id(link))
        if isinstance(link, BaseExceptionGroup):
            for inner in link.exceptions:
                if (found := interruption_in(inner)) is not None:
                    return found
        link = link.__cause__ or link.__context__
    return None


#: What CPython's ``threading.Thread.start`` raises (as RuntimeError) when the system refuses
#: a thread: a pids or threads limit (a container's ``pids.max``), no memory for its stack.
THREAD_START_FAILED = "can't start new thread"


def own_shortage(exc: BaseException) -> OSError | None:
    """The tracker's own shortage ``exc`` is, as the OSError of a local failure (EAGAIN: a
    thread it could not start, as ``pthread_create`` says), None when it is none. Such a
    failure says nothing of the bytes being checked: its callers treat it as they treat a
    read error, never as a verdict on an archive (docs/architecture.md, "Any failure is the
    copy's, unless it is the reading's"). A MemoryError is none: what the check allocates is
    bounded, so one is the bytes' asking (a size no limit caught), and taken as a shortage a
    hostile copy would be fetched and checked again forever. The compiled kernels that
    could not be loaded (:class:`KernelsUnavailable`) are one (ENOMEM). Pure."""
    if isinstance(exc, RuntimeError) and str(exc).startswith(THREAD_START_FAILED):
        return OSError(errno.EAGAIN, THREAD_START_FAILED)
    if isinstance(exc, KernelsUnavailable):
        return OSError(errno.ENOMEM, str(exc))
    return None
