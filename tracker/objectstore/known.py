"""What this replica knows of the bucket's objects, and for how long it trusts it.

Objects known to be there are remembered for :data:`KNOWN_FOR` seconds (then looked at
again: another replica's retention may have removed one), misses for :data:`MISSED_FOR`;
a presigned URL is kept for reuse until its ``reuse_until``; the digest of each object
version read from its ``{key}.sha256`` object (or that it has none) is kept while the
object's ETag stays the same. Times are trio's clock.
"""

from __future__ import annotations

import attrs
import trio

from tracker.objectstore.storeanswers import ObjectInfo

#: Seconds an object seen in the bucket is taken to be there without asking again.
KNOWN_FOR = 30.0
#: Seconds a miss is taken to be one.
MISSED_FOR = 1.0


@attrs.define
class HandedUrl:
    """A presigned URL of an object, handed out again until ``reuse_until``."""

    url: str
    reuse_until: float


class Known:
    """The objects, misses, presigned URLs and digests this replica knows, by key."""

    def __init__(self) -> None:
        self._objects: dict[str, tuple[ObjectInfo, float]] = {}
        self._missed: dict[str, float] = {}
        self._urls: dict[str, HandedUrl] = {}
        self._sums: dict[str, tuple[str, str]] = {}

    def __len__(self) -> int:
        """How many objects are known to be there."""
        return len(self._objects)

    def fresh(self, key: str) -> ObjectInfo | None:
        """The object at ``key`` when it was seen less than KNOWN_FOR seconds ago."""
        known = self._objects.get(key)
        if known is not None and trio.current_time() - known[1] < KNOWN_FOR:
            return known[0]
        return None

    def missed_lately(self, key: str) -> bool:
        """True when ``key`` was found missing less than MISSED_FOR seconds ago."""
        return trio.current_time() - self._missed.get(key, -MISSED_FOR) < MISSED_FOR

    def remember(self, key: str, info: ObjectInfo | None) -> None:
        """The object at ``key`` is ``info`` now (None: not there; its URL is dropped)."""
        now = trio.current_time()
        if info is None:
            self._objects.pop(key, None)
            self._urls.pop(key, None)
            self._missed[key] = now
        else:
            self._objects[key] = (info, now)
            self._missed.pop(key, None)

    def newest(self, count: int) -> list[str]:
        """The keys of the ``count`` objects learned of last, the newest first."""
        return list(reversed(self._objects))[:count]

    def url(self, key: str) -> str | None:
        """The presigned URL of ``key`` that may be handed out again now, if any."""
        handed = self._urls.get(key)
        if handed is not None and trio.current_time() < handed.reuse_until:
            return handed.url
        return None

    def keep_url(self, key: str, url: str, reuse_until: float) -> None:
        """Hand ``url`` out again until ``reuse_until`` (trio's clock)."""
        self._urls[key] = HandedUrl(url, reuse_until)

    def sum(self, key: str, etag: str) -> str | None:
        """The digest known of version ``etag`` of ``key``: its hex SHA-256, "" when it has
        none, None when it was not read."""
        known = self._sums.get(key)
        return known[1] if known is not None and known[0] == etag else None

    def keep_sum(self, key: str, etag: str, hex_digest: str) -> None:
        """Version ``etag`` of ``key`` has digest ``hex_digest`` ("" when none)."""
        self._sums[key] = (etag, hex_digest)

    def drop_sum(self, key: str) -> bool:
        """Forget the digest of ``key``; True when one was known."""
        return self._sums.pop(key, None) is not None
