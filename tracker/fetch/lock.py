"""One ``fetch`` per ledger at a time: an exclusive ``flock`` on ``{ledger}/.fetch.lock``.

Two fetches into one ledger share the temp file and state of an archive: the second would
delete the first's partial file and start its own, and the first would then rename bytes it
never checked into place. The second one therefore stops at once with one line. The lock
file is removed when the fetch ends; a fetch that takes the lock on a file that was
removed meanwhile (the holder ended between our open and our flock) lets it go and takes
the new one, so two fetches never hold locks on two different files of the same name.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator

from tracker.errors import FetchError

LOCK_NAME = ".fetch.lock"

#: Attempts to lock a lock file that keeps being replaced under its name.
MAX_ATTEMPTS = 20


def lock_path(ledger: str) -> str:
    """Where the lock file of ``ledger`` lives."""
    return os.path.join(ledger, LOCK_NAME)


@contextlib.contextmanager
def ledger_lock(ledger: str) -> Iterator[None]:
    """Hold the ledger's lock for the block; FetchError when another fetch holds it.
    OSError when the ledger cannot take a file (read-only, missing, no permission)."""
    fd = _acquire(lock_path(ledger))
    try:
        yield
    finally:
        # Removed while still locked: a waiter that opened it sees it unlinked and retries.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(lock_path(ledger))
        os.close(fd)


def _acquire(path: str) -> int:
    for _ in range(MAX_ATTEMPTS):
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise FetchError(
                f"another fetch is running in {os.path.dirname(path)} (it holds {path}); "
                "wait for it to end"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        if _same_file(fd, path):
            return fd
        os.close(fd)  # the holder removed it between our open and our lock: again
    raise FetchError(f"{path}: the lock file keeps being replaced; is another fetch starting?")


def _same_file(fd: int, path: str) -> bool:
    try:
        named = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (held.st_dev, held.st_ino) == (named.st_dev, named.st_ino)
