"""Archives around the one agave's own serializer wrote (tests/data/agave-snapshot/), with tar
headers agave's writer never emits: the forgeries that a reader other than agave's would read
another way (docs/architecture.md, "One reading of the tar stream"), built byte by byte."""

from __future__ import annotations

from collections.abc import Callable

import zstandard
from agave_storages import ARCHIVE
from tarrs import entries

NAME = "snapshot-100-7G3gw9TmwzT24jhJQyrPnH2QaKUZ7MHWGG9KW8XaPbDb.tar"
BLOCK = 512
USTAR = b"ustar\x0000"
GNU = b"ustar  \x00"
OLD = bytes(8)


def agave_members() -> list[tuple[str, bytes | None]]:
    """The shipped archive's members in its order: (name, data; None for a directory)."""
    tar = zstandard.ZstdDecompressor().stream_reader(ARCHIVE.read_bytes()).read()
    out: list[tuple[str, bytes | None]] = []
    for path, block, size, at in entries(tar):
        name = path.decode().removesuffix("/")
        out.append((name, None) if block[156:157] == b"5" else (name, tar[at : at + size]))
    return out


def header(
    name: bytes,
    size: int,
    kind: bytes = b"0",
    magic: bytes = USTAR,
    prefix: bytes = b"",
    extra: Callable[[bytearray], None] | None = None,
) -> bytes:
    """One header block with a correct checksum."""
    block = bytearray(BLOCK)
    block[: len(name)] = name
    block[100:108] = b"0000644\0"
    block[108:116] = b"0000000\0"
    block[116:124] = b"0000000\0"
    block[124:136] = b"%011o\0" % size
    block[136:148] = b"00000000000\0"
    block[156:157] = kind
    block[257:265] = magic
    block[345 : 345 + len(prefix)] = prefix
    if extra is not None:
        extra(block)
    block[148:156] = b" " * 8
    block[148:155] = b"%06o\0" % sum(block)
    return bytes(block)


def padded(data: bytes) -> bytes:
    return data + bytes(-len(data) % BLOCK)


def member(name: str, data: bytes | None, **options: object) -> bytes:
    """A member as agave writes it (a directory's name ends in ``/``), ``options`` as
    :func:`header` takes them."""
    if data is None:
        return header(name.encode() + b"/", 0, b"5", **options)  # type: ignore[arg-type]
    return header(name.encode(), len(data), **options) + padded(data)  # type: ignore[arg-type]


def long_name(name: bytes) -> bytes:
    """A GNU long name member naming the next member ``name``."""
    data = name + b"\0"
    return header(b"././@LongLink", len(data), b"L", GNU) + padded(data)


def pax(records: dict[str, str]) -> bytes:
    """A pax extended header member for the next member."""
    body = b""
    for key, value in records.items():
        line = f" {key}={value}\n".encode()
        length = len(line) + len(str(len(line)))
        length = len(line) + len(str(length))
        body += str(length).encode() + line
    return header(b"././@PaxHeader", len(body), b"x") + padded(body)


def sparse(name: str, data: bytes) -> bytes:
    """An old GNU sparse member: one chunk of ``data`` at offset 0, no holes."""

    def chunks(block: bytearray) -> None:
        block[386:398] = b"%011o\0" % 0
        block[398:410] = b"%011o\0" % len(data)
        block[483:495] = b"%011o\0" % len(data)

    return header(name.encode(), len(data), b"S", GNU, extra=chunks) + padded(data)


END = bytes(2 * BLOCK)


def tar_of(*parts: bytes) -> bytes:
    return b"".join(parts) + END


def forged(data: bytes) -> bytes:
    """Other bytes of the same length (a lamports byte of the first record changed)."""
    changed = bytearray(data)
    changed[16] ^= 1
    return bytes(changed)


AGAVE = agave_members()
PLAIN = [member(n, d) for n, d in AGAVE]
STORAGE = "accounts/99.2"
HONEST = dict(AGAVE)[STORAGE]
assert HONEST is not None
AT = {name: i for i, (name, _) in enumerate(AGAVE)}


def with_parts(index: int, *parts: bytes, replace: bool = False) -> bytes:
    """The shipped archive with ``parts`` put at member ``index`` (replacing it)."""
    head = PLAIN[:index]
    tail = PLAIN[index + 1 :] if replace else PLAIN[index:]
    return tar_of(*head, *parts, *tail)


def offset(index: int) -> int:
    return sum(len(part) for part in PLAIN[:index])


def long_name_forgery() -> bytes:
    """The shipped archive (plain tar) with its ``accounts/99.2`` hidden from tar-rs behind a
    GNU long name ``version`` while a pax path names it, and a forged storage that a pax path
    names ``accounts/99.2.x`` while tar-rs unpacks it as ``accounts/99.2``."""
    return with_parts(
        AT[STORAGE],
        long_name(b"version"),
        pax({"path": STORAGE}),
        member(STORAGE, HONEST),
        long_name(STORAGE.encode()),
        pax({"path": STORAGE + ".x"}),
        member(STORAGE + ".x", forged(HONEST)),
        replace=True,
    )


def compressed(tar: bytes) -> bytes:
    """``tar`` as a ``.tar.zst``."""
    return zstandard.ZstdCompressor(level=3, write_checksum=True).compress(tar)
