"""The accounts level's per-record loops, compiled with numba. Pure.

Level ``accounts`` does a few steps for every stored record: find the next record
(:mod:`tracker.proof.formats.storages`), twice (its index record in the first read, its hash in
the second), and lay the message of each newest version out for BLAKE3
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

from tracker.errors import KernelsUnavailable

F = TypeVar("F", bound=Callable[..., Any])

#: Items (records, keys) in one call from which the kernels are compiled.
COMPILE_FROM = 2048
#: Items the kernels take interpreted in all, in calls each below :data:`COMPILE_FROM`,
#: before they are compiled anyway (an archive of many storages of a few records each
#: kept them interpreted, ~13 times the CPU, until its first flush).
INTERPRETED_AT_MOST = 32 * COMPILE_FROM
_RAW: dict[str, Callable[..., Any]] = {}
_LOADED: list[bool] = []
_LOCK = threading.Lock()
_INTERPRETED = [0]  # items taken interpreted so far (a count, read and added unlocked)


class _Kernel:
    """A kernel before numba is loaded: interpreted on small inputs (the length of argument
    ``sized``; an inner kernel always), loading numba and compiling on a large one."""

    def __init__(self, function: Callable[..., Any], sized: int | None, per: int) -> None:
        self.function = function
        self.sized = sized
        self.per = per

    def __call__(self, *args: Any) -> Any:
        if self.sized is not None:
            items = len(args[self.sized]) // self.per
            if _LOADED or items >= COMPILE_FROM or _INTERPRETED[0] >= INTERPRETED_AT_MOST:
                load()
                return globals()[self.function.__name__](*args)
            _INTERPRETED[0] += items
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
    numba's cache, at its first call); from then on every call is compiled (interpreted
    under ``NUMBA_DISABLE_JIT=1``)."""
    with _LOCK:
        if _LOADED:
            return
        try:
            _load()
        except (ImportError, OSError, MemoryError) as exc:
            # LLVM's library that cannot be mapped (a memory limit), numba missing: the
            # tracker's own shortage, never the archive's (tracker.errors.own_shortage)
            detail = " ".join(str(exc).split())[:200]
            raise KernelsUnavailable(
                f"the proof's compiled kernels could not be loaded: {type(exc).__name__}: {detail}"
            ) from exc
        _LOADED.append(True)


def _load() -> None:
    import numba

    module = globals()
    config: Any = numba.config  # its settings are set from the environment, unannotated
    if config.DISABLE_JIT:
        # NUMBA_DISABLE_JIT=1, numba's switch for debugging: njit hands the bare function
        # back (no dispatcher, no cache), so every kernel stays interpreted, as a small
        # proof runs it, rather than the check failing on a good archive
        for name, function in _RAW.items():
            module[name] = _Kernel(function, None, 1)
        return
    _compile_copy()  # before the kernels that call it are compiled
    for name, function in _RAW.items():
        dispatcher = numba.njit(nogil=True, boundscheck=False)(function)
        with contextlib.suppress(RuntimeError):  # no writable cache directory
            dispatcher.enable_caching()
        module[name] = dispatcher


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


@_kernel(None)
def _default(buf: Any, off: Any, data_len: Any, executable: Any, lamports: Any) -> Any:
    """True when the record at ``off`` (of no lamports) is the default account: no data, not
    executable, rent epoch 0, owner zero (agave's ``is_default_account``)."""
    if data_len != 0 or buf[off + executable] != 0 or _word(buf, off + lamports + 8) != 0:
        return False
    for i in range(32):  # noqa: SIM110 - a loop, not all(): numba compiles no generator
        if buf[off + lamports + 16 + i] != 0:
            return False
    return True


@_kernel(None)
def _zero_key(buf: Any, at: Any) -> Any:
    """True when the 32 bytes at ``at`` are all zero (the default pubkey)."""
    for i in range(32):  # noqa: SIM110 - a loop, not all(): numba compiles no generator
        if buf[at + i] != 0:
            return False
    return True


@_kernel(0, per=136)
def scan(
    buf: Any,
    start: Any,
    end: Any,
    at: Any,
    meta: Any,
    max_data: Any,
    executable: Any,
    lamports: Any,
    pubkey: Any,
) -> Any:
    """The records wholly within ``buf[start:end]`` (``end <= len(buf)``): their offsets and
    data lengths (int64 arrays), the offset where the first record not wholly there starts,
    and the offset of a bad record (-1 when none: the scan stops there): its data length
    passes ``max_data``, or, wholly there, its executable byte (at ``executable`` in its
    header) is neither 0 nor 1, or its lamports (the u64 at ``lamports``, then the rent
    epoch and the 32-byte owner) are 0 while it is not the default account (no data, not
    executable, rent epoch 0, owner zero) or its pubkey (32 bytes at ``pubkey``) is the
    default one (agave's scan of a storage stops at such a record). ``at`` is the storage
    offset of ``buf[0]``; records start at multiples of 8 of the storage."""
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
        if buf[off + executable] > 1:
            return offsets[:count], lens[:count], off, off
        if _word(buf, off + lamports) == 0 and (
            _zero_key(buf, off + pubkey) or not _default(buf, off, data_len, executable, lamports)
        ):
            return offsets[:count], lens[:count], off, off
        offsets[count] = off
        lens[count] = data_len
        count += 1
        off = stop + (-(at + stop) & 7)
    return offsets[:count], lens[:count], off, -1


@_kernel(1)
def index_rows(words: Any, offsets: Any, shift: Any, base: Any, head: Any, fields: Any) -> Any:
    """Each record's row of the accounts index and whether it counts, in one pass (numpy took
    five gathers and as many arrays a batch): its pubkey's four little-endian words, then
    its locator ``head | (base + offset) / 8 << 1 | counts``, where ``counts`` is true when
    its lamports are not zero. ``words``: the records' buffer from byte ``shift`` on, as u64
    words (every record starts ``shift`` past a multiple of 8 of it: ValueError otherwise);
    ``fields``: where the pubkey and the lamports lie in a record (multiples of 8);
    ``base``: the storage offset of the buffer's first byte. Every record is checked to lie
    within ``words``."""
    pubkey, lamports = fields[0], fields[1]
    count = len(offsets)
    rows = np.empty((count, 5), dtype=np.uint64)
    counts = np.empty(count, dtype=np.bool_)
    for i in range(count):
        off = offsets[i] - shift
        if off < 0 or off % 8 != 0:
            raise ValueError("a record is not where its piece's records start")
        first, value = (off + pubkey) >> 3, (off + lamports) >> 3
        if first + 4 > len(words) or value + 1 > len(words):
            raise ValueError("a record lies outside its buffer")
        for word in range(4):
            rows[i, word] = words[first + word]
        counted = words[value] != np.uint64(0)
        counts[i] = counted
        place = np.uint64((base + offsets[i]) >> 3) << np.uint64(1)
        rows[i, 4] = np.uint64(head) | place | np.uint64(1 if counted else 0)
    return rows, counts


@_kernel(0)
def fingerprint_keys(keys: Any, mults: Any, golden: Any) -> Any:
    """The keyed 64-bit fingerprint of each (n, 4) pubkey of ``keys`` (four u64 words; a
    view of the index's (n, 5) rows): multiply-shift with ``mults``, times ``golden``, u64
    wrapping (``tracker.proof.accounts.spill.fingerprints``). One array expression: numpy's
    when interpreted, one fused loop compiled (0.54 against 3.1 ms for a staging buffer of
    210,000 rows: two thirds of a flush's compute, docs/architecture.md "Bounded memory")."""
    return (
        keys[:, 0] * mults[0]
        + keys[:, 1] * mults[1]
        + keys[:, 2] * mults[2]
        + keys[:, 3] * mults[3]
    ) * golden


@_kernel(1)
def group_rows(rows: Any, groups: Any, count: Any) -> Any:
    """The rows of ``rows`` (n, w) grouped by ``groups`` (n numbers below ``count``), in
    their order within each group, and where each group starts (``count`` + 1 bounds): a
    counting sort, which reads each row once in order and writes it to its group's next place,
    where numpy's stable argsort and ``take`` read the rows in a random order (2-3x slower on
    the index's staged records: docs/architecture.md, "The accounts level" → "Cost"). A
    number at or past ``count`` is refused (ValueError) before anything is written."""
    starts = np.zeros(count + 1, dtype=np.int64)
    for i in range(len(groups)):
        group = groups[i]
        if group >= count:
            raise ValueError("a group past the count")
        starts[group + 1] += 1
    for group in range(count):
        starts[group + 1] += starts[group]
    bounds = starts.copy()
    out = np.empty_like(rows)
    width = rows.shape[1]
    for i in range(len(groups)):
        group = groups[i]
        at = starts[group]
        starts[group] = at + 1
        for word in range(width):
            out[at, word] = rows[i, word]
    return out, bounds


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
def _u32(buf: Any, at: int) -> int:
    """The little-endian u32 at ``buf[at:at + 4]`` (the caller checked)."""
    return int(buf[at]) | int(buf[at + 1]) << 8 | int(buf[at + 2]) << 16 | int(buf[at + 3]) << 24


@_kernel(None)
def _count_within(buf: Any, at: int, after: int, element: int) -> Any:
    """The u64 count at ``buf[at:at + 8]`` (the caller checked) of elements of ``element``
    bytes, as a bincode reader bounds it: -1 when they cannot fit in the ``after`` bytes
    that follow it. An int64, as the other counts (a u64 would make numba unify them as
    floats)."""
    high = np.int64(_u32(buf, at + 4))
    if high >= 1 << 31:
        return np.int64(-1)
    count = high << 32 | np.int64(_u32(buf, at))
    return count if count <= after // element else np.int64(-1)


@_kernel(0, per=24)
def skip_status(
    buf: Any, start: int, end: int, hashes: int, statuses: int, left: int
) -> tuple[int, int, int, int, int]:
    """Read past one slot's status (a map of blockhash → a 32-byte blockhash, a u64 index
    and a Vec of transaction statuses: :mod:`tracker.proof.formats.statuscache` has the
    layout) in ``buf[start:end]``: ``statuses`` left of the blockhash being read, then
    ``hashes`` more blockhashes with theirs; ``left``: the member's bytes from ``start`` (a
    Vec's count is bounded by them). Returns (where it stopped, the blockhashes and the
    statuses still to read, what was wrong there: 0 nothing, 1 a result that is neither Ok
    nor Err, 2 an unknown TransactionError, 3 an unknown InstructionError, 4 a count of
    statuses past the member's end (its u64 at the stop + 40); the bytes the next item
    needs past ``end`` when it stopped short of it, else 0).

    A status is a 20-byte key and a bincode ``Result<(), TransactionError>``.
    ``TransactionError`` has 39 variants (AccountInUse .. CommitCancelled), with fields: 8
    InstructionError(u8, InstructionError), 30 DuplicateInstruction(u8), 31
    InsufficientFundsForRent { u8 }, 35 ProgramExecutionTemporarilyRestricted { u8 };
    ``InstructionError`` 55 (GenericError .. BailOut), with fields: 25 Custom(u32).
    Blockhashes are walked here too: one Python step each cost 13 µs, and blockhashes
    without statuses are zeros that compress to nothing."""
    pos = start
    while True:
        while statuses > 0:
            if pos + 24 > end:
                return pos, hashes, statuses, 0, pos + 24 - end
            tag = _u32(buf, pos + 20)
            if tag == 0:
                pos += 24
                statuses -= 1
                continue
            if tag != 1:
                return pos, hashes, statuses, 1, 0
            if pos + 28 > end:
                return pos, hashes, statuses, 0, pos + 28 - end
            error = _u32(buf, pos + 24)
            length = 28
            if error == 8:  # InstructionError(u8, InstructionError)
                if pos + 33 > end:
                    return pos, hashes, statuses, 0, pos + 33 - end
                inner = _u32(buf, pos + 29)
                if inner == 25:  # Custom(u32)
                    length = 37
                elif inner >= 55:
                    return pos, hashes, statuses, 3, 0
                else:
                    length = 33
            elif error == 30 or error == 31 or error == 35:  # one u8
                length = 29
            elif error >= 39:
                return pos, hashes, statuses, 2, 0
            if pos + length > end:
                return pos, hashes, statuses, 0, pos + length - end
            pos += length
            statuses -= 1
        if hashes == 0:
            return pos, 0, 0, 0, 0
        if pos + 48 > end:
            return pos, hashes, 0, 0, pos + 48 - end
        count = _count_within(buf, pos + 40, left - (pos + 48 - start), 24)
        if count < 0:
            return pos, hashes, 0, 4, 0
        pos += 48
        hashes -= 1
        statuses = int(count)


@_kernel(0, per=48)
def skip_nodes(
    buf: Any, start: int, end: int, nodes: int, votes: int, tail: int, left: int
) -> tuple[int, int, int, int, int, int]:
    """Read past the nodes of an epoch's stakes (``node_id_to_vote_accounts``: a node id,
    its vote accounts' Vec of 32-byte keys and its u64 total stake) in ``buf[start:end]``:
    ``votes`` keys left of the node being read, then its total stake when ``tail``, then
    ``nodes`` more nodes; ``left``: the member's bytes from ``start`` (a Vec's count is
    bounded by them). Returns (where it stopped, the nodes, the keys and the tail still to
    read, what was wrong there: 0 nothing, 1 a count of keys past the member's end (its u64
    at the stop + 32); the bytes the next item needs past ``end`` when it stopped short of
    it, else 0). A list of keys that passes ``end`` is walked to it (the caller skips the
    rest unread)."""
    pos = start
    while True:
        if votes > 0:
            whole = min(votes, (end - pos) // 32)
            pos += 32 * whole
            votes -= whole
            if votes > 0:
                return pos, nodes, votes, tail, 0, pos + 32 - end
        if tail:
            if pos + 8 > end:
                return pos, nodes, 0, tail, 0, pos + 8 - end
            pos += 8
            tail = 0
        if nodes == 0:
            return pos, 0, 0, 0, 0, 0
        if pos + 40 > end:
            return pos, nodes, 0, 0, 0, pos + 40 - end
        count = _count_within(buf, pos + 32, left - (pos + 40 - start), 32)
        if count < 0:
            return pos, nodes, 0, 0, 1, 0
        pos += 40
        nodes -= 1
        votes = int(count)
        tail = 1


def warm_up() -> None:
    """Compile (or load from numba's cache) every kernel for the argument types the accounts
    level passes, so that the first check of a process does not pay for it (~0.3 s from the
    cache, ~3 s without one)."""
    load()
    piece = np.frombuffer(bytes(256), dtype=np.uint8)  # read-only, as a storage's piece
    offsets, lens, _, _ = scan(piece, 0, 256, 0, 136, 1, 96, 48, 16)
    chosen = np.arange(len(offsets), dtype=np.int64)
    lay_out(piece, offsets, lens, chosen, np.array([48, 96, 64, 16, 136], dtype=np.int64))
    out = np.zeros(256, dtype=np.uint8)
    lay_out_into(piece, offsets, lens, chosen, np.array([48, 96, 64, 16, 136], dtype=np.int64), out)
    group_rows(np.zeros((4, 5), dtype=np.uint64), np.zeros(4, dtype=np.uint8), 64)
    rows = np.zeros((4, 5), dtype=np.uint64)  # the index's rows: their keys a view
    fingerprint_keys(rows[:, :4], np.ones(4, dtype=np.uint64), np.uint64(1))
    words = np.frombuffer(bytes(256), dtype=np.uint64)  # read-only, as a piece's words
    index_rows(words, offsets, 0, 0, np.uint64(1 << 32), np.array([16, 48], dtype=np.int64))
    skip_nodes(piece, 0, 256, 1, 0, 0, 256)  # the manifest's (a read-only piece)
