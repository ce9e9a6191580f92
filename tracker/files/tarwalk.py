"""A walk over a tar stream: headers checked, member data skipped, to the end-of-archive blocks.

:func:`walk_tar` is a parser for :class:`~tracker.files.streamparse.Feeder`. It reads each
512-byte header (checksum verified), follows GNU long names (``L``), pax extended headers
(``x``: ``path`` and ``size``) and old GNU sparse headers with extension blocks, skips every
member's data without copying it, and wants the stream to end with two zero blocks followed by
at most :data:`~tracker.files.checklimits.MAX_END_PADDING` zeros. It remembers only which of the
names it is asked about it saw as regular files, so its memory does not grow with the number of
members, and counts the headers against what its caller allows (``members_allowed``). Every
number it reads is bounded in length before it is converted.

Headers are parsed here rather than with ``tarfile.TarInfo.frombuf``: that costs ~32 µs a
header (a snapshot has a million members), this ~3 µs.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Set

from tracker.errors import ArchiveInvalid
from tracker.files.checklimits import MAX_DIGITS, MAX_END_PADDING, MEMBER_FLOOR
from tracker.files.streamparse import REST, EndOfInput, Parser, ParserOf
from tracker.proof.prover import MemberProver

BLOCK = 512
ZERO_BLOCK = bytes(BLOCK)
#: Long names and pax headers are read into memory: a real one is well under a KiB.
MAX_META = 1024 * 1024
#: What a member's parser asking for "the rest" is handed at most at once.
REST_PIECE = 1024 * 1024
# Regular files as agave's unpacker takes them: '0', the old '\0', GNU sparse 'S'.
_REGULAR = (b"0", b"\0", b"S")
_USTAR = b"ustar\x00"


def _floor() -> int:
    return MEMBER_FLOOR


def walk_tar(
    wanted: Set[str],
    found: set[str],
    members_allowed: Callable[[], int] = _floor,
    prover: MemberProver | None = None,
) -> Parser:
    """Walk a tar stream; add to ``found`` each name of ``wanted`` seen as a regular file
    (names compared as agave compares them: see :func:`entry_name`). ArchiveInvalid once
    there are more headers than ``members_allowed()`` says (asked again only when the count
    passes its last answer). ``prover`` (docs/architecture.md, "Proven archives") is asked
    for a parser of each regular member's data, fed it in the same pass."""
    walk = _Walk(wanted, found, members_allowed)
    walk.prover = prover
    try:
        yield from walk.members()
    except EndOfInput as end:
        raise ArchiveInvalid(walk.truncated(end.at)) from None


class _Walk:
    def __init__(
        self, wanted: Set[str], found: set[str], members_allowed: Callable[[], int]
    ) -> None:
        self.wanted = wanted
        self.found = found
        self.members_allowed = members_allowed
        self.headers = 0
        self.headers_limit = members_allowed()
        self.at = 0  # offset of what is being read
        self.inside = ""  # what the stream would end inside of, for the truncation reason
        self.prover: MemberProver | None = None

    def truncated(self, end: int) -> str:
        if self.inside:
            return f"tar: the stream ends inside {self.inside} at byte {end}"
        if end > self.at:
            return f"tar: the stream ends inside a header at byte {end}"
        return f"tar: no end-of-archive blocks (the stream ends at byte {end})"

    def members(self) -> Parser:
        long_name: str | None = None
        pax: dict[str, str] = {}
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
            name, size, kind = parse_header(block, self.at)
            self.at += BLOCK
            if "size" in pax:
                size = _pax_size(pax["size"], self.at - BLOCK)
            if kind in (b"L", b"x", b"X"):
                meta = yield from self.meta(size, kind)
                if kind == b"L":
                    long_name = meta.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
                else:
                    pax = parse_pax(meta, self.at - BLOCK)
                continue
            if kind == b"S" and block[482]:
                yield from self.sparse_extensions()
            name = pax.get("path", long_name or name)
            fed = 0
            self.inside = repr(name)
            if kind in _REGULAR:
                self.see(name)
                if self.prover is not None and kind != b"S":  # a sparse member's data is
                    # its pieces without the holes: not what agave would unpack
                    member = self.prover.member(entry_name(name), size)
                    if member is not None:
                        fed = yield from feed_member(member, size)
            long_name, pax = None, {}
            padded = -(-size // BLOCK) * BLOCK
            if padded - fed:
                yield fed - padded
            self.at += padded

    def count_header(self) -> None:
        self.headers_limit = self.members_allowed()
        if self.headers > self.headers_limit:
            raise ArchiveInvalid(
                f"tar: more than {self.headers_limit} members by byte {self.at} (at most "
                "one per KiB of the compressed archive beyond the first "
                f"{MEMBER_FLOOR})"
            )

    def see(self, name: str) -> None:
        if name in self.wanted:
            self.found.add(name)
        elif (normal := entry_name(name)) in self.wanted:
            self.found.add(normal)

    def meta(self, size: int, kind: bytes) -> ParserOf[bytes]:
        if size > MAX_META:
            label = "long name" if kind == b"L" else "pax header"
            raise ArchiveInvalid(f"tar: {label} of {size} bytes at byte {self.at - BLOCK}")
        self.inside = "a long name" if kind == b"L" else "a pax header"
        data = (yield size) if size else b""
        padding = -size % BLOCK
        if padding:
            yield -padding
        self.at += size + padding
        return bytes(data)

    def sparse_extensions(self) -> Parser:
        self.inside = "a sparse header"
        while True:
            extension = yield BLOCK
            self.at += BLOCK
            if not extension[504]:
                return

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


def parse_header(block: bytes, at: int) -> tuple[str, int, bytes]:
    """The name, data size and type flag of one header block; ArchiveInvalid when its checksum
    or size field is wrong."""
    stored = _octal(block[148:156])
    # The sum of every byte with the checksum field counted as spaces. Adler-32's low half is
    # 1 + the sum of the bytes (mod 65521): exact over 256 bytes (at most 65280), and ten
    # times faster than sum() in Python.
    total = (zlib.adler32(block[:256]) & 0xFFFF) + (zlib.adler32(block[256:]) & 0xFFFF) - 2
    total += 256 - sum(block[148:156])
    if stored is None or (stored != total and stored != _signed_sum(block)):
        raise ArchiveInvalid(f"tar: bad header checksum at byte {at}")
    size_field = block[124:136]
    if size_field[0] & 0x80:  # GNU base-256 for sizes of 8 GiB and more
        if size_field[0] != 0x80:
            raise ArchiveInvalid(f"tar: negative member size at byte {at}")
        size: int | None = int.from_bytes(size_field[1:], "big")
    else:
        size = _octal(size_field)
    if size is None:
        raise ArchiveInvalid(f"tar: bad size field at byte {at}")
    name = block[:100].split(b"\0", 1)[0]
    if block[257:263] == _USTAR and block[345]:
        name = block[345:500].split(b"\0", 1)[0] + b"/" + name
    return name.decode("utf-8", "surrogateescape"), size, block[156:157]


def _octal(field: bytes) -> int | None:
    # A header field is 8 or 12 bytes: its digits are bounded by the block itself.
    text = field.split(b"\0", 1)[0].strip(b" ")
    if not text:
        return 0
    if text.strip(b"01234567"):
        return None
    return int(text, 8)


def _signed_sum(block: bytes) -> int:
    # Some old tar writers summed signed chars; tarfile accepts both, so do we.
    values = [b - 256 if b > 127 else b for b in block]
    return sum(values) - sum(values[148:156]) + 256


def parse_pax(data: bytes, at: int) -> dict[str, str]:
    """The records of a pax extended header (``"%d %s=%s\\n"`` each)."""
    records: dict[str, str] = {}
    pos = 0
    while pos < len(data) and data[pos] != 0:
        space = data.find(b" ", pos, pos + 20)
        length_text = data[pos:space]
        if space < 0 or not length_text.isdigit() or not length_text.isascii():
            raise ArchiveInvalid(f"tar: bad pax header at byte {at}")
        length = int(length_text)
        record = data[space + 1 : pos + length]
        if length <= space - pos or pos + length > len(data) or not record.endswith(b"\n"):
            raise ArchiveInvalid(f"tar: bad pax header at byte {at}")
        key, sep, value = record[:-1].partition(b"=")
        if not sep:
            raise ArchiveInvalid(f"tar: bad pax header at byte {at}")
        records[key.decode("utf-8", "replace")] = value.decode("utf-8", "surrogateescape")
        pos += length
    return records


def _pax_size(text: str, at: int) -> int:
    # Bounded before int(): a string of thousands of digits would raise ValueError (Python's
    # limit on int conversion), not refuse the archive.
    if len(text) > MAX_DIGITS or not (text.isascii() and text.isdigit()):
        raise ArchiveInvalid(f"tar: bad pax size at byte {at}")
    return int(text)


def entry_name(name: str) -> str:
    """A member name as agave's unpacker compares it (Rust's ``Path::components``): empty and
    inner ``.`` parts dropped. A leading ``./`` or ``/`` is kept, and so is a trailing ``/``
    (agave refuses a file named so in a GNU header, tarfile takes it for a directory): such a
    name matches no snapshot entry."""
    parts = name.split("/")
    head, tail = parts[0], parts[-1] if len(parts) > 1 else None
    middle = [p for p in parts[1:-1] if p not in ("", ".")]
    if tail is not None and tail not in ("", "."):
        middle.append(tail)
    normal = "/".join([head, *middle]) if head else "/" + "/".join(middle)
    return normal + "/" if tail == "" and name != "/" else normal
