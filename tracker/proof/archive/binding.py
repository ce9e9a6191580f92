"""What binds an accounts proof's second read to the bytes its check read first.

The accounts level reads an archive twice (docs/architecture.md, "The accounts level" → "Two
reads"): the check's pass, which publishes the file's SHA-256, and a second read of the file
on disk, which hashes the accounts. Were the file rewritten in between, the accounts proven
would not be those of the bytes the SHA-256 names. So the check's pass takes a keyed BLAKE3
of the raw bytes in blocks of :data:`BLOCK` (:class:`BlockDigests`, a key drawn for each
check: ~3.5x cheaper than SHA-256 here, and unknowable without the key), and the second read
holds every block it reads to it (:class:`BlockCheck`): a block that differs, or bytes past
those the check read, refuse the copy. Only the blocks the second read reads are compared:
bytes it never reads cannot change what it proves.
"""

from __future__ import annotations

import blake3

from tracker.errors import ArchiveInvalid

#: Raw bytes a digest covers (the last block of a file: what is left).
BLOCK = 8 * 1024 * 1024
DIGEST = 32
CHANGED = "second read: the file changed after the check read it"


class BlockDigests:
    """The keyed BLAKE3 of each :data:`BLOCK` of the bytes given to :meth:`update`."""

    def __init__(self, key: bytes) -> None:
        self.key = key
        self.size = 0
        self._digests = bytearray()
        self._block = blake3.blake3(key=key)
        self._in_block = 0

    def update(self, data: bytes | memoryview) -> None:
        """The next raw bytes."""
        view = memoryview(data)
        while len(view):
            take = min(len(view), BLOCK - self._in_block)
            self._block.update(view[:take])
            self._in_block += take
            self.size += take
            view = view[take:]
            if self._in_block == BLOCK:
                self._digests += self._block.digest()
                self._block.reset()
                self._in_block = 0

    def digests(self) -> bytes:
        """Every block's digest, the last (partial) block's included."""
        last = self._block.digest() if self._in_block else b""
        return bytes(self._digests) + last


class BlockCheck:
    """Holds the raw bytes given to :meth:`update` to the check's blocks (``key``,
    ``digests``, ``size``: a :class:`BlockDigests`'); ArchiveInvalid at the first block that
    differs or byte past ``size``."""

    def __init__(self, key: bytes, digests: bytes, size: int) -> None:
        self._digests = digests
        self._size = size
        self._block = blake3.blake3(key=key)
        self._in_block = 0
        self.read = 0

    def left_in_block(self) -> int:
        """Bytes to read to end the current block (0 at a block's end or the check's end)."""
        if not self._in_block:
            return 0
        return min(BLOCK, self._size - (self.read - self._in_block)) - self._in_block

    def update(self, data: bytes | memoryview) -> None:
        """The next raw bytes of the second read, from the file's start."""
        view = memoryview(data)
        if self.read + len(view) > self._size:
            raise ArchiveInvalid(CHANGED)
        while len(view):
            end = min(BLOCK, self._size - (self.read - self._in_block))
            take = min(len(view), end - self._in_block)
            self._block.update(view[:take])
            self._in_block += take
            self.read += take
            view = view[take:]
            if self._in_block == end:
                self._compare()

    def _compare(self) -> None:
        number = (self.read - 1) // BLOCK
        expected = self._digests[number * DIGEST : (number + 1) * DIGEST]
        if self._block.digest() != expected:
            raise ArchiveInvalid(CHANGED)
        self._block.reset()
        self._in_block = 0
