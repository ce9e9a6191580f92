"""The file system calls of a config load on the operator's paths, each within a bound.

A path on a hung NFS or FUSE mount blocks a ``stat`` or an ``open`` in the kernel, for as
long as the mount hangs and beyond any cancellation: one such call held ``check-config``,
``serve``'s start and every reload behind it (a reload is one at a time: every later one
waited too). Each call on a path the config names (a directory, a secret, a TLS file, the
signing key, the cache directory, the config file itself) runs in a daemon thread of its
own, and the load waits for it at most :data:`LOOK_BOUND` seconds; what a path that did not
answer means is its key's to say (docs/configuration.md, "Paths on a hung mount").
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Collection, Sequence
from typing import TypeVar, cast

_T = TypeVar("_T")

#: How long loading the config waits for one path's answer. A healthy file system answers a
#: stat in microseconds, a busy NFS server in well under a second; a mount that is hung
#: would otherwise hold check-config, serve's start and every reload behind it for good.
LOOK_BOUND = 3.0


def no_answer(path: str, bound: float) -> str:
    """What is said of ``path`` when it did not answer within ``bound`` seconds. Pure."""
    return f"{path!r} did not answer within {bound:g}s (a hung mount?)"


def not_ready(problems: Sequence[str], unanswered: Collection[str]) -> bool:
    """Whether a load's ``problems`` (their messages, without key paths) are all paths that
    did not answer: each ends with one of ``unanswered``, the :func:`no_answer` lines the
    load raised (a TLS file's is told inside another line). Such a config is not wrong, the
    machine is not ready (a mount hung, or late at boot): ``serve`` exits so that systemd
    retries it, where a real problem beside it still makes it a config error
    (docs/configuration.md, "Paths on a hung mount"). Pure."""
    return bool(problems) and all(
        any(problem.endswith(line) for line in unanswered) for problem in problems
    )


class _Asking:
    """One thread's call: what it returned or raised once :attr:`done` is set."""

    def __init__(self, key: tuple[str, ...]) -> None:
        self.key = key
        self.began = time.monotonic()
        self.done = threading.Event()
        self.value: object = None
        self.error: Exception | None = None

    def run(self, call: Callable[[], object]) -> None:
        try:
            self.value = call()
        except Exception as exc:  # handed to whoever waits: a thread raises to nobody
            self.error = exc
        finally:
            with _ASKING_LOCK:
                if _ASKING.get(self.key) is self:
                    del _ASKING[self.key]
            self.done.set()


#: The calls whose thread has not ended, by key: at most one per key however many loads ask
#: (a mount that stays hung holds one thread, never one per reload).
_ASKING: dict[tuple[str, ...], _Asking] = {}
_ASKING_LOCK = threading.Lock()


def answered(key: tuple[str, ...], call: Callable[[], _T], bound: float = LOOK_BOUND) -> _T | None:
    """What ``call()`` returns (what it raises is raised here), run in a daemon thread and
    waited for at most ``bound`` seconds from that thread's start; None when it has not
    answered by then (``call`` never returns None). ``key`` names the call: what it does, then
    the path(s) it reads. A call whose thread still runs from an earlier ask (an earlier load)
    is not made again: that thread is waited for within what is left of its bound, so a path
    that stays hung holds one thread however many loads ask, and answers None at once. The
    thread of a call that does not answer is left until it does (a daemon: it never holds the
    exit); one that cannot be started answers None as well."""
    with _ASKING_LOCK:
        asking = _ASKING.get(key)
        started = asking is None
        if asking is None:
            asking = _ASKING[key] = _Asking(key)
    if started:
        named = " ".join(part for part in key[1:] if part)
        thread = threading.Thread(
            target=asking.run, args=(call,), name=f"config look {named}", daemon=True
        )
        try:
            thread.start()
        except RuntimeError:  # no thread to be had (this process's limits): no answer
            with _ASKING_LOCK:
                del _ASKING[key]
            return None
    asking.done.wait(max(0.0, asking.began + bound - time.monotonic()))
    if not asking.done.is_set():
        return None
    if asking.error is not None:
        raise asking.error
    return cast("_T", asking.value)
