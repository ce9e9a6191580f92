"""The state file of a download in progress: which bytes of ``.tmp-{name}`` are on disk.

``{ledger}/.tmp-{name}`` holds the bytes written so far (``pwrite`` at their offsets), and
``{ledger}/.tmp-{name}.state`` says which ranges those are and which file they belong to (its
size and validators). A fetch that was killed starts again from the state: when the source
still offers the same file (same size, and the same ``ETag`` or ``Last-Modified`` when it
gave one), only the missing ranges are fetched; otherwise the download starts over, so bytes
of two files are never mixed. It also names the sources whose bytes those are
(``writers``): a copy that must be one source's (nothing vouches for every byte of a copy of
several: :func:`tracker.fetch.vouching.mixing_problem`) is resumed only from the one source
that wrote all of it (:func:`one_source_reason`); in a copy pooled for a full's ``accounts``
proof, the bytes that level does not bind are asked again of the first source unless it
alone wrote them (:func:`tracker.fetch.unbound.unbound_plan`). The state is replaced
atomically (temp file and rename); it records only bytes whose ``pwrite`` returned. Neither
file is ever opened through a symbolic link planted under its name (``O_NOFOLLOW``); the
state is read and written as every small file of the tracker is
(:mod:`tracker.core.smallfiles`: a regular file only, bounded, never a FIFO's blocking open;
written to a temp file created ``O_EXCL``, fsynced, renamed).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import stat

import attrs

from tracker.core.smallfiles import read_small, write_atomically
from tracker.multisource.claims import intersect
from tracker.multisource.samefile import not_same_reason
from tracker.multisource.sources import Identity
from tracker.observability.redact import redact_url

#: The longest state file read back (a state is a few hundred bytes).
MAX_STATE_BYTES = 1024 * 1024


@attrs.frozen
class State:
    """A download in progress."""

    name: str
    identity: Identity
    done: tuple[tuple[int, int], ...] = ()
    #: The sources that sent bytes of ``done`` (:func:`writer_of` their URLs), sorted
    #: (none recorded: an older state's, or nothing done).
    writers: tuple[str, ...] = ()


def writer_of(url: str) -> str:
    """How a state names the source at ``url``: its userinfo and query masked (the state
    file is 0644 in the ledger; a ``--source http://user:pw@host`` carries a password, a
    presigned URL its signature). Pure."""
    return redact_url(url)


def restart_reason(saved: State | None, offered: Identity, ranges: bool) -> str:
    """Why the bytes of ``saved`` cannot be resumed from a source offering ``offered``
    (``ranges``: it takes Range requests), one line; "" when they can or there are none."""
    if saved is None or not saved.done:
        return ""
    if saved.identity.size != offered.size:
        return f"the file's size changed ({saved.identity.size} bytes, now {offered.size})"
    if _covers(saved.done, offered.size):
        # Every byte is on disk (a run stopped in its check): nothing is asked of a source,
        # so whether it takes ranges or sends validators does not matter; the check decides
        # (agave's RPC takes neither: its 100 GB full was downloaded again).
        return ""
    if not ranges:
        return "the source does not take Range requests"
    if saved.identity.validators.if_range() is None or offered.validators.if_range() is None:
        return "the source sent no validator"
    return not_same_reason(saved.identity.validators, offered.validators) or ""


def _covers(done: tuple[tuple[int, int], ...], size: int) -> bool:
    """Whether the byte ranges ``done`` cover every byte of ``size``. Pure."""
    reached = 0
    for start, end in sorted(done):
        if start > reached:
            return False
        reached = max(reached, end)
    return reached >= size


def one_source_reason(saved: State | None, url: str) -> str:
    """Why the bytes of ``saved`` cannot be resumed into a copy that must be ``url``'s
    alone (one line); "" when there are none or that source wrote them all. Pure. The same
    size and validators do not make two sources' bytes one file's (a liar may send the
    validators of the source it lies about): the bytes an earlier run took from another
    source, joined to this one's, would be a copy of several sources that nothing vouches
    for, judged as one source's (docs/fetch.md, "Safely")."""
    if saved is None or not saved.done or saved.writers == (writer_of(url),):
        return ""
    wrote = ", ".join(saved.writers) if saved.writers else "sources not recorded"
    return f"the bytes on disk came from {wrote}, and this copy must be one source's"


def temp_path(ledger: str, name: str) -> str:
    """Where the bytes of ``name`` are written until complete."""
    return os.path.join(ledger, f".tmp-{name}")


def state_path(ledger: str, name: str) -> str:
    """The state file next to the temp file."""
    return temp_path(ledger, name) + ".state"


def load_state(ledger: str, name: str) -> State | None:
    """The saved state of ``name``'s download, or None (none, unreadable, of another name,
    or no regular temp file). Of the bytes it claims, only those the temp file really holds
    are kept: not past its end, not in its holes (a fetch syncs the bytes before it writes
    a state claiming them, so a claim over a hole was never written)."""
    try:
        raw = json.loads(read_small(state_path(ledger, name), MAX_STATE_BYTES))
        identity = Identity(
            int(raw["size"]), str(raw.get("etag", "")), str(raw.get("last_modified", ""))
        )
        claimed = [(int(s), int(e)) for s, e in raw["done"]]
        held = _data_on_disk(temp_path(ledger, name))
    except (OSError, ValueError, KeyError, TypeError, RecursionError):
        return None
    if raw.get("name") != name or any(not 0 <= s <= e <= identity.size for s, e in claimed):
        return None
    if held is None:
        return None
    writers = raw.get("writers", [])
    if not isinstance(writers, list) or not all(isinstance(w, str) for w in writers):
        return None
    done = tuple(intersect(claimed, held))
    return State(name, identity, done, tuple(sorted(set(writers))) if done else ())


#: Data extents of a temp file looked at; past them the file counts as a hole.
MAX_EXTENTS = 100_000


def _data_on_disk(path: str) -> list[tuple[int, int]] | None:
    """The byte ranges of the regular file at ``path`` that hold data (``SEEK_DATA`` /
    ``SEEK_HOLE``; the whole file where the file system cannot tell), None when it is not a
    regular file of one link (a link planted there, symbolic or hard, is not ours: a write
    through it would reach a file outside the ledger)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
            return None
        extents: list[tuple[int, int]] = []
        offset = 0
        while offset < info.st_size and len(extents) < MAX_EXTENTS:
            try:
                start = os.lseek(fd, offset, os.SEEK_DATA)
            except OSError as exc:
                if exc.errno == errno.ENXIO:  # nothing but a hole from offset on
                    break
                if exc.errno in (errno.EINVAL, errno.EOPNOTSUPP):  # cannot tell: all data
                    return [(0, info.st_size)]
                raise
            offset = min(os.lseek(fd, start, os.SEEK_HOLE), info.st_size)
            extents.append((start, offset))
        return extents
    finally:
        os.close(fd)


def save_state(ledger: str, state: State) -> None:
    """Replace the state file atomically."""
    body = {
        "name": state.name,
        "size": state.identity.size,
        "etag": state.identity.etag,
        "last_modified": state.identity.last_modified,
        "done": [list(interval) for interval in state.done],
        "writers": sorted({writer_of(w) for w in state.writers}),
    }
    path = state_path(ledger, state.name)
    # Its temp file is ``{state}.new`` (removed with it by :func:`remove_state`).
    write_atomically(path, json.dumps(body).encode(), temp_name=os.path.basename(path) + ".new")


def remove_state(ledger: str, name: str) -> None:
    """Remove the temp file and the state of ``name`` (whatever of them exists)."""
    for path in (
        temp_path(ledger, name),
        state_path(ledger, name),
        state_path(ledger, name) + ".new",
    ):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
