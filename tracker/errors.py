"""The exception tree of the tracker.

Third-party exceptions (httpx, OSError, YAML, cattrs) are translated into these at the module
boundary where they happen, so callers handle one family::

    TrackerError
    ├── ConfigError        the config file (or a reload) is invalid; carries every problem
    ├── ProbeError         one probe of one target failed; the message becomes ``last_error``
    ├── RequestError       a client request is malformed or names nothing known (4xx)
    ├── EgressRefused      the egress policy refuses every address of a host from the network
    ├── SourceFailed       one source of a file's bytes failed: a local file ended early, an
    │                      upstream refused, broke or answered something else than the file
    ├── UpstreamError      proxy mode: no source could deliver the bytes (502)
    ├── RpcError           the ``rpc`` node could not tell the current slot (/v1/health 502)
    ├── CacheError         the disk cache could not store a file (disk full, read-only, ...)
    ├── StoreError         the object store refused or could not be reached (one line)
    │   └── StoreConflict  a conditional write lost (412/409): another replica was first
    ├── ClientGone         the client's connection closed while a body was being sent
    ├── FetchError         ``snapshot-tracker fetch`` could not put the wanted archives in place
    └── ArchiveInvalid     an archive failed its check (compression, tar, entries); one line
"""

from __future__ import annotations


class TrackerError(Exception):
    """Base class of every error the tracker raises on purpose."""


class ConfigError(TrackerError):
    """The config is invalid. ``problems`` lists one ``key.path: reason`` line per problem."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


class ProbeError(TrackerError):
    """A probe of one target failed; ``str(exc)`` is a one-line reason for the operator."""


class EgressRefused(TrackerError):
    """A host that came from the network resolves to no address the egress policy allows;
    ``str(exc)`` is a one-line reason naming the host and why."""


class SourceFailed(TrackerError):
    """One source of a file's bytes failed; ``str(exc)`` is a one-line reason.

    Proxy mode then asks the next source of the file (none left: UpstreamError); a body that
    already sent bytes raises it into the server, which aborts the connection short of its
    content-length.
    """


class RequestError(TrackerError):
    """A client request cannot be answered: ``status`` is the 4xx code, ``reason`` one line."""

    def __init__(self, status: int, reason: str) -> None:
        self.status = status
        self.reason = reason
        super().__init__(f"{status}: {reason}")


class UpstreamError(TrackerError):
    """No upstream source delivered the requested bytes; the reason is one line."""


class RpcError(TrackerError):
    """The RPC node could not tell the current slot; the message is one line."""


class CacheError(TrackerError):
    """The disk cache could not store a file; the reason is one line."""


class StoreError(TrackerError):
    """The object store (SPEC §10) failed an operation; the message is one line naming the
    operation and the store's answer, never a credential. ``down``: the store itself is
    unusable (unreachable, wrong credentials, 5xx), not just this one object."""

    def __init__(self, message: str, *, down: bool = True) -> None:
        self.down = down
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
