"""A scan process (:mod:`.scanprocs` starts them and talks to them): what it and the check's
process say to each other, and its loop (docs/architecture.md, "The accounts level" → "Every
core"). The loop runs in a process forked from the forkserver (:mod:`.scanpreload`), so this
module imports only what a scan process needs.

Over the pipe (a socket pair), first the memory's descriptor (``socket.send_fds``), then
pickled frames. Parent to process: ``("piece", number, name, valid, last, second, slot,
size)``, followed by the piece's bytes when ``size`` is -1 (no shared slot), ``last`` when it
ends its storage (then answered as an end too: one frame a storage of one piece, mainnet's
many small storages), ``second`` with a storage's first piece in the second read (``(records,
left, skip, keep)``, the arrays as bytes; else None); ``("end", number)`` (a storage of no
valid byte); ``("storages", entries, slot, size)``: small storages whole, each
``(number, name, valid, second, length)``, their bytes one after the other (as a piece's);
``("finish",)``. Process to parent, never pickled (:data:`ANSWER`: a kind,
three numbers, a body; each bounded): a batch's rows (its storage, its records, those
hashed; the rows); a SlotHistory version (its storage, its lamports; its data); a piece done
(its slot); a storage's count; a storage refused (its reason); a storage read again (what it
added and took out); at the end the sum; a failure. A storage's count (or what it added and
took out) also frees its last piece's slot: no piece-done answer for that one; a storage
whose last piece held records ends with its last batch's rows and its count in one answer. The
answer to ``storages`` holds each one's end (:func:`split_ends`) and frees their slot: one
frame and one answer for many small storages, where each cost the check's process a frame
and an answer of its own (docs/architecture.md, "What a storage costs the check's
process").
"""

from __future__ import annotations

import contextlib
import mmap
import os
import signal
import socket
import struct
import time
from collections.abc import Callable
from multiprocessing.connection import Connection

import numpy as np
import numpy.typing as npt

from tracker.errors import ArchiveInvalid
from tracker.proof.formats.lattice import LT_HASH_BYTES

#: Pieces sent to one process and not answered yet, at most (each ~4 MiB): the slots of the
#: memory the two share, :data:`SLOT_BYTES` each (a larger piece goes through the pipe).
IN_FLIGHT = 4
SLOT_BYTES = 4 * 1024 * 1024
U64 = npt.NDArray[np.uint64]
#: An answer's head (its kind and three numbers), then its body; the most bytes an answer may
#: have (a batch's rows: at most a piece's records, 40 bytes each).
ANSWER = struct.Struct("<BqQQ")
MAX_ANSWER = 64 * 1024 * 1024
ROW_BYTES = 40
ROWS, DONE, COUNT, SYSVAR, REFUSED, SUM, FAILED, REHASHED, ROWS_END, ENDS = range(1, 11)
COUNT_BYTES = struct.Struct("<Q")
#: Each answer an ``ENDS`` answer holds: its length, then the answer.
ENDS_LENGTH = struct.Struct("<I")
#: What ends a storage: the answers an ``ENDS`` answer may hold.
ENDINGS = (COUNT, REHASHED, ROWS_END)


def answer(kind: int, first: int, second: int = 0, third: int = 0, body: bytes = b"") -> bytes:
    """An answer of ``kind`` with its three numbers and its body, as a scan process sends it."""
    return ANSWER.pack(kind, first, second, third) + body


def line(body: memoryview) -> str:
    """A reason a process sent, as one line of at most 300 characters."""
    return " ".join(bytes(body).decode("utf-8", "replace").split())[:300]


def decode_answer(raw: bytes | memoryview) -> tuple[int, int, int, int, memoryview]:
    """A scan process's answer: its kind, its three numbers and its body; ValueError with
    one line for one no scan process sends (short, of no kind, rows not whole, a slot or a
    sum of another size)."""
    if len(raw) < ANSWER.size:
        raise ValueError(f"an answer of {len(raw)} bytes")
    kind, first, second, third = ANSWER.unpack_from(raw)
    body = memoryview(raw)[ANSWER.size :]
    fits = {
        ROWS: len(body) % ROW_BYTES == 0,
        DONE: 0 <= first < IN_FLIGHT and not body,
        COUNT: not body,
        SYSVAR: True,
        REFUSED: True,
        SUM: len(body) == LT_HASH_BYTES,
        FAILED: True,
        REHASHED: not body,
        ROWS_END: len(body) % ROW_BYTES == COUNT_BYTES.size,
        ENDS: 0 <= first < IN_FLIGHT and len(body) > 0,
    }
    if not fits.get(kind, False):
        raise ValueError(f"an answer of kind {kind}, {first}, and {len(body)} bytes")
    return kind, first, second, third, body


def split_ends(body: memoryview) -> list[tuple[int, int, int, int, memoryview]]:
    """The answers an ``ENDS`` answer holds, each decoded (:func:`decode_answer`); ValueError
    with one line for a length past the body or an answer that ends no storage."""
    answers = []
    at = 0
    while at < len(body):
        if at + ENDS_LENGTH.size > len(body):
            raise ValueError(f"an end's length cut at byte {at}")
        (length,) = ENDS_LENGTH.unpack_from(body, at)
        at += ENDS_LENGTH.size
        if at + length > len(body):
            raise ValueError(f"an end of {length} bytes past the answer's {len(body)}")
        each = decode_answer(body[at : at + length])
        if each[0] not in ENDINGS:
            raise ValueError(f"an end of kind {each[0]}")
        answers.append(each)
        at += length
    return answers


def serve(conn: Connection) -> None:
    """A scan process's loop (see the module); ends at ``finish`` or when the pipe closes."""
    # Ctrl-C at a terminal reaches the whole process group: the proof's process decides
    # when this ends (it closes the pipe, or kills it), as with the hashing processes
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        _serve(conn)
    except (EOFError, OSError):
        return
    except BaseException as exc:  # said to the parent in one line; the proof stops
        with contextlib.suppress(OSError):
            conn.send_bytes(answer(FAILED, 0, 0, 0, f"{type(exc).__name__}: {exc}".encode()))


def _serve(conn: Connection) -> None:
    from tracker.proof.accounts.accounthash import LocalSum, lane_sum
    from tracker.proof.accounts.newest import check_reread, rehash
    from tracker.proof.accounts.sysvars import sysvar_versions
    from tracker.proof.formats import kernels
    from tracker.proof.formats.storages import Records, StorageScan

    kernels.load()
    with socket.socket(fileno=os.dup(conn.fileno())) as raw:
        flag, fds, _, _ = socket.recv_fds(raw, 1, 1)
    # read-only: the pieces are the parent's to write, and a read-only piece is the type
    # the kernels were compiled for in the forkserver (a writable one would compile again)
    shared = (
        mmap.mmap(fds[0], 0, prot=mmap.PROT_READ)  # whole: its IN_FLIGHT slots
        if flag == b"1" and fds
        else None
    )
    for fd in fds:
        os.close(fd)
    summer = LocalSum()
    hashed = 0
    scans: dict[int, StorageScan] = {}
    refused: set[int] = set()
    # the second read's storages: their scan, what the first read found in them (records,
    # superseded versions), and what the scan met, added and took out so far
    rescans: dict[int, tuple[StorageScan, int, int, list[int]]] = {}

    # the rows of the batch of a storage's last piece, held to go with its count (one answer)
    held: dict[int, tuple[int, int, bytes]] = {}
    closing: set[int] = set()  # the storage whose last piece is being scanned

    def sink_for(number: int) -> Callable[[Records], None]:
        def sink(batch: Records) -> None:
            nonlocal hashed
            rows, counts = batch.index_rows(number << 32)
            chosen = np.flatnonzero(counts)
            lane_sum(batch, chosen, summer)
            hashed += len(chosen)
            for lamports, data in sysvar_versions(batch, rows):
                conn.send_bytes(answer(SYSVAR, number, lamports, 0, data))
            words = np.ascontiguousarray(rows, dtype="<u8").tobytes()
            if number in closing:  # a piece gives one batch: the storage's last
                held[number] = (len(batch), len(chosen), words)
            else:
                conn.send_bytes(answer(ROWS, number, len(batch), len(chosen), words))

        return sink

    def rescan_sink(
        left: U64, skip: npt.NDArray[np.int64], keep: npt.NDArray[np.int64], met: list[int]
    ) -> Callable[[Records], None]:
        def sink(batch: Records) -> None:
            added, taken_out, found = rehash(batch, left, skip, keep, summer)
            met[0] += found
            met[1] += added
            met[2] += taken_out

        return sink

    def scan_for(number: int, name: str, valid: int) -> StorageScan | None:
        if number in refused:
            return None
        if number in rescans:
            return rescans[number][0]
        scan = scans.get(number)
        if scan is None:
            scan = scans[number] = StorageScan(name, valid, sink_for(number))
        return scan

    def rescan(
        number: int, name: str, valid: int, records: int, left: bytes, skip: bytes, keep: bytes
    ) -> None:
        refused.discard(number)
        met = [0, 0, 0]
        arrays = (
            np.frombuffer(left, dtype="<u8").reshape(-1, 2),
            np.frombuffer(skip, dtype="<i8"),
            np.frombuffer(keep, dtype="<i8"),
        )
        scan = StorageScan(name, valid, rescan_sink(*arrays, met))
        rescans[number] = (scan, records, len(arrays[1]), met)

    def ended(number: int) -> bytes:
        """The answer to a storage's end: its count (with its last rows when they are held),
        or its second read's outcome."""
        if number not in rescans:
            done = scans.pop(number, None)
            count = done.count if done is not None else 0
            last = held.pop(number, None)
            if last is not None:
                records, chosen, words = last
                body = words + COUNT_BYTES.pack(count)
                return answer(ROWS_END, number, records, chosen, body)
            return answer(COUNT, number, count)
        scan, records, superseded, (found, added, taken_out) = rescans.pop(number)
        if number in refused:  # said already
            return answer(REHASHED, number)
        try:
            check_reread(scan.name, records, scan.count, found, superseded)
        except ArchiveInvalid as exc:
            refused.add(number)
            conn.send_bytes(answer(REFUSED, number, 0, 0, exc.reason.encode()))
            return answer(REHASHED, number)
        return answer(REHASHED, number, added, taken_out)

    def take(number: int, name: str, valid: int, piece: bytes | memoryview, last: bool) -> None:
        """A piece of storage ``number`` scanned (nothing once it was refused)."""
        scan = scan_for(number, name, valid)
        if scan is None:
            return
        if last:
            closing.add(number)
        try:
            scan.take(piece)
            if isinstance(scan.carry, memoryview):
                scan.carry = bytes(scan.carry)  # the slot is written again
        except ArchiveInvalid as exc:
            refused.add(number)
            scans.pop(number, None)
            rows = held.pop(number, None)
            if rows is not None:  # as any batch's: its rows, then the refusal
                conn.send_bytes(answer(ROWS, number, *rows))
            conn.send_bytes(answer(REFUSED, number, 0, 0, exc.reason.encode()))
        finally:
            closing.discard(number)

    def received(slot: int, size: int) -> bytes | memoryview:
        """A frame's bytes: in its slot of the shared memory, or next in the pipe."""
        if size < 0:
            return conn.recv_bytes()
        assert shared is not None
        return memoryview(shared)[slot * SLOT_BYTES : slot * SLOT_BYTES + size]

    while True:
        message = conn.recv()
        kind = message[0]
        if kind == "piece":
            _, number, name, valid, last, second, slot, size = message
            if second is not None:  # its second read begins
                rescan(number, name, valid, *second)
            take(number, name, valid, received(slot, size), last)
            # a storage's last piece: its end's answer says the slot is free too
            conn.send_bytes(ended(number) if last else answer(DONE, slot))
        elif kind == "storages":  # small storages whole, one after the other; one answer
            _, entries, slot, size = message
            data = memoryview(received(slot, size))  # each storage a view, not a copy
            at = 0
            ends = []
            for number, name, valid, second, length in entries:
                if second is not None:
                    rescan(number, name, valid, *second)
                take(number, name, valid, data[at : at + length], True)
                at += length
                end = ended(number)
                ends.append(ENDS_LENGTH.pack(len(end)) + end)
            conn.send_bytes(answer(ENDS, slot, 0, 0, b"".join(ends)))
        elif kind == "end":
            conn.send_bytes(ended(message[1]))
        else:  # "finish"
            total, _ = summer.total()
            assert total is not None
            cpu = round(time.process_time() * 1e6)  # its CPU, in µs (bench/accounts.py)
            conn.send_bytes(answer(SUM, 0, cpu, 0, total.astype("<u2").tobytes()))
            return
