"""The facts the byte path's plan (:mod:`tracker.proxy.plan`) decides on: what a request
asked, the mode it is served under, what the disk cache, the refreshes and the bucket hold.
Plain values, no I/O."""

from __future__ import annotations

import enum

import attrs


@attrs.frozen
class Asked:
    """The facts of a request: its method and the headers that decide its byte path."""

    method: str
    #: The ``Range`` header (None: absent).
    range: str | None = None
    #: An ``If-Range`` or conditional header (``If-Match``, ``If-None-Match``,
    #: ``If-Modified-Since``, ``If-Unmodified-Since``): only the source can answer it.
    conditional: bool = False
    user_agent: str = ""

    @property
    def plain(self) -> bool:
        """No ``Range`` and no conditional: the whole file, whatever its validators."""
        return self.range is None and not self.conditional

    @property
    def plain_get(self) -> bool:
        """A GET that may fill the cache: the answer is the whole file."""
        return self.method == "GET" and self.plain

    @property
    def may_join(self) -> bool:
        """A GET whose only forwarded header is ``Range``: a refresh's temp file answers it."""
        return self.method == "GET" and not self.conditional


@attrs.frozen
class Bucket:
    """The object store's state as a request finds it."""

    #: False while the store is down (between retries).
    usable: bool = True
    #: ``object_store.direct_serve``: GETs of stored archives are sent to the bucket.
    direct_serve: bool = True


@attrs.frozen
class Mode:
    """The configuration a request is served under."""

    #: The object store (docs/http-api.md#with-an-object-store-object_store), when one is
    #: configured along with the disk cache.
    bucket: Bucket | None = None
    #: ``cache_share_inflight``: readers share one refresh of a file.
    share: bool = False
    #: ``cache_complete_on_disconnect``: a refresh outlives its last client.
    keep: bool = False
    #: ``serve_user_agents``: clients that get the bytes, never a redirect to another host.
    serve_user_agents: tuple[str, ...] = ()

    @property
    def shares(self) -> bool:
        """Refreshes are shared: ``cache_share_inflight``, or the bucket (the refresh is then
        one for the whole fleet, and replicas follow it)."""
        return self.share or self.bucket is not None


class Copy(enum.Enum):
    """What the disk cache may hold of the file, before it is opened."""

    #: No disk cache is configured.
    NO_CACHE = "no_cache"
    #: The file cannot be cached here: its group is no directory name (``..``), or its path
    #: leads out of the cache directory through a planted symlink.
    OUTSIDE = "outside"
    #: A copy that has not passed its check yet (``verify_archives``): not served.
    UNCHECKED = "unchecked"
    #: A copy is served if the file is there (checked, or ``verify_archives: false``).
    SERVABLE = "servable"


@attrs.frozen
class Running:
    """A refresh of the file that readers may find (registered), and its progress."""

    size: int
    written: int


@attrs.frozen
class Now:
    """What a miss finds: the index and the refreshes of the file at that moment."""

    #: The file is its group's current best full or best incremental.
    best: bool = False
    #: A registered refresh of the file (shared, or a background one), if any.
    running: Running | None = None
    #: Any refresh of the file runs, registered or not (the cache's own record).
    refreshing: bool = False


class Claimed(enum.Enum):
    """What asking the bucket for the file's lock gave."""

    #: This replica holds the lock: it refreshes the file and uploads it.
    LOCK = "lock"
    #: Another replica holds it: its refresh in flight is a source.
    HOLDER = "holder"
    #: No lock to be had (the store is down, or it is our own lock of a refresh that just
    #: ended): the disk cache alone.
    NONE = "none"
