"""A walk over a tar stream: headers checked, member data skipped, to the end-of-archive blocks.

:func:`walk_tar` is a parser for :class:`~tracker.proof.formats.streamparse.Feeder`. It reads each
512-byte header with :func:`read_header` and refuses every member agave's writer never emits
(docs/architecture.md, "What the check allows" → "One reading of the tar stream"): an archive
that agave's unpacker (the ``tar`` crate) and this walk could read two ways is refused, never
proven. It skips every member's data without copying it, wants the stream to end with two zero
blocks followed by at most :data:`~tracker.proof.archive.checklimits.MAX_END_PADDING` zeros, and
counts the headers against what its caller allows (``members_allowed``). Every number it reads
is bounded in length before it is converted.

Headers are parsed here rather than with ``tarfile.TarInfo.frombuf``: that costs ~32 µs a
header (a snapshot has a million members), this ~3 µs.
"""

from __future__ import annotations

import re
import threading
import zlib
from collections.abc import Callable

import attrs

from tracker.errors import ArchiveInvalid
from tracker.proof.archive.checklimits import (
    MAX_END_PADDING,
    MAX_MEMBERS,
    MAX_UNPACKED_SIZE,
    MEMBER_FLOOR,
)
from tracker.proof.formats.prover import MemberProver
from tracker.proof.formats.streamparse import REST, EndOfInput, Parser, ParserOf

BLOCK = 512
ZERO_BLOCK = bytes(BLOCK)
#: What a member's parser asking for "the rest" is handed at most at once.
REST_PIECE = 1024 * 1024
# The header formats tar-rs tells apart by the magic and version bytes (src/header.rs
# ``is_ustar``, ``is_gnu``); the old format has neither. A ustar header's name may be
# continued in its ``prefix`` field, which tar-rs joins only when the version is "00".
_USTAR = b"ustar\x0000"
_GNU = b"ustar  \x00"
_OLD = bytes(8)
# Type flags agave's writer emits: regular files ('0'; tar-rs reads the old '\0' as one too)
# and directories ('5'). Every other kind is named in the refusal.
_FILE = (b"0", b"\0")
_DIRECTORY = b"5"
_KINDS = {
    b"1": "hard link",
    b"2": "symbolic link",
    b"3": "character device",
    b"4": "block device",
    b"6": "FIFO",
    b"7": "contiguous file",
    b"D": "GNU directory dump",
    b"K": "GNU long link name",
    b"L": "GNU long name",
    b"M": "GNU multi-volume continuation",
    b"N": "GNU long names list",
    b"S": "GNU sparse file",
    b"V": "GNU volume label",
    b"g": "pax global header",
    b"x": "pax header",
    b"X": "Solaris pax header",
}
# Digits as agave's writer writes a slot or a storage id: no sign, no leading zero.
_NUMBER = r"(0|[1-9][0-9]{0,19})"
_STORAGE = re.compile(rf"accounts/{_NUMBER}\.{_NUMBER}")
_U64 = 1 << 64
# A bank snapshot's directory or manifest (agave's unpacker takes any slot's).
_OTHER_SLOT = re.compile(rf"snapshots/{_NUMBER}(?:/\1)?")


@attrs.frozen
class Header:
    """One member as its header block says: ``name`` (a directory's without its trailing
    ``/``), data ``size``, and whether it is a ``directory``."""

    name: str
    size: int
    directory: bool


def read_header(block: bytes, at: int) -> Header:
    """The member the header ``block`` at byte ``at`` describes, read as tar-rs reads it; or
    ArchiveInvalid with one line naming the member and the byte when the header is one
    agave's writer never emits (docs/architecture.md, "One reading of the tar stream"): a
    bad checksum or size field, a header format other than ustar "00", GNU or the old one, a
    ustar ``prefix``, a kind other than a regular file or a directory, a name that is not
    ASCII."""
    stored = _octal(block[148:156])
    # The sum of every byte with the checksum field counted as spaces (unsigned bytes, as
    # tar-rs sums them). Adler-32's low half is 1 + the sum of the bytes (mod 65521): exact
    # over 256 bytes (at most 65280), and ten times faster than sum() in Python.
    total = (zlib.adler32(block[:256]) & 0xFFFF) + (zlib.adler32(block[256:]) & 0xFFFF) - 2
    total += 256 - sum(block[148:156])
    if stored is None or stored != total:
        raise ArchiveInvalid(f"tar: bad header checksum at byte {at}")
    raw = block[:100].split(b"\0", 1)[0]
    if not raw.isascii():
        raise ArchiveInvalid(f"tar: a member name that is not ASCII at byte {at}")
    name = raw.decode("ascii")
    magic = block[257:265]
    if magic not in (_USTAR, _GNU, _OLD):
        raise ArchiveInvalid(
            f"tar: {name!r} at byte {at} has a header format agave does not write "
            f"(magic and version {magic!r})"
        )
    if magic == _USTAR and block[345:500] != bytes(155):
        raise ArchiveInvalid(
            f"tar: {name!r} at byte {at} continues its name in the ustar prefix field "
            "(agave does not write it)"
        )
    kind = block[156:157]
    if kind not in _FILE and kind != _DIRECTORY:
        what = _KINDS.get(kind, f"member of type {kind!r}")
        raise ArchiveInvalid(
            f"tar: {name!r} at byte {at} is a {what}; agave writes only regular files and "
            "directories"
        )
    size_field = block[124:136]
    if size_field[0] & 0x80:  # base-256, as tar-rs writes sizes of 8 GiB and more
        if size_field[0] != 0x80 or any(size_field[1:4]):  # tar-rs keeps 64 bits of it
            raise ArchiveInvalid(f"tar: bad size field at byte {at}")
        size: int | None = int.from_bytes(size_field[1:], "big")
    else:
        size = _octal(size_field)
    if size is None:
        raise ArchiveInvalid(f"tar: bad size field at byte {at}")
    directory = kind == _DIRECTORY
    if directory:
        if size:
            raise ArchiveInvalid(f"tar: directory {name!r} at byte {at} has {size} bytes of data")
        if name.endswith("/"):
            name = name[:-1]
    return Header(name, size, directory)


def storage_of(name: str) -> tuple[int, int] | None:
    """The (slot, id) of an account storage's member name ``accounts/{slot}.{id}`` as agave
    writes it; None for any other name."""
    match = _STORAGE.fullmatch(name)
    if match is None:
        return None
    slot, ident = int(match[1]), int(match[2])
    return (slot, ident) if slot < _U64 and ident < _U64 else None


class Layout:
    """The members of one snapshot archive of ``slot`` as agave writes them, in the order it
    writes them (docs/architecture.md, "One reading of the tar stream"): each name once, the
    manifest before the account storages, nothing agave's unpacker would refuse or ignore.
    :meth:`admit` each header in turn; its memory is a few ints a storage."""

    def __init__(self, slot: int) -> None:
        self.slot = slot
        self.manifest = f"snapshots/{slot}/{slot}"
        self._files = {"version", "snapshots/status_cache", self.manifest}
        self._directories = {"snapshots", f"snapshots/{slot}", "accounts"}
        self._seen: set[str] = set()
        self._storages: set[int] = set()

    def admit(self, header: Header, at: int) -> None:
        """Take the member ``header`` at byte ``at``, or ArchiveInvalid naming it."""
        name = header.name
        known = name in (self._directories if header.directory else self._files)
        if known:
            if name in self._seen:
                raise ArchiveInvalid(f"tar: {name!r} twice in the archive (again at byte {at})")
            self._seen.add(name)
            return
        storage = None if header.directory else storage_of(name)
        if storage is None:
            if other := _OTHER_SLOT.fullmatch(name):
                raise ArchiveInvalid(
                    f"tar: {name!r} at byte {at} is of slot {other[1]}, not the slot "
                    f"{self.slot} the archive's name says"
                )
            kind = "directory" if header.directory else "file"
            raise ArchiveInvalid(
                f"tar: {kind} {name!r} at byte {at} is not an entry agave writes in this archive"
            )
        if self.manifest not in self._seen:
            raise ArchiveInvalid(
                f"tar: manifest after the account storages ({name!r} at byte {at} comes "
                f"before {self.manifest})"
            )
        key = storage[0] << 64 | storage[1]
        if key in self._storages:
            raise ArchiveInvalid(f"tar: {name!r} twice in the archive (again at byte {at})")
        self._storages.add(key)


def _floor() -> int:
    return MEMBER_FLOOR


@attrs.define
class UnboundExtent:
    """Which of an archive's raw (compressed) bytes decode the members whose data no level
    binds: every member but the account storages (``version``, the status cache, the
    manifest, whose fields the bank hash leaves out), which agave writes before the
    storages, and Firedancer's status cache after them (docs/architecture.md, "A refresh
    from several sources" → "Bytes no level binds"). The walk tells it each header with the
    raw bytes its decoder had taken by then (:meth:`header`), and the end (:meth:`ended`);
    a zstd decoder that decodes frame by frame tells it where each frame's output begins
    (:meth:`frame`, from the decoding thread). :attr:`ranges` are then:

    - the head, ``(0, h)``: a member's data is decoded, in order, from bytes taken before
      the next header, so the first ``h`` raw bytes decode those before the storages;
    - the tail, from the start of the zstd frame in which the first such member after a
      storage begins to the end: frames are independent, so its members decode from those
      bytes alone. Without frame starts (another compression, or frames decoded apart) the
      tail is the whole archive: a compressed stream carries its decoder's state across
      blocks, so only its first byte is a start the tail's decoding does not depend on
      before.

    Pure (a lock between the decoding thread and the walk's)."""

    #: Raw bytes from the start that decode every member no level binds before the storages.
    head: int = 0
    #: Where the tail starts (None: no such member after a storage).
    tail: int | None = None
    #: The archive's raw bytes, once :meth:`ended`.
    size: int = 0
    #: The member being read binds nothing: the next header (or the end) sets :attr:`head`.
    _open: bool = False
    _storage_seen: bool = False
    #: The decoded offset of the next header, and the raw start of the latest frame told
    #: whose output begins at or before it (None: none told); frames told beyond it wait.
    _next: int = 0
    _frame: int | None = None
    _later: list[tuple[int, int]] = attrs.Factory(list)
    _lock: threading.Lock = attrs.field(factory=threading.Lock, eq=False, repr=False)

    def frame(self, decoded: int, raw: int) -> None:
        """A frame starting at raw byte ``raw`` decodes from the decoded stream's byte
        ``decoded`` on (told in order, before any of its output reaches the walk)."""
        with self._lock:
            if decoded <= self._next:
                self._frame = raw
            else:
                self._later.append((decoded, raw))

    def header(self, name: str, raw: int, at: int, following: int) -> None:
        """The walk reached the header of ``name`` at decoded byte ``at``, whose next header
        comes at ``following``; the decoder had taken ``raw`` bytes."""
        with self._lock:
            # every frame whose output begins at or before ``at`` was told before the bytes
            # of this header reached the walk: the latest holds its first byte
            self._take(at)
            frame = self._frame
            self._next = following
            self._take(following)
        if self._open:
            self.head = max(self.head, raw)
        storage = _STORAGE.fullmatch(name) is not None
        if not storage and self._storage_seen and self.tail is None:
            self.tail = frame if frame is not None else 0
        self._storage_seen = self._storage_seen or storage
        self._open = not storage and not self._storage_seen

    def _take(self, upto: int) -> None:
        while self._later and self._later[0][0] <= upto:
            self._frame = self._later.pop(0)[1]

    def ended(self, raw: int) -> None:
        """The walk ended after the decoder took all ``raw`` bytes of the archive."""
        if self._open:
            self.head = max(self.head, raw)
        self._open = False
        self.size = raw

    @property
    def ranges(self) -> list[tuple[int, int]]:
        """The raw byte ranges (start, end) that decode every member no level binds, in
        order, apart: the head, the tail (one range where they meet)."""
        found = [(0, self.head)] if self.head else []
        if self.tail is not None and self.tail < self.size:
            if found and self.tail <= self.head:
                found = [(0, self.size)]
            else:
                found.append((self.tail, self.size))
        return found

    @property
    def end(self) -> int:
        """Where the last range ends (0: none)."""
        return self.ranges[-1][1] if self.ranges else 0


def walk_tar(
    slot: int,
    found: set[str],
    members_allowed: Callable[[], int] = _floor,
    prover: MemberProver | None = None,
    seen: Callable[[Header, int], None] | None = None,
) -> Parser:
    """Walk the tar stream of a snapshot archive of ``slot``; add to ``found`` the name of
    each regular file member (every one is an entry agave writes: :class:`Layout`).
    ArchiveInvalid once there are more headers than ``members_allowed()`` says (asked again
    only when the count passes its last answer). ``prover`` (docs/architecture.md, "Proven
    archives") is asked for a parser of each regular member's data, fed it in the same
    pass. ``seen(header, data_at)`` is told each member the walk took, with where its data
    starts in the tar stream (the tests compare this reading with tar-rs's)."""
    walk = _Walk(Layout(slot), found, members_allowed)
    walk.prover = prover
    walk.seen = seen
    try:
        yield from walk.members()
    except EndOfInput as end:
        raise ArchiveInvalid(walk.truncated(end.at)) from None


class _Walk:
    def __init__(self, layout: Layout, found: set[str], members_allowed: Callable[[], int]) -> None:
        self.layout = layout
        self.found = found
        self.members_allowed = members_allowed
        self.headers = 0
        self.headers_limit = members_allowed()
        self.at = 0  # offset of what is being read
        self.unpacked = 0  # the sizes of the members so far, as agave's unpacker sums them
        self.inside = ""  # what the stream would end inside of, for the truncation reason
        self.prover: MemberProver | None = None
        self.seen: Callable[[Header, int], None] | None = None

    def truncated(self, end: int) -> str:
        if self.inside:
            return f"tar: the stream ends inside {self.inside} at byte {end}"
        if end > self.at:
            return f"tar: the stream ends inside a header at byte {end}"
        return f"tar: no end-of-archive blocks (the stream ends at byte {end})"

    def members(self) -> Parser:
        while True:
            self.inside = ""
            block = yield BLOCK
            if block == ZERO_BLOCK:
                yield from self.end_blocks()
                return
            self.inside = "a header"
            self.headers += 1
            if self.headers > self.headers_limit:
                self.count_header()
            header = read_header(block, self.at)
            self.layout.admit(header, self.at)
            self.count_size(header)
            self.at += BLOCK
            if self.seen is not None:
                self.seen(header, self.at)
            size, fed = header.size, 0
            if not header.directory:
                self.inside = repr(header.name)
                if not header.name.startswith("accounts/"):
                    self.found.add(header.name)
                if self.prover is not None:
                    member = self.prover.member(header.name, size)
                    if member is not None:
                        fed = yield from feed_member(member, size)
            padded = -(-size // BLOCK) * BLOCK
            if padded - fed:
                yield fed - padded
            self.at += padded

    def count_header(self) -> None:
        self.headers_limit = self.members_allowed()
        if self.headers > self.headers_limit:
            why = (
                "agave unpacks no more"
                if self.headers_limit == MAX_MEMBERS
                else "at most one per KiB of the compressed archive beyond the first "
                f"{MEMBER_FLOOR}"
            )
            raise ArchiveInvalid(
                f"tar: more than {self.headers_limit} members by byte {self.at} ({why})"
            )

    def count_size(self, header: Header) -> None:
        # agave sums every member's size once its path passed and refuses the archive past
        # its bound (docs/formats.md, "The check's limits"): a size of 2^64 - 1 is refused
        # here, at its header, never handed to a member's parser (a status cache's reaches
        # a compiled kernel, whose int64 it does not fit)
        self.unpacked += header.size
        if self.unpacked > MAX_UNPACKED_SIZE:
            raise ArchiveInvalid(
                f"tar: {header.name!r} at byte {self.at} takes the members' sizes past the "
                f"{MAX_UNPACKED_SIZE} bytes agave unpacks (too large archive)"
            )

    def end_blocks(self) -> Parser:
        self.inside = "the end-of-archive blocks"
        second = yield BLOCK
        if second != ZERO_BLOCK:
            raise ArchiveInvalid(
                f"tar: data after the end-of-archive block at byte {self.at + BLOCK}"
            )
        self.at += 2 * BLOCK
        end = self.at
        while True:  # anything after them must be zeros (GNU tar pads to its record size)
            rest = yield REST
            data = rest[: MAX_END_PADDING + 1 - (self.at - end)].tobytes()
            if data != bytes(len(data)):
                first = len(data) - len(data.lstrip(b"\0"))
                raise ArchiveInvalid(
                    f"tar: data after the end-of-archive blocks at byte {self.at + first}"
                )
            self.at += len(rest)
            if self.at - end > MAX_END_PADDING:
                raise ArchiveInvalid(
                    f"tar: more than {MAX_END_PADDING} bytes of padding after the "
                    f"end-of-archive blocks at byte {end}"
                )


def feed_member(member: Parser, size: int) -> ParserOf[int]:
    """Drive a member's parser over its ``size`` bytes of data; returns how many it took
    (the caller skips the rest). A parser that wants more than the member holds is thrown
    :class:`EndOfInput` at the member's end, which it turns into its reason."""
    left = size
    try:
        want = next(member)
        while True:
            if want is None or want == 0:  # REST or MARK: the member may end here
                if not left:
                    member.close()
                    break
                if want == 0:
                    want = member.send(None)
                    continue
                piece = min(left, REST_PIECE)
                data = yield piece
                left -= piece
                want = member.send(memoryview(data))
            elif want < 0:
                if -want > left:
                    member.throw(EndOfInput(size))
                    raise ArchiveInvalid("a member's parser went on past its end")
                yield want
                left += want
                want = member.send(None)
            else:
                if want > left:
                    member.throw(EndOfInput(size))
                    raise ArchiveInvalid("a member's parser went on past its end")
                data = yield want
                left -= want
                want = member.send(data)
    except StopIteration:
        pass
    return size - left


def _octal(field: bytes) -> int | None:
    # A header field is 8 or 12 bytes: its digits are bounded by the block itself. tar-rs's
    # ``octal_from`` (src/header.rs) takes the field up to its first NUL, trims it and hands
    # it to ``u64::from_str_radix(_, 8)``, which refuses an empty string: a blank field (all
    # NULs, all spaces, spaces then a NUL) is no number to it, so it is none here either.
    text = field.split(b"\0", 1)[0].strip(b" ")
    if not text or text.strip(b"01234567"):
        return None
    return int(text, 8)
