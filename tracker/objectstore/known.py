"""What this replica knows of the bucket's objects, and for how long it trusts it.

Objects known to be there are remembered for :data:`KNOWN_FOR` seconds (then looked at
again: another replica's retention may have removed one), misses for :data:`MISSED_FOR`;
a presigned URL is kept for reuse until its ``reuse_until``; the digest of each object
version read from its ``{key}.sha256`` object (or that it has none) is kept while the
object's ETag stays the same, and when the statement beside it, refused for being checked
ahead of this clock, may be taken. Times are trio's clock, but for that one (seconds since
the epoch, as statements are dated).

Nothing here outlives what it is about: a miss is dropped once it is no longer believed
(:data:`MISSED_FOR`; at most :data:`MAX_MISSED` are kept), an object retention deleted is
forgotten whole (:meth:`Known.forget`, no miss), and what retention's listing shows gone is
forgotten too (:mod:`tracker.objectstore.retainer`, docs/replicas.md).
"""

from __future__ import annotations

from collections import OrderedDict

import attrs
import trio

from tracker.objectstore.storeanswers import ObjectInfo

#: Seconds an object seen in the bucket is taken to be there without asking again.
KNOWN_FOR = 30.0
#: Seconds a miss is taken to be one.
MISSED_FOR = 1.0
#: Misses kept at most: one lookup of each of this many names a second are all remembered;
#: past it the oldest is dropped (its next lookup asks the store again: safe, one HEAD).
MAX_MISSED = 4096


@attrs.define
class HandedUrl:
    """A presigned URL of an object, handed out again until ``reuse_until``."""

    url: str
    reuse_until: float


class Known:
    """The objects, misses, presigned URLs and digests this replica knows, by key."""

    def __init__(self) -> None:
        self._objects: dict[str, tuple[ObjectInfo, float]] = {}
        #: Ordered (oldest first): the old ones are dropped from the front at O(1) each.
        self._missed: OrderedDict[str, float] = OrderedDict()
        self._urls: dict[str, HandedUrl] = {}
        self._sums: dict[str, tuple[str, str]] = {}
        #: When the statement read beside an object version, refused for being checked
        #: ahead of this clock, may be taken (seconds since the epoch, as statements are
        #: dated), by key: the object is read again at its first look from then on.
        self._dated: dict[str, tuple[str, float]] = {}

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
        self._missed.pop(key, None)  # (re-inserted last: the oldest miss is always first)
        if info is None:
            self._objects.pop(key, None)
            self._urls.pop(key, None)
            self._missed[key] = now
            self._drop_old_misses(now)
        else:
            self._objects[key] = (info, now)

    def _drop_old_misses(self, now: float) -> None:
        """Drop the misses no longer believed, and the oldest past MAX_MISSED: a name looked
        up once and never again (another replica uploads it later, a client asked for a name
        nobody has) would otherwise stay for good. Misses are in the order they were
        recorded (trio's clock never goes back), so only the first ones are looked at."""
        while self._missed:
            when = next(iter(self._missed.values()))
            if now - when < MISSED_FOR and len(self._missed) <= MAX_MISSED:
                break
            self._missed.popitem(last=False)

    def forget(self, key: str) -> None:
        """Forget all that is known of ``key`` (its object, URL, digest, miss): retention
        deleted it, or its listing shows it gone. No miss is kept: one for every archive
        retired would stay for good, and the next lookup asks the store anyway."""
        self._objects.pop(key, None)
        self._urls.pop(key, None)
        self._sums.pop(key, None)
        self._dated.pop(key, None)
        self._missed.pop(key, None)

    def seen(self) -> dict[str, float | None]:
        """Every key known of (an object, its URL or its digest), with when its object was
        last seen there (trio's clock; None: only its URL or digest is known)."""
        found: dict[str, float | None] = dict.fromkeys([*self._urls, *self._sums])
        found.update((key, when) for key, (_info, when) in self._objects.items())
        return found

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

    def digested(self, key: str) -> str | None:
        """The ETag of the version of ``key`` whose digest was read (what a bucket copy held
        describes, however long ago it was seen); None when none was."""
        known = self._sums.get(key)
        return known[0] if known is not None else None

    def keep_sum(self, key: str, etag: str, hex_digest: str) -> None:
        """Version ``etag`` of ``key`` has digest ``hex_digest`` ("" when none)."""
        self._sums[key] = (etag, hex_digest)

    def keep_dated(self, key: str, etag: str, valid_from: float | None) -> None:
        """The statement beside version ``etag`` of ``key`` was refused for being checked
        ahead of this clock and may be taken from ``valid_from`` (seconds since the epoch;
        None: it was read otherwise)."""
        if valid_from is None:
            self._dated.pop(key, None)
        else:
            self._dated[key] = (etag, valid_from)

    def dated_due(self, key: str, etag: str, wall: float) -> bool:
        """True when the statement beside version ``etag`` of ``key``, refused for being
        checked ahead, may be taken at ``wall`` (seconds since the epoch): read it again."""
        dated = self._dated.get(key)
        return dated is not None and dated[0] == etag and dated[1] <= wall

    def outdated(self, key: str, etag: str, listed_at: float) -> bool:
        """True when what is known of ``key`` (its object, its digest) is of another version
        than ``etag``, the one a listing begun at ``listed_at`` (trio's clock) shows, and was
        learned before it began: another replica's upload of the name replaced the object
        this replica knew (retention deleted it, the other uploaded other bytes of the name).
        What was learned since is newer than the listing, never judged by it."""
        known = self._objects.get(key)
        if known is not None and known[1] >= listed_at:
            return False
        versions = [known[0].etag] if known is not None else []
        if key in self._sums:
            versions.append(self._sums[key][0])
        return any(not same_version(version, etag) for version in versions)

    def drop_sum(self, key: str) -> bool:
        """Forget the digest of ``key``; True when one was known."""
        return self._sums.pop(key, None) is not None


def same_version(etag: str, other: str) -> bool:
    """True when two ETags of one key name one object version: a listing may give it
    without the quotes a HEAD gives, or in other case."""
    return etag.strip('"').lower() == other.strip('"').lower()
