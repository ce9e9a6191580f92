"""Pure values: archive names, snapshot files and infos and their order; a snapshot as one
target holds it and the target's identity, the values the index ranks.

Nothing here does I/O nor reads a clock. Every source kind turns what it finds into
:class:`SnapshotInfo` values (a snapshot and the chain of files it needs); the index keeps
each as a :class:`SnapshotSource` (the target's copy: its :class:`TargetKey`, when it was
seen, its measured throughput) and ranks them with :meth:`SnapshotSource.rank_key`. The one
rule of which targets a group knows (:func:`is_known`, ``trust.known_sources``) is here too:
the ranking's trust screen (:mod:`tracker.ordering.screens`), the config's warnings and the
cache's mixed copies share it. The JSON wire form is :mod:`tracker.web.wire`'s
(docs/http-api.md, "Snapshot sources (JSON)").
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Set
from datetime import datetime
from typing import NamedTuple

import attrs
import base58

from tracker.core.hosts import canonical_authority

#: Archive extensions a Solana validator writes, longest first so that matching is greedy.
EXTENSIONS = (".tar.bz2", ".tar.gz", ".tar.zst", ".tar.lz4", ".tar.xz", ".tar")

# Slots are u64 on the validator; 20 digits covers every u64 and rejects absurd inputs early.
_SLOT = r"(0|[1-9][0-9]{0,19})"
_HASH = r"([1-9A-HJ-NP-Za-km-z]{32,44})"
_EXT = r"(\.tar(?:\.bz2|\.gz|\.zst|\.lz4|\.xz)?)"
_FULL_RE = re.compile(rf"snapshot-{_SLOT}-{_HASH}{_EXT}")
_INCR_RE = re.compile(rf"incremental-snapshot-{_SLOT}-{_SLOT}-{_HASH}{_EXT}")
U64_MAX = 2**64 - 1
#: The longest archive URL the tracker keeps from a source's ``Location`` and ``fetch`` reads
#: from a listing: an agave node's is about 100 characters, a presigned link's a few
#: thousand; a hostile node's of 16 KiB (all a probe's answer head holds) was kept as many
#: KiB in the index, the sizes memo and every listing (docs/configuration.md,
#: ``http_targets``).
MAX_URL = 4096


@functools.lru_cache(maxsize=65536)
def decode_hash(text: str) -> bytes | None:
    """Return the 32 bytes of a base58 hash, or None when ``text`` is not one.

    Memoised: ranking compares hashes on every sort, and base58 in pure Python costs tens of
    microseconds a hash (10,000 snapshots took ~0.2 s a sort).
    """
    if not 32 <= len(text) <= 44:
        return None
    try:
        raw: bytes = base58.b58decode(text)
    except ValueError:
        return None
    return raw if len(raw) == 32 else None


def is_valid_hash(text: str) -> bool:
    """True when ``text`` is base58 and decodes to exactly 32 bytes."""
    return decode_hash(text) is not None


@attrs.frozen
class ArchiveName:
    """A parsed snapshot archive name. ``base_slot`` is 0 for a full snapshot."""

    slot: int
    base_slot: int
    hash: str
    ext: str

    @property
    def is_full(self) -> bool:
        """True for a full snapshot archive."""
        return self.base_slot == 0

    @functools.cached_property
    def file_name(self) -> str:
        """The canonical file name, the inverse of :func:`parse_archive_name` (kept: ranking
        and lookups ask for it thousands of times a second during a cluster round)."""
        if self.is_full:
            return f"snapshot-{self.slot}-{self.hash}{self.ext}"
        return f"incremental-snapshot-{self.base_slot}-{self.slot}-{self.hash}{self.ext}"

    def order_key(self) -> tuple[int, int, int, bytes, str]:
        """Ascending total order: slot, full after incremental, base, hash, then extension."""
        full = 1 if self.is_full else 0
        return (self.slot, full, self.base_slot, decode_hash(self.hash) or b"", self.ext)


@functools.lru_cache(maxsize=4096)
def parse_archive_name(name: str) -> ArchiveName | None:
    """Parse a bare archive file name; None when it is not a valid snapshot archive name.

    An incremental needs ``slot > base``; a full needs ``slot > 0`` (a full at slot 0 could
    not be told apart from an incremental's ``base_slot`` of 0 in the wire format).
    Memoised (bounded): every archive request parses its name, and checking the base58 hash
    is most of a request's own work on a redirect.
    """
    if len(name) > 200:
        return None
    if m := _INCR_RE.fullmatch(name):
        base, slot, hash_, ext = int(m[1]), int(m[2]), m[3], m[4]
        if not 0 < base < slot <= U64_MAX:
            return None
    elif m := _FULL_RE.fullmatch(name):
        base, slot, hash_, ext = 0, int(m[1]), m[2], m[3]
        if not 0 < slot <= U64_MAX:
            return None
    else:
        return None
    if not is_valid_hash(hash_):
        return None
    return ArchiveName(slot=slot, base_slot=base, hash=hash_, ext=ext)


def file_name_of(url_or_name: str) -> str:
    """The last path segment of a URL or path (what HTTP sources advertise)."""
    return url_or_name.rsplit("/", 1)[-1]


@attrs.frozen
class SnapshotFile:
    """One archive as a source advertises it.

    ``url`` is where the bytes are (absolute http(s) URL) for remote sources; ``path`` is the
    file on disk for local sources. Neither is part of the wire format: ``file_name`` is.
    ``sha256`` is the SHA-256 the source itself publishes for its copy (lower-case hex; ""
    none): a claim from the network, never shown as the tracker's own digest, used only to
    keep sources that disagree about it apart (docs/http-api.md#trust).
    """

    name: ArchiveName
    file_name: str
    size: int = 0
    mod_time: datetime | None = None
    url: str = ""
    path: str = ""
    sha256: str = ""

    @property
    def bare_name(self) -> str:
        """The archive's own file name, whatever ``file_name`` holds (name or URL)."""
        return self.name.file_name


@attrs.frozen
class SnapshotInfo:
    """A snapshot and the files it needs: itself first, then down to its full snapshot."""

    slot: int
    base_slot: int
    hash: str
    files: tuple[SnapshotFile, ...]

    @property
    def size(self) -> int:
        """Sum of the sizes of the chain's files (0 for unknown sizes)."""
        return sum(f.size for f in self.files)

    @property
    def is_full(self) -> bool:
        """True when the snapshot is a full snapshot (its base is itself)."""
        return self.base_slot == self.slot

    def rank_key(self) -> tuple[int, int, int, bytes]:
        """Ascending order of the ranking: slot, full over incremental, base slot, hash."""
        full = 1 if self.is_full else 0
        return (self.slot, full, self.base_slot, decode_hash(self.hash) or b"")


def info_from_files(files: list[SnapshotFile]) -> SnapshotInfo:
    """Build the info of the first file's snapshot, its chain ordered newest first."""
    head = files[0].name
    chain = sorted(files, key=lambda f: f.name.order_key(), reverse=True)
    base = head.slot if head.is_full else head.base_slot
    return SnapshotInfo(slot=head.slot, base_slot=base, hash=head.hash, files=tuple(chain))


def chains_from_files(files: list[SnapshotFile]) -> list[SnapshotInfo]:
    """Group a flat list of archives (as a directory or HTTP server yields) into infos.

    Every full is an info of its own; every incremental is an info whose chain also holds
    the full at its base slot when that full is in ``files``.
    """
    fulls = {f.name.slot: f for f in files if f.name.is_full}
    infos = []
    for f in files:
        if f.name.is_full:
            infos.append(info_from_files([f]))
        else:
            base = fulls.get(f.name.base_slot)
            infos.append(info_from_files([f, base] if base else [f]))
    return infos


class TargetKey(NamedTuple):
    """A target's stable identity: its group and its display name (URL or path).

    ``discovered``: a node found by cluster discovery (docs/http-api.md#trust), not configured
    by the operator: an address from the network, never given the group's credentials.

    A named tuple, not an attrs class: keys are hashed and compared hundreds of thousands of
    times a second while thousands of targets are ranked, and a tuple does both in C.
    """

    group: str
    target: str
    discovered: bool = False


@attrs.frozen
class SnapshotSource:
    """A snapshot as one target holds it (the §6 ``snapshot source``)."""

    info: SnapshotInfo
    key: TargetKey
    updated_at: datetime
    #: Bytes per second measured on transfers from this target (0: not measured).
    throughput: float = 0.0
    #: Seconds its last probe took (None: not measured, a local directory).
    latency: float | None = None
    #: What the ranking assumes: the measured throughput, else the median of the group's
    #: measured targets (an unmeasured source gets its chance; a slow one falls behind).
    expected: float = 0.0

    def rank_key(self) -> tuple[tuple[int, int, int, bytes], float, float, datetime, str]:
        """Ascending ranking key; the best source has the largest key.

        Between sources of the same snapshot: the higher measured throughput, then the lower
        probe latency, then the one scraped successfully most recently (docs/http-api.md#trust);
        the target name makes the order total (deterministic answers).
        """
        latency = -self.latency if self.latency is not None else -math.inf
        return (
            self.info.rank_key(),
            self.expected,
            latency,
            self.updated_at,
            _reverse(self.key.target),
        )


@attrs.frozen
class SourceFile:
    """``file`` as ``source`` offers it: what one read of a source's copy (a speed test, a
    head read) is of."""

    source: SnapshotSource
    file: SnapshotFile

    @property
    def key(self) -> TargetKey:
        """The target read."""
        return self.source.key


@functools.lru_cache(maxsize=65536)
def _reverse(text: str) -> str:
    # Descending sort of the whole key must list equal-rank targets in ascending name order.
    return "".join(chr(0x10FFFF - ord(c)) for c in text)


#: Distinct sources that must agree on a (slot, hash) only discovered nodes advertise.
MIN_DISCOVERED_AGREEING = 2


def is_known(target: str, known_sources: Set[str]) -> bool:
    """True when ``target`` (a target's URL or path) is one of ``known_sources``: the same
    URL or path, or its ``host:port`` (an entry that names every target at that address);
    one host however either spells it (:func:`tracker.core.hosts.canonical_host`)."""
    if target in known_sources:
        return True
    entries = _source_forms(frozenset(known_sources))
    form = _source_form(target)
    if form in entries:
        return True
    _scheme, sep, rest = form.partition("://")
    return bool(sep) and rest.split("/", 1)[0] in entries


@functools.lru_cache(maxsize=256)
def _source_forms(known_sources: frozenset[str]) -> frozenset[str]:
    # Once per group's entries, not per target: the ranking asks for every target of a
    # round several times a second (a frozenset keeps its hash: the same one costs O(1)).
    return frozenset(_source_form(entry) for entry in known_sources)


@functools.lru_cache(maxsize=65536)
def _source_form(text: str) -> str:
    # A target's URL, a host:port or a path as is_known compares them: the scheme lower
    # case, the host canonical, no userinfo (credentials are no part of whose word it is);
    # a path (a local target, resolved) as it is.
    if text.startswith("/"):
        return text
    scheme, sep, rest = text.partition("://")
    if not sep:
        return canonical_authority(text)
    authority, slash, path = rest.partition("/")
    return f"{scheme.lower()}://{canonical_authority(authority)}{slash}{path}"
