"""Placeholder of the archive check (replaced by the real check): SHA-256 only."""

from __future__ import annotations

import hashlib
import os
import threading

import trio

from tracker.errors import ArchiveInvalid
from tracker.files.threads import Background


class GrowingFile:
    def __init__(self, fd: int) -> None:
        self._fd = os.dup(fd)
        self._cond = threading.Condition()
        self._written = 0
        self._size: int | None = None
        self._cancelled = False
        self._pos = 0

    def advance(self, written: int) -> None:
        with self._cond:
            self._written = max(self._written, written)
            self._cond.notify_all()

    def finish(self, size: int) -> None:
        with self._cond:
            self._size = size
            self._written = max(self._written, size)
            self._cond.notify_all()

    def cancel(self) -> None:
        with self._cond:
            self._cancelled = True
            self._cond.notify_all()

    def read(self, n: int) -> bytes:
        with self._cond:
            while True:
                if self._cancelled:
                    raise ArchiveInvalid("check cancelled")
                if self._written > self._pos:
                    end = min(self._written, self._pos + n)
                    break
                if self._size is not None and self._pos >= self._size:
                    return b""
                self._cond.wait()
        data = os.pread(self._fd, end - self._pos, self._pos)
        self._pos += len(data)
        return data

    def close(self) -> None:
        os.close(self._fd)


def check_stream(read: object, name: str) -> str:
    digest = hashlib.sha256()
    while data := read(1 << 20):  # type: ignore[operator]
        digest.update(data)
    return digest.hexdigest()


def check_file(path: str, name: str | None = None) -> str:
    with open(path, "rb") as f:
        return check_stream(f.read, name or os.path.basename(path))


class FollowingCheck:
    def __init__(self, growing: GrowingFile, name: str) -> None:
        self._growing = growing
        self._background = Background(self._run_and_close)
        self._name = name

    def _run_and_close(self) -> str:
        try:
            return check_stream(self._growing.read, self._name)
        finally:
            self._growing.close()

    @classmethod
    def start(cls, fd: int, name: str) -> FollowingCheck:
        return cls(GrowingFile(fd), name)

    def advance(self, written: int) -> None:
        self._growing.advance(written)

    def finish(self, size: int) -> None:
        self._growing.finish(size)

    def cancel(self) -> None:
        self._growing.cancel()

    async def result(self) -> str:
        return await self._background.result()


__all__ = ["FollowingCheck", "check_file", "trio"]
