"""Blocking zero-copy loops over non-blocking sockets, run in worker threads.

:func:`send_file` (``sendfile(2)``: file -> socket) and :class:`SocketSplice` (``splice(2)``:
socket -> pipe -> socket) move bytes without bringing them into user space. The sockets
belong to the event loop and stay non-blocking, so these wait with ``poll()``. A worker
thread is shared by every download (tracker/zerocopy/pieces.py): given a ``linger``, a
call returns once neither side could move for that long, and the event loop does the long
wait for the socket (a slow client costs its own connection, not a thread everyone needs).
Without one (:func:`send_file`'s default) the call waits itself, one second at a time, and
gives up on a client that takes nothing for STALL_TIMEOUT seconds; :meth:`SocketSplice.check`
gives up on an upstream that sends nothing for its read timeout. Failures of the source raise
:class:`~tracker.errors.SourceFailed` (which the response body raises in turn); the client's
raise OSError or TimeoutError.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import fcntl
import math
import os
import select
import socket
import struct
import termios
import time

import attrs

from tracker.errors import SourceFailed

#: A piece whose client takes nothing for this long breaks the connection.
STALL_TIMEOUT = 300.0
#: How long a worker thread waits for a side that cannot move before it returns (the event
#: loop then waits for the socket, holding no thread): long enough for a fast client to
#: drain its socket between two system calls, far shorter than any slow client's pause.
LINGER = 0.05


class Wait(enum.Enum):
    """The side a zero-copy transfer stopped for: the client's socket has no room, or the
    source's socket has no bytes."""

    CLIENT = "client"
    SOURCE = "source"


def send_file(
    out: int,
    file_fd: int,
    offset: int,
    count: int,
    *,
    crowded: bool = False,
    linger: float = math.inf,
) -> int:
    """Blocking: send ``count`` bytes of ``file_fd`` from ``offset`` to socket ``out``;
    returns how many went out: ``count``, or fewer when the socket had no room for
    ``linger`` seconds or a failure came after some bytes went (the caller waits for the
    socket to be writable, and calls again: the failure then raises, with nothing sent).

    A failure raises only from a call that sent nothing, so that the bytes a client got
    before it left are always counted (the download's log line, tracker/accounting/
    downloads.py). The socket is the event loop's non-blocking one, so this waits for room
    with poll(). A file system that cannot sendfile (some FUSE and network ones) gets the
    same bytes through pread and write instead. ``crowded``: other pieces are being sent at
    the same time (see :func:`_low_water_mark`).
    """
    _low_water_mark(out, crowded)
    room = _Room(out, linger)
    sent_total = 0
    try:
        while count:
            try:
                sent = os.sendfile(out, file_fd, offset, count)
            except BlockingIOError:
                if not room.wait():
                    break
                continue
            except OSError as exc:
                if exc.errno not in _NO_SENDFILE:
                    raise
                return sent_total + _copy_file(room, file_fd, offset, count)
            if sent == 0:
                raise SourceFailed(f"file ended at byte {offset} while being sent")
            offset, count, sent_total = offset + sent, count - sent, sent_total + sent
            room.progressed()
    except (OSError, SourceFailed):
        if not sent_total:
            raise
    return sent_total


def _low_water_mark(out: int, crowded: bool) -> None:
    """How empty socket ``out``'s queue must be before it counts as writable again.

    trio sets ``TCP_NOTSENT_LOWAT`` to 16 KiB on the sockets it accepts: each stream then
    wakes its thread for every 16 KiB its client drained. Alone, that keeps the socket full
    (one fresh-connection GET of 1 GiB: 1.3-1.6x nginx, against 0.83-0.94x with no mark);
    with several streams at once the wake-ups cost the CPU they share (8 at once: 1.55-1.75x
    nginx's CPU per GiB, against 1.10x with no mark). So: trio's mark for a stream sent
    alone, none (the kernel's default) while others are being sent.
    """
    sock = socket.socket(fileno=out)  # borrowed: detached below, never closed here
    try:
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            value = _NO_LOW_WATER_MARK if crowded else _TRIO_LOW_WATER_MARK
            sock.setsockopt(socket.IPPROTO_TCP, _TCP_NOTSENT_LOWAT, value)
    except OSError:
        pass  # a socket that refuses it is sent to as it is
    finally:
        sock.detach()


_TCP_NOTSENT_LOWAT = getattr(socket, "TCP_NOTSENT_LOWAT", 25)
_TRIO_LOW_WATER_MARK = 16 * 1024
#: The kernel's default (UINT_MAX: no mark), as a C int.
_NO_LOW_WATER_MARK = -1


#: sendfile's errors for an input it cannot take (the socket side never raises these).
_NO_SENDFILE = frozenset({errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP})
_COPY_CHUNK = 1024 * 1024


def _copy_file(room: _Room, file_fd: int, offset: int, count: int) -> int:
    """:func:`send_file` through pread and write; raises, as it does, only having sent
    nothing."""
    copied = 0
    try:
        while count:
            # At most what the socket has room for: bytes read and not written would be lost
            # when the room runs out (the caller sends the rest from the file again).
            data = os.pread(file_fd, min(count, _COPY_CHUNK), offset)
            if not data:
                raise SourceFailed(f"file ended at byte {offset} while being sent")
            view = memoryview(data)
            while view:
                try:
                    written = os.write(room.out, view)
                except BlockingIOError:
                    if not room.wait():
                        return copied
                    continue
                view = view[written:]
                offset, count, copied = offset + written, count - written, copied + written
                room.progressed()
    except (OSError, SourceFailed):
        if not copied:
            raise
    return copied


class _Room:
    """Waits for room in the send buffer of socket ``out``: False once there was none for
    ``linger`` seconds; without a linger, a client that takes nothing for STALL_TIMEOUT
    seconds raises TimeoutError."""

    def __init__(self, out: int, linger: float = math.inf) -> None:
        self.out = out
        self._linger = linger
        self._poller = select.poll()
        self._poller.register(out, select.POLLOUT)
        self._progress = time.monotonic()

    def progressed(self) -> None:
        self._progress = time.monotonic()

    def wait(self) -> bool:
        waited = min(1.0, self._linger)
        if self._poller.poll(int(waited * 1000)):
            return True
        idle = time.monotonic() - self._progress
        if idle >= self._linger:
            return False
        if idle > STALL_TIMEOUT:
            raise TimeoutError(f"client took nothing for {STALL_TIMEOUT:.0f} s")
        return True


#: Bytes a splice pipe holds (Linux's default pipe-max-size allows 1 MiB unprivileged).
PIPE_SIZE = 1024 * 1024
_SPLICE_FLAGS = getattr(os, "SPLICE_F_MOVE", 0) | getattr(os, "SPLICE_F_NONBLOCK", 0)
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
_F_GETPIPE_SZ = getattr(fcntl, "F_GETPIPE_SZ", 1032)
#: poll() events of a client that left (or whose connection broke).
CLIENT_GONE = select.POLLRDHUP | select.POLLHUP | select.POLLERR


@attrs.frozen
class ClientTook:
    """When a client was seen taking bytes (its acknowledgements shrinking the socket's
    queue) while the event loop waited for room in its socket (monotonic seconds): the
    first and the last such moment, and the longest span between two of them."""

    first: float
    last: float
    longest: float = 0.0

    def then(self, at: float) -> ClientTook:
        """Seen taking bytes again at ``at``."""
        return ClientTook(self.first, at, max(self.longest, at - self.last))


def untaken(since: float, ended: float, took: ClientTook | None) -> tuple[float, float]:
    """The longest span with no byte taken by a client, in a wait for room in its socket
    that ended at ``ended``, its span of waits running since ``since``, the client seen
    taking bytes meanwhile as ``took`` says (None: never); and when the span running at
    the end began. Each moment the client was seen taking bytes restarts the span: one
    that reads steadily, however slowly, never has a long one, while the room in its
    socket may come back only once a third of what it queues went (no
    ``TCP_NOTSENT_LOWAT``: docs/ranking.md, "Failed transfers"). Pure."""
    if took is None:
        return ended - since, since
    return max(took.first - since, took.longest, ended - took.last), took.last


@attrs.define
class SocketSplice:
    """Moves ``left`` bytes socket -> pipe -> socket, in calls of :meth:`move` (each in a
    worker thread); the pipe and what it holds stay between calls."""

    left: int
    read_end: int = -1
    write_end: int = -1
    capacity: int = 0
    buffered: int = 0
    #: The pipe took nothing although the upstream had bytes: its slots are used up (a
    #: pipe holds 256 segments, not 1 MiB of bytes; loopback segments can be small).
    #: Until the client takes some, waiting for the upstream would return at once, for
    #: ever: a busy loop burning a core while a slow client reads.
    pipe_full: bool = False
    #: When bytes last came from the source, and last went to the client (monotonic).
    arrived: float = attrs.field(factory=time.monotonic)
    delivered: float = attrs.field(factory=time.monotonic)
    #: Bytes put on the client's socket so far.
    sent: int = 0
    #: Seconds :meth:`move` (and the event loop between its calls) waited while the client's
    #: socket had no room for what the pipe held (the client paced the transfer;
    #: tracker/proxy/passthrough.py).
    client_waited: float = 0.0
    #: The longest span of those waits in which the client took no byte (the one still
    #: running included): a client that stalled, not one that reads slowly
    #: (:meth:`client_wait`).
    client_stalled: float = 0.0
    #: The running span: :attr:`sent` when its first wait began, and when (monotonic).
    _stall: tuple[int, float] = attrs.field(default=(-1, 0.0), init=False)

    def __attrs_post_init__(self) -> None:
        self.read_end, self.write_end = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        with contextlib.suppress(OSError):  # a smaller pipe only means more system calls
            fcntl.fcntl(self.write_end, _F_SETPIPE_SZ, PIPE_SIZE)
        self.capacity = fcntl.fcntl(self.write_end, _F_GETPIPE_SZ)

    @property
    def done(self) -> bool:
        """Every byte went to the client."""
        return not self.left and not self.buffered

    def close(self) -> None:
        """Close the pipe (whatever it still holds is lost)."""
        for fd in (self.read_end, self.write_end):
            if fd >= 0:
                os.close(fd)
        self.read_end = self.write_end = -1

    def move(self, src: int, out: int, linger: float) -> Wait | None:
        """Blocking: move bytes from socket ``src`` to socket ``out`` until every byte went
        (None), or until neither side could move for ``linger`` seconds: then the side to
        wait for (the client while the pipe holds bytes, else the source)."""
        readable = False
        idle_since = time.monotonic()
        while not self.done:
            moved = False
            if self.left and self.buffered < self.capacity and not self.pipe_full:
                got = self._fill(src, min(self.left, self.capacity - self.buffered))
                if got > 0:
                    moved, self.arrived = True, time.monotonic()
                elif readable and self.buffered:
                    self.pipe_full = True
            drained = self._drain(out) if self.buffered else 0
            if drained > 0:
                moved, self.delivered, self.pipe_full = True, time.monotonic(), False
            if moved:
                idle_since = time.monotonic()
                continue
            now = time.monotonic()
            if now - idle_since >= linger:
                return Wait.CLIENT if self.buffered else Wait.SOURCE
            want_in = self.left > 0 and self.buffered < self.capacity and not self.pipe_full
            readable = self._wait(src, out, want_in, min(1.0, linger))
            if drained < 0:  # the client's socket had no room: the wait was the client's
                self.client_wait(now, time.monotonic())
        return None

    def client_wait(self, began: float, ended: float, took: ClientTook | None = None) -> None:
        """Count a wait for room in the client's socket from ``began`` to ``ended``
        (monotonic), in :meth:`move` or in the event loop between its calls: in
        :attr:`client_waited`, and in :attr:`client_stalled` as part of the span of waits
        with no byte taken between them (the wait timestamps alone tell it: no clock is read
        on the byte path), a span that restarts whenever the event loop saw the client take
        bytes meanwhile (``took``: :func:`untaken`)."""
        self.client_waited += ended - began
        at, since = self._stall
        if at != self.sent:  # the client took bytes since the span's first wait: a new one
            at, since = (self.sent, began)
        longest, since = untaken(since, ended, took)
        self._stall = (at, since)
        self.client_stalled = max(self.client_stalled, longest)

    def check(self, read_timeout: float) -> None:
        """Raise SourceFailed when the source sent nothing for ``read_timeout`` seconds while
        it was waited for, TimeoutError when the client took nothing for STALL_TIMEOUT."""
        now = time.monotonic()
        if self.left and not self.buffered and now - self.arrived > read_timeout:
            raise SourceFailed(f"upstream sent nothing for {read_timeout:.0f} s")
        if self.buffered and now - self.delivered > STALL_TIMEOUT:
            raise TimeoutError(f"client took nothing for {STALL_TIMEOUT:.0f} s")

    def _fill(self, src: int, count: int) -> int:
        try:
            got = os.splice(src, self.write_end, count, flags=_SPLICE_FLAGS)
        except BlockingIOError:
            return -1
        except OSError as exc:
            raise SourceFailed(f"upstream read failed: {exc.strerror}") from exc
        if got == 0:
            raise SourceFailed("upstream closed the connection mid-body")
        self.buffered += got
        self.left -= got
        return got

    def _drain(self, out: int) -> int:
        try:
            put = os.splice(self.read_end, out, self.buffered, flags=_SPLICE_FLAGS)
        except BlockingIOError:
            return -1
        self.buffered -= put
        self.sent += put
        return put

    def _wait(self, src: int, out: int, want_in: bool, seconds: float) -> bool:
        """Wait up to ``seconds`` for the upstream (when ``want_in``) or the client; True
        when the upstream has bytes to read."""
        poller = select.poll()
        if want_in:
            poller.register(src, select.POLLIN)
        # Always watch the client: one that leaves while the upstream stalls must end the
        # transfer now, not after read_timeout (hypercorn too takes its FIN as leaving).
        poller.register(out, CLIENT_GONE | (select.POLLOUT if self.buffered else 0))
        readable = False
        for fd, events in poller.poll(int(seconds * 1000)):
            if fd == out and events & CLIENT_GONE:
                raise ConnectionResetError("client closed the connection")
            readable = readable or (fd == src and bool(events & select.POLLIN))
        return readable


def splice_to_file(
    src: int, file_fd: int, offset: int, count: int, read_timeout: float, seconds: float
) -> int:
    """Blocking: move up to ``count`` bytes arriving on socket ``src`` into ``file_fd`` at
    ``offset`` (splice(2) through a pipe: the bytes never enter user space); returns how many.

    Returns once ``seconds`` have passed, with what is on disk so far (0 when the source sent
    nothing meanwhile: the caller tracks how long it has been silent across calls), and when
    the source fails after some bytes moved (the next call then meets the failure): the
    caller accounts progress between calls. Raises SourceFailed when the peer closes the
    connection or fails before any byte moved, or sends nothing for ``read_timeout`` seconds
    within the call; OSError when the file cannot be written.
    """
    read_end, write_end = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        with contextlib.suppress(OSError):  # a smaller pipe only means more system calls
            fcntl.fcntl(write_end, _F_SETPIPE_SZ, PIPE_SIZE)
        capacity = fcntl.fcntl(write_end, _F_GETPIPE_SZ)
        return _to_file(
            src, file_fd, offset, count, (read_end, write_end, capacity), read_timeout, seconds
        )
    finally:
        os.close(read_end)
        os.close(write_end)


def _to_file(
    src: int,
    file_fd: int,
    offset: int,
    count: int,
    pipe: tuple[int, int, int],
    read_timeout: float,
    seconds: float,
) -> int:
    read_end, write_end, capacity = pipe
    moved = 0
    arrived = time.monotonic()
    until = arrived + seconds
    poller = select.poll()
    poller.register(src, select.POLLIN)
    while moved < count:
        try:
            got = os.splice(src, write_end, min(count - moved, capacity), flags=_SPLICE_FLAGS)
        except BlockingIOError:
            left = until - time.monotonic()
            if left <= 0:
                # A paused source: the caller accounts what arrived (maybe nothing), and may
                # have been cancelled meanwhile (a stopping service waits for this thread).
                break
            waited = poller.poll(max(1, int(min(left, 1.0) * 1000)))
            if not waited and time.monotonic() - arrived > read_timeout:
                raise SourceFailed(f"source sent nothing for {read_timeout:g} s") from None
            continue
        except OSError as exc:
            if moved:
                break  # account what is on disk first; the next call meets the end again
            raise SourceFailed(f"read failed: {exc.strerror}") from exc
        if got == 0:
            if moved:
                break
            raise SourceFailed("source closed the connection mid-body")
        arrived = time.monotonic()
        while got:  # the pipe is drained into the file before anything else
            put = os.splice(read_end, file_fd, got, offset_dst=offset + moved)
            if put <= 0:
                raise OSError(errno.EIO, "the file took no bytes")
            moved, got = moved + put, got - put
        if arrived > until:
            break
    return moved


def unacknowledged(fd: int) -> int:
    """Bytes in the send queue of TCP socket ``fd`` that its peer has not acknowledged
    (``SIOCOUTQ``, the same request as ``TIOCOUTQ``): it shrinks while the client reads
    and stays put while it takes nothing. -1 when it cannot be asked (a closed socket)."""
    try:
        answer = fcntl.ioctl(fd, termios.TIOCOUTQ, bytes(4))
    except (OSError, ValueError):
        return -1
    return int(struct.unpack("i", answer)[0])
