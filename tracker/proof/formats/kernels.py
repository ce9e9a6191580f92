"""The accounts level's per-record loops, compiled with numba. Pure.

Level ``accounts`` does a few steps for every stored record: find the next record
(:mod:`tracker.proof.formats.storages`), find or make its pubkey's entry
(:mod:`tracker.proof.accounts.pubkeyindex`), lay its message out for BLAKE3
(:mod:`tracker.proof.accounts.accounthash`). In Python or in numpy rounds they cost ~1.5 µs a
record, twice BLAKE3 itself; compiled, a few hundredths (docs/architecture.md, "The accounts level",
has the measurements). Every kernel releases the GIL (``nogil``), and every read is checked
against its buffer's length here, since numba checks no index: the callers pass ``end`` within
``buf`` and the offsets the scan found, and the kernels never read past them.

Compiled when first given a large input (:data:`COMPILE_FROM` items: a storage's piece holds
~30,000 records), then kept in numba's cache (``__pycache__`` next to this file, or the
user's cache directory) where one is writable; without one each process compiles once (~3 s).
Loading numba and the compiled code costs a process ~0.4 s and ~170 MB of RSS once, so a
small proof (the few storages of a test archive, an archive with a handful of accounts) runs
the same functions interpreted and loads nothing; once loaded, every call is compiled.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from typing import Any, TypeVar, cast

import numpy as np

F = TypeVar("F", bound=Callable[..., Any])

#: Places a bucket of the pubkey index's table.
WIDE = 8
#: Items (records, keys) in one call from which the kernels are compiled.
COMPILE_FROM = 2048
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_RAW: dict[str, Callable[..., Any]] = {}
_LOADED: list[bool] = []
_LOCK = threading.Lock()


class _Kernel:
    """A kernel before numba is loaded: interpreted on small inputs (the length of argument
    ``sized``; an inner kernel always), loading numba and compiling on a large one."""

    def __init__(self, function: Callable[..., Any], sized: int | None, per: int) -> None:
        self.function = function
        self.sized = sized
        self.per = per

    def __call__(self, *args: Any) -> Any:
        if self.sized is not None and (_LOADED or len(args[self.sized]) >= COMPILE_FROM * self.per):
            load()
            return globals()[self.function.__name__](*args)
        with np.errstate(over="ignore"):  # u64 arithmetic wraps, as compiled
            return self.function(*args)


def _kernel(sized: int | None, per: int = 1) -> Callable[[F], F]:
    """Register a kernel; ``sized``: the argument whose length (over ``per``: bytes a
    record at least) says how many items a call has (None: an inner kernel)."""

    def register(function: F) -> F:
        _RAW[function.__name__] = function
        return cast(F, _Kernel(function, sized, per))

    return register


def load() -> None:
    """Load numba and put every kernel's compiled form in its place (compiled, or read from
    numba's cache, at its first call); from then on every call is compiled."""
    with _LOCK:
        if _LOADED:
            return
        import numba

        module = globals()
        _compile_copy()  # before the kernels that call it are compiled
        for name, function in _RAW.items():
            dispatcher = numba.njit(nogil=True, boundscheck=False)(function)
            with contextlib.suppress(RuntimeError):  # no writable cache directory
                dispatcher.enable_caching()
            module[name] = dispatcher
        _LOADED.append(True)


def _copy(dst: Any, at: Any, src: Any, start: Any, count: Any) -> None:
    """``dst[at:at + count] = src[start:start + count]``; the caller has checked that both
    lie within their arrays. Compiled (:func:`_compile_copy`), one memcpy."""
    dst[at : at + count] = src[start : start + count]


def _compile_copy() -> None:
    """Give :func:`_copy` its compiled form: one ``memcpy`` (LLVM's intrinsic), where numba
    lowers a slice assignment to a loop of its own, ~5x slower for the few dozen bytes of an
    account's fields (docs/architecture.md, "The accounts level" → "Cost").

    The one use of numba below its documented API: ``overload`` and ``intrinsic`` are
    public, the context's ``make_array`` and ``cgutils.raw_memcpy`` are not; so
    pyproject.toml pins numba's minor version. Canary:
    tests/unit/test_hashworker.py::test_the_compiled_copy_copies_what_a_slice_copies."""
    from numba.core import cgutils, types
    from numba.extending import intrinsic, overload

    raw_memcpy: Any = cgutils.raw_memcpy  # unannotated in numba

    def typed(typingctx: Any, dst: Any, at: Any, src: Any, start: Any, count: Any) -> Any:
        def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
            dst_arg, at_arg, src_arg, start_arg, count_arg = args
            into = context.make_array(signature.args[0])(context, builder, dst_arg)
            outof = context.make_array(signature.args[2])(context, builder, src_arg)
            raw_memcpy(
                builder,
                builder.gep(into.data, [at_arg]),
                builder.gep(outof.data, [start_arg]),
                count_arg,
                1,
            )
            return context.get_dummy_value()

        return types.void(dst, at, src, start, count), codegen

    memcpy: Any = intrinsic(typed)

    def copied(dst: Any, at: Any, src: Any, start: Any, count: Any) -> Any:
        def compiled(dst: Any, at: Any, src: Any, start: Any, count: Any) -> None:
            memcpy(dst, at, src, start, count)

        return compiled

    overload(_copy, jit_options={"nogil": True})(copied)


@_kernel(None)
def _word(buf: Any, at: int) -> Any:
    """The little-endian u64 at ``buf[at:at + 8]`` (any alignment; the caller checked)."""
    value = np.uint64(0)
    for i in range(7, -1, -1):
        value = (value << np.uint64(8)) | np.uint64(buf[at + i])
    return value


@_kernel(0, per=136)
def scan(buf: Any, start: Any, end: Any, at: Any, meta: Any, max_data: Any) -> Any:
    """The records wholly within ``buf[start:end]`` (``end <= len(buf)``): their offsets and
    data lengths (int64 arrays), the offset where the first record not wholly there starts,
    and the offset of a record whose data length passes ``max_data`` (-1 when none: the scan
    stops there). ``at`` is the storage offset of ``buf[0]``; records start at multiples of 8
    of the storage."""
    end = min(end, len(buf))
    room = max(0, end - start) // meta + 1
    offsets = np.empty(room, dtype=np.int64)
    lens = np.empty(room, dtype=np.int64)
    limit = np.uint64(max_data)
    count = 0
    off = start
    while off + meta <= end:
        data_len = _word(buf, off + 8)
        if data_len > limit:
            return offsets[:count], lens[:count], off, off
        stop = off + meta + np.int64(data_len)
        if stop > end:
            break
        offsets[count] = off
        lens[count] = data_len
        count += 1
        off = stop + (-(at + stop) & 7)
    return offsets[:count], lens[:count], off, -1


@_kernel(3)
def lay_out(buf: Any, offsets: Any, lens: Any, chosen: Any, fields: Any) -> Any:
    """The messages of the records ``chosen`` (indexes into ``offsets``), each ``lamports ||
    data || executable || owner || pubkey``, end to end in one new buffer, with where each
    starts and ends in it. ``fields`` gives the record's layout: lamports, executable, owner,
    pubkey, and where the data starts (offsets within a record)."""
    total = 0
    for i in chosen:
        total += 8 + lens[i] + 65
    out = np.empty(total, dtype=np.uint8)
    starts, ends = lay_out_into(buf, offsets, lens, chosen, fields, out)
    return out, starts, ends


@_kernel(3)
def lay_out_into(buf: Any, offsets: Any, lens: Any, chosen: Any, fields: Any, out: Any) -> Any:
    """:func:`lay_out` into ``out``, which holds the messages' bytes (8 + data + 65 a
    record) at least: a hash worker's shared memory (docs/architecture.md, "The accounts
    level" → "Every core"). Returns where each message starts and ends in ``out``."""
    lamports, executable, owner, pubkey, data = (
        fields[0],
        fields[1],
        fields[2],
        fields[3],
        fields[4],
    )
    starts = np.empty(len(chosen), dtype=np.int64)
    ends = np.empty(len(chosen), dtype=np.int64)
    # every copy is checked here, whatever the caller passed: compiled, a copy is a memcpy
    reach = max(lamports + 8, executable + 1, owner + 32, pubkey + 32, data)
    pos = 0
    for n, i in enumerate(chosen):
        off = offsets[i]
        size = lens[i]
        if off < 0 or size < 0 or off + reach > len(buf) or off + data + size > len(buf):
            raise ValueError("a record lies outside its buffer")
        if pos + 73 + size > len(out):
            raise ValueError("the messages pass the end of their buffer")
        starts[n] = pos
        _copy(out, pos, buf, off + lamports, 8)
        pos += 8
        _copy(out, pos, buf, off + data, size)
        pos += size
        out[pos] = buf[off + executable]
        _copy(out, pos + 1, buf, off + owner, 32)
        _copy(out, pos + 33, buf, off + pubkey, 32)
        pos += 65
        ends[n] = pos
    return starts, ends


@_kernel(None)
def _shift(table: Any) -> Any:
    """64 less the bits of a bucket number (the table has a power of two of rows)."""
    bits = 0
    while (1 << bits) < table.shape[0]:
        bits += 1
    return np.uint64(64 - bits)


@_kernel(1)
def wanted_records(buf: Any, rel: Any, meta: Any, max_data: Any, lamports: Any) -> Any:
    """Of the records starting at ``rel`` (sorted offsets into ``buf``, a second read's bytes),
    how many lie wholly in ``buf`` in a row from the first, their data lengths, and the index
    of the first one that cannot be the record the first read saw (a data length over
    ``max_data``, or zero lamports: the first read counted it), -1 when none."""
    n = len(rel)
    lens = np.empty(n, dtype=np.int64)
    size = len(buf)
    for i in range(n):
        r = rel[i]
        if r < 0:
            return lens[:i], i, i
        if r + meta > size:
            return lens[:i], i, -1
        data_len = _word(buf, r + 8)
        if data_len > np.uint64(max_data):
            return lens[:i], i, i
        if r + meta + np.int64(data_len) > size:
            return lens[:i], i, -1
        if _word(buf, r + lamports) == 0:
            return lens[:i], i, i
        lens[i] = data_len
    return lens, n, -1


@_kernel(None)
def _bucket(k0: Any, k1: Any, k2: Any, k3: Any, mults: Any, shift: Any) -> Any:
    mixed = (k0 * mults[0] + k1 * mults[1] + k2 * mults[2] + k3 * mults[3]) * _GOLDEN
    return np.int64(mixed >> shift), np.uint8(mixed & np.uint64(0xFF))


@_kernel(1)
def find(buf: Any, at: Any, keys: Any, table: Any, prints: Any, mults: Any, count: Any) -> Any:
    """Each pubkey's entry, the 32 bytes at ``buf[at[i]:at[i] + 32]``, making one for a
    pubkey not seen before (its words into ``keys[count]``, then the next): returns the
    entries, whether each was made, and the new count. Buckets of :data:`WIDE` places
    (entry + 1, 0 for empty) probed linearly; the caller keeps the table under 100% full
    and ``keys`` large enough (``count + len(at)`` entries)."""
    n = len(at)
    entry = np.empty(n, dtype=np.int64)
    made = np.zeros(n, dtype=np.bool_)
    mask = table.shape[0] - 1
    shift = _shift(table)
    for i in range(n):
        p = at[i]
        k0, k1 = _word(buf, p), _word(buf, p + 8)
        k2, k3 = _word(buf, p + 16), _word(buf, p + 24)
        bucket, printed = _bucket(k0, k1, k2, k3, mults, shift)
        while True:
            done = False
            for place in range(WIDE):
                held = np.int64(table[bucket, place])
                if held == 0:
                    keys[count, 0], keys[count, 1] = k0, k1
                    keys[count, 2], keys[count, 3] = k2, k3
                    table[bucket, place] = count + 1
                    prints[bucket, place] = printed
                    entry[i] = count
                    made[i] = True
                    count += 1
                    done = True
                    break
                if prints[bucket, place] == printed:
                    e = held - 1
                    if (
                        keys[e, 0] == k0
                        and keys[e, 1] == k1
                        and keys[e, 2] == k2
                        and keys[e, 3] == k3
                    ):
                        entry[i] = e
                        done = True
                        break
            if done:
                break
            bucket = (bucket + 1) & mask
    return entry, made, count


@_kernel(0)
def place(ids: Any, keys: Any, table: Any, prints: Any, mults: Any) -> None:
    """Put the entries ``ids`` (distinct, already made, not in the table) into an empty
    place each: the first one of the buckets from their own on."""
    mask = table.shape[0] - 1
    shift = _shift(table)
    for e in ids:
        bucket, printed = _bucket(keys[e, 0], keys[e, 1], keys[e, 2], keys[e, 3], mults, shift)
        while True:
            free = -1
            for spot in range(WIDE):
                if table[bucket, spot] == 0:
                    free = spot
                    break
            if free >= 0:
                table[bucket, free] = e + 1
                prints[bucket, free] = printed
                break
            bucket = (bucket + 1) & mask


def warm_up() -> None:
    """Compile (or load from numba's cache) every kernel for the argument types the accounts
    level passes, so that the first check of a process does not pay for it (~0.3 s from the
    cache, ~3 s without one)."""
    load()
    piece = np.frombuffer(bytes(256), dtype=np.uint8)  # read-only, as a storage's piece
    offsets, lens, _, _ = scan(piece, 0, 256, 0, 136, 1)
    chosen = np.arange(len(offsets), dtype=np.int64)
    lay_out(piece, offsets, lens, chosen, np.array([48, 96, 64, 16, 136], dtype=np.int64))
    keys = np.zeros((2, 4), dtype=np.uint64)
    table = np.zeros((2, WIDE), dtype=np.uint32)
    prints = np.zeros((2, WIDE), dtype=np.uint8)
    mults = np.ones(4, dtype=np.uint64)
    find(piece, offsets + 16, keys, table, prints, mults, 0)
    find(
        keys.view(np.uint8).reshape(-1), np.zeros(1, dtype=np.int64), keys, table, prints, mults, 0
    )
    place(np.zeros(0, dtype=np.int64), keys, table, prints, mults)
    wanted_records(piece, offsets, 136, 1, 48)
