"""What binds an accounts proof's second read to the bytes its check read first.

The accounts level reads an archive twice (docs/architecture.md, "The accounts level" → "Two
reads"): the check's pass, which publishes the file's SHA-256, and a second read of the file
on disk, which hashes the accounts. Were the file rewritten in between, the accounts proven
would not be those of the bytes the SHA-256 names. So the check's pass keeps a digest of
every :data:`BLOCK` of raw bytes (:class:`BlockDigests`), and the second read takes the same
digest of each block it reads and holds it to the kept one at the block's end
(:class:`BlockCheck`): a block that differs, or bytes past those the check read, refuse the
copy. Only the blocks the second read reads are compared: bytes it never reads cannot change
what it proves.

Two digests, one after the other:

- **The SHA-256 of each prefix** that ends a block: a copy of the check's running SHA-256's
  digest (~0.3 µs a block, nothing hashed twice). Held to them, the second read takes the
  SHA-256 of what it reads from the file's start, ~0.6 s a GB on one core (1.7 GB/s here).
- **The BLAKE3 of each block alone**, from the block where the check learnt that the
  second read will read many bytes (``switch``: the storages the manifest names hold
  ``proof.accounts.accountsprover.BLAKE3_FROM`` bytes or more, and the first read left the
  second a storage to read: none is read again when every version was hashed where it lay
  and kept, as in data-heavy storages, where the blocks' BLAKE3 took 9% of the proof's CPU
  for nothing). BLAKE3 runs at 5.9 GB/s here, so the first read spends ~0.17 s a GB more
  and the second ~0.43 s a GB less: at a million accounts the second read's reading thread
  took 0.06-0.09 CPU-s instead of 0.13-0.16, and on a host of many cores the second read is
  no longer bound by its SHA-256. Where the second read reads a few storages of a large file
  (bench/verify.py's archive) the BLAKE3 of the first read would cost more than it saves:
  `verify` of that 1 GiB archive took 1.23-1.31 s with it from the start in the reading
  thread, against 1.11-1.18 without; 1.11-1.22 s in a thread of its own, against 1.04-1.05
  (2026-11-26, twelfth round, alternating), which is why it waits for the manifest.

A block's BLAKE3 is a collision-resistant digest of that block alone, so each block is held to
its own digest in its place. The check's reading thread hands its chunks to a thread of its
own for them (``apart``), so that the first read's bound stays its SHA-256. The blake3 package
releases the GIL for inputs this large, as hashlib does.
"""

from __future__ import annotations

import hashlib
import queue
import threading

import blake3

from tracker.errors import ArchiveInvalid

#: Raw bytes between two kept digests.
BLOCK = 8 * 1024 * 1024
DIGEST = 32
CHANGED = "second read: the file changed after the check read it"
#: Chunks waiting for the thread that takes the blocks' BLAKE3 (``apart``).
WAITING = 2


class BlockDigests:
    """A running SHA-256 of the bytes given to :meth:`update` (:attr:`sha`), and the digest
    of every :data:`BLOCK` of them: its prefix's SHA-256, or, from the first block that
    starts once ``switch`` is set, its own BLAKE3 (taken in a thread of its own when
    ``apart``: the chunks must not change once given, bytes; :meth:`digests` or
    :meth:`close` ends it). A ``switch`` cleared again once set stops the blocks' BLAKE3
    (the proof stopped: no second read will come); :meth:`digests` is then empty."""

    def __init__(self, switch: threading.Event | None = None, apart: bool = False) -> None:
        self.sha = hashlib.sha256()
        self.size = 0
        self._switch = switch
        self._apart = apart
        self._kept = bytearray()
        self._sha_blocks: int | None = None  # blocks kept as prefixes once switched
        self._block = blake3.blake3()
        self._taken = 0  # bytes in the blocks' BLAKE3 so far
        self._queue: queue.Queue[bytes | memoryview | None] | None = None
        self._thread: threading.Thread | None = None
        self._dropped = False  # the blocks' BLAKE3 stopped: the digests are not whole

    @property
    def sha_blocks(self) -> int:
        """How many of :meth:`digests` are prefixes' SHA-256 (the rest: blocks' BLAKE3)."""
        if self._sha_blocks is None:
            return -(-self.size // BLOCK)
        return self._sha_blocks

    def update(self, data: bytes) -> None:
        """The next raw bytes."""
        view = memoryview(data)
        while self._sha_blocks is None and len(view):
            if self.size % BLOCK == 0 and self._switch is not None and self._switch.is_set():
                self._sha_blocks = self.size // BLOCK
                break
            take = min(len(view), BLOCK - self.size % BLOCK)
            self.sha.update(view[:take])
            self.size += take
            view = view[take:]
            if self.size % BLOCK == 0:
                self._kept += self.sha.copy().digest()
        if len(view):
            self.sha.update(view)
            self.size += len(view)
            if self._switch is None or self._switch.is_set():
                self._blake3(view)
            else:  # cleared again: no second read will come (its digests are left unfinished)
                self._dropped = True

    def digests(self) -> bytes:
        """The digest of every block, the last one's whether whole or not (after the last
        :meth:`update`)."""
        self.close()
        if self._dropped:  # nothing to hold a second read to: any block it reads differs
            return b""
        if self._sha_blocks is None:
            return bytes(self._kept) + (self.sha.digest() if self.size % BLOCK else b"")
        return bytes(self._kept) + (self._block.digest() if self._taken % BLOCK else b"")

    def close(self) -> None:
        """End the thread apart, if any (after the last :meth:`update`)."""
        if self._thread is not None:
            assert self._queue is not None
            self._queue.put(None)
            self._thread.join()
            self._thread = None

    def _blake3(self, view: memoryview) -> None:
        if not self._apart:
            self._take(view)
            return
        if self._queue is None:
            self._queue = queue.Queue(WAITING)
            self._thread = threading.Thread(
                target=self._run, name="archive-check-bind", daemon=True
            )
            self._thread.start()
        self._queue.put(view)

    def _run(self) -> None:
        assert self._queue is not None
        while (data := self._queue.get()) is not None:
            self._take(data)

    def _take(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        while len(view):
            take = min(len(view), BLOCK - self._taken % BLOCK)
            self._block.update(view[:take])
            self._taken += take
            view = view[take:]
            if self._taken % BLOCK == 0:
                self._kept += self._block.digest()
                self._block.reset()


class BlockCheck:
    """Holds the raw bytes given to :meth:`update`, from the file's start, to a
    :class:`BlockDigests`' ``digests`` of ``size`` bytes whose first ``sha_blocks`` are
    prefixes' SHA-256; ArchiveInvalid at the first block that differs or byte past
    ``size``."""

    def __init__(self, digests: bytes, size: int, sha_blocks: int) -> None:
        self._digests = digests
        self._size = size
        self._sha_blocks = sha_blocks
        self._sha = hashlib.sha256()
        # The second read's blocks on blake3's own threads: the thread that reads the file
        # again is one the second read waits for (docs/architecture.md, "Every core"); the
        # digest is the same however many threads take it.
        self._block = blake3.blake3(max_threads=blake3.blake3.AUTO)
        self.read = 0
        #: Set once a block differed (or a byte came past ``size``): whoever asks
        #: :meth:`confirm` hears of it, though the thread that read it ahead raised it
        #: where no reader takes it any more (the second read past its last member).
        self.differed = False

    def confirm(self) -> None:
        """ArchiveInvalid when a block read so far differed from the check's."""
        if self.differed:
            raise ArchiveInvalid(CHANGED)

    def left_in_block(self) -> int:
        """Bytes to read to end the current block (0 at a block's end or the check's end)."""
        if not self.read % BLOCK or self.read == self._size:
            return 0
        return min(BLOCK - self.read % BLOCK, self._size - self.read)

    def update(self, data: bytes | memoryview) -> None:
        """The next raw bytes of the second read."""
        view = memoryview(data)
        if self.read + len(view) > self._size:
            self.differed = True
            raise ArchiveInvalid(CHANGED)
        while len(view):
            take = min(len(view), BLOCK - self.read % BLOCK)
            prefix = self.read // BLOCK < self._sha_blocks
            (self._sha if prefix else self._block).update(view[:take])
            self.read += take
            view = view[take:]
            if self.read % BLOCK == 0 or self.read == self._size:
                self._compare(prefix)

    def _compare(self, prefix: bool) -> None:
        number = (self.read - 1) // BLOCK
        expected = self._digests[number * DIGEST : (number + 1) * DIGEST]
        got = self._sha.copy().digest() if prefix else self._block.digest()
        if got != expected:
            self.differed = True
            raise ArchiveInvalid(CHANGED)
        if not prefix:
            self._block.reset()  # each block's BLAKE3 is of that block alone
