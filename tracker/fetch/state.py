"""The state file of a download in progress: which bytes of ``.tmp-{name}`` are on disk.

``{ledger}/.tmp-{name}`` holds the bytes written so far (``pwrite`` at their offsets), and
``{ledger}/.tmp-{name}.state`` says which ranges those are and which file they belong to (its
size and validators). A fetch that was killed starts again from the state: when the source
still offers the same file (same size, and the same ``ETag`` or ``Last-Modified`` when it
gave one), only the missing ranges are fetched; otherwise the download starts over, so bytes
of two files are never mixed. The state is replaced atomically (temp file and rename); it
records only bytes whose ``pwrite`` returned.
"""

from __future__ import annotations

import contextlib
import json
import os
from typing import Any

import attrs

from tracker.core.untrusted import load_json
from tracker.errors import FetchError

#: The longest state file read back (a state is a few hundred bytes).
MAX_STATE_BYTES = 1024 * 1024


@attrs.frozen
class Identity:
    """What makes two answers the same file: its size and the validators it was sent with."""

    size: int
    etag: str = ""
    last_modified: str = ""

    def same_file(self, other: Identity) -> bool:
        """True when ``other`` is provably this file: same size, and a validator that both
        have is equal (a strong ``ETag`` first, else ``Last-Modified``); with no validator
        in common they are not provably the same."""
        if self.size != other.size:
            return False
        if self.etag and other.etag and not self.etag.startswith("W/"):
            return self.etag == other.etag
        if self.last_modified and other.last_modified:
            return self.last_modified == other.last_modified
        return False


@attrs.frozen
class State:
    """A download in progress."""

    name: str
    identity: Identity
    done: tuple[tuple[int, int], ...] = ()


def temp_path(ledger: str, name: str) -> str:
    """Where the bytes of ``name`` are written until complete."""
    return os.path.join(ledger, f".tmp-{name}")


def state_path(ledger: str, name: str) -> str:
    """The state file next to the temp file."""
    return temp_path(ledger, name) + ".state"


def load_state(ledger: str, name: str) -> State | None:
    """The saved state of ``name``'s download, or None (none, unreadable, or not matching
    a temp file of at least the bytes it claims)."""
    try:
        with open(state_path(ledger, name), "rb") as f:
            raw: Any = load_json(f.read(MAX_STATE_BYTES), FetchError)
        identity = Identity(
            int(raw["size"]), str(raw.get("etag", "")), str(raw.get("last_modified", ""))
        )
        done = tuple((int(s), int(e)) for s, e in raw["done"])
        size_on_disk = os.stat(temp_path(ledger, name)).st_size
    except (OSError, FetchError, ValueError, KeyError, TypeError):
        return None
    if raw.get("name") != name or any(not 0 <= s <= e <= identity.size for s, e in done):
        return None
    if any(e > size_on_disk for _s, e in done):
        return None
    return State(name, identity, done)


def save_state(ledger: str, state: State) -> None:
    """Replace the state file atomically."""
    body = {
        "name": state.name,
        "size": state.identity.size,
        "etag": state.identity.etag,
        "last_modified": state.identity.last_modified,
        "done": [list(interval) for interval in state.done],
    }
    path = state_path(ledger, state.name)
    temp = path + ".new"
    with open(temp, "w") as f:
        json.dump(body, f)
    os.replace(temp, path)


def remove_state(ledger: str, name: str) -> None:
    """Remove the temp file and the state of ``name`` (whatever of them exists)."""
    for path in (
        temp_path(ledger, name),
        state_path(ledger, name),
        state_path(ledger, name) + ".new",
    ):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
