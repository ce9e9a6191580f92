"""What binds an accounts proof's second read to the bytes its check read first.

The accounts level reads an archive twice (docs/architecture.md, "The accounts level" → "Two
reads"): the check's pass, which publishes the file's SHA-256, and a second read of the file
on disk, which hashes the accounts. Were the file rewritten in between, the accounts proven
would not be those of the bytes the SHA-256 names. So the check's pass keeps the digest of
its running SHA-256 at the end of every :data:`BLOCK` of raw bytes (:class:`PrefixDigests`:
a copy of the hash's state, ~0.3 µs a block, nothing hashed twice), and the second read takes
the SHA-256 of what it reads from the file's start and holds it to those digests at every
block's end (:class:`PrefixCheck`): a prefix that differs, or bytes past those the check read,
refuse the copy. Only the blocks the second read reads are compared: bytes it never reads
cannot change what it proves. SHA-256 releases the GIL while it hashes, where the blake3
package holds it.
"""

from __future__ import annotations

import hashlib

from tracker.errors import ArchiveInvalid

#: Raw bytes between two kept digests.
BLOCK = 8 * 1024 * 1024
DIGEST = 32
CHANGED = "second read: the file changed after the check read it"


class PrefixDigests:
    """A running SHA-256 of the bytes given to :meth:`update` (:attr:`sha`), with the digest
    of every prefix that ends a :data:`BLOCK` kept."""

    def __init__(self) -> None:
        self.sha = hashlib.sha256()
        self.size = 0
        self._kept = bytearray()

    def update(self, data: bytes | memoryview) -> None:
        """The next raw bytes."""
        view = memoryview(data)
        while len(view):
            take = min(len(view), BLOCK - self.size % BLOCK)
            self.sha.update(view[:take])
            self.size += take
            view = view[take:]
            if self.size % BLOCK == 0:
                self._kept += self.sha.copy().digest()

    def digests(self) -> bytes:
        """The digest of every prefix ending a block, then of all the bytes (when they do not
        end a block)."""
        last = self.sha.digest() if self.size % BLOCK else b""
        return bytes(self._kept) + last


class PrefixCheck:
    """Holds the raw bytes given to :meth:`update`, from the file's start, to a
    :class:`PrefixDigests`' ``digests`` of ``size`` bytes; ArchiveInvalid at the first prefix
    that differs or byte past ``size``."""

    def __init__(self, digests: bytes, size: int) -> None:
        self._digests = digests
        self._size = size
        self._sha = hashlib.sha256()
        self.read = 0

    def left_in_block(self) -> int:
        """Bytes to read to end the current block (0 at a block's end or the check's end)."""
        if not self.read % BLOCK or self.read == self._size:
            return 0
        return min(BLOCK - self.read % BLOCK, self._size - self.read)

    def update(self, data: bytes | memoryview) -> None:
        """The next raw bytes of the second read."""
        view = memoryview(data)
        if self.read + len(view) > self._size:
            raise ArchiveInvalid(CHANGED)
        while len(view):
            take = min(len(view), BLOCK - self.read % BLOCK)
            self._sha.update(view[:take])
            self.read += take
            view = view[take:]
            if self.read % BLOCK == 0 or self.read == self._size:
                self._compare()

    def _compare(self) -> None:
        number = (self.read - 1) // BLOCK
        expected = self._digests[number * DIGEST : (number + 1) * DIGEST]
        if self._sha.copy().digest() != expected:
            raise ArchiveInvalid(CHANGED)
