"""The walk of an archive request in proxy mode: the order of its byte path's decisions, a
plain state machine with no I/O at all.

What docs/http-api.md promises ("Archive answers", "With an object store", "Verified archives")
is decided by the pure stages of :mod:`tracker.proxy.decisions`; this module orders them, as
h11's connection orders an HTTP exchange: a :class:`Walk` is the visible state (its
:class:`Stage` and what the stages before learned), and :func:`next_step` takes it with the
reply to the step before and gives the next state and the next step: a lookup it needs
(:class:`NeedCopy`, :class:`NeedNow`, ...) or a decision. Each stage is one small function
below, named in ``_STAGES``; there is no generator to follow. The executor
(:mod:`tracker.proxy.streamer`) performs the step and replies with the lookup's value, or
whether the decision answered the request (True) or passed (False).
tests/unit/test_plan.py drives the same function with a table of answers, without sockets.

A stage is asked only once the lookup it needs is done, because what it reads can change
while the request waits (a promotion ends, a refresh starts, another replica takes a lock):
docs/architecture.md, "The byte path as a plan", draws the stages, what each is asked after
and what it decides.

A decision may *pass* when performing it shows that it cannot answer (the bucket's URL could
not be signed, the cached file vanished, the bucket's stream or the holder failed, a refresh
ended before it could be read): the request then goes on to the next decision of ``stored``,
or from a miss's decision to ``fallback``. :func:`prefetch_walk` starts the walk of a refresh
with no client (``cache_prefetch``) at its own stage. A start is given the index's size
first, so that it carries its early head (:func:`tracker.proxy.decisions.early_head`): the
executors perform, they do not decide.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import TypeVar

import attrs

from tracker.proxy.decisions import (
    AfterClaim,
    AfterMiss,
    Asked,
    Bucket,
    CacheHit,
    Claim,
    Claimed,
    Copy,
    Decision,
    Found,
    Gone,
    JoinShared,
    Miss,
    Mode,
    Now,
    OwnRefresh,
    Redirect,
    Relay,
    StartPrefetch,
    StartShared,
    Stored,
    claimed,
    early_head,
    fallback,
    on_miss,
    prefetches,
    redirect,
    stored,
)

# -- the walk --------------------------------------------------------------------------------------


@attrs.frozen
class NeedCopy:
    """Lookup: what the disk cache may hold of the file (a :class:`Copy`), after waiting for
    a promotion of it in flight."""


@attrs.frozen
class NeedNow:
    """Lookup: the index and the refreshes of the file now (a :class:`Now`). ``settle``:
    first wait until no other request here is asking the bucket for the file's lock."""

    settle: bool = False


@attrs.frozen
class NeedSize:
    """Lookup: the index's size of the file (an int, 0: unknown)."""


@attrs.frozen
class NeedPromoted:
    """Lookup: whether the refresh the request just read (and could not answer from) was
    promoted into the cache meanwhile (a bool)."""


@attrs.frozen
class NeedInBucket:
    """Lookup: whether the bucket holds the file (a bool)."""


@attrs.frozen
class NeedFound:
    """Lookup (prefetch): whether the file is its group's best, who advertises it, and
    whether the disk cache holds it (a :class:`Prefetching`)."""


@attrs.frozen
class Prefetching:
    """The facts a prefetch starts from."""

    best: bool
    found: Found
    cached: bool


Lookup = NeedCopy | NeedNow | NeedSize | NeedPromoted | NeedInBucket | NeedFound
#: :class:`Claim` is asked like a lookup (its reply: a :class:`Claimed`), but it takes the
#: lock: it is part of the path a request takes.
Step = Lookup | Decision
Reply = Copy | Now | Claimed | Prefetching | int | bool | None
_T = TypeVar("_T")


class Stage(enum.Enum):
    """Where a walk is: the step it gave last, and so what its next reply is."""

    #: A request, nothing asked yet.
    START = "start"
    #: :class:`Redirect` given (reply: answered).
    REDIRECT = "redirect"
    #: :class:`NeedCopy` given, the copy the stored stage decides on.
    COPY = "copy"
    #: A stored copy given (reply: answered); ``Walk.todo`` holds the ones after it.
    STORED = "stored"
    #: :class:`Miss` given (counted: its reply tells nothing).
    MISS = "miss"
    #: :class:`NeedNow` given after a miss (reply: a :class:`Now`).
    ON_MISS = "on_miss"
    #: :class:`Claim` given (reply: a :class:`Claimed`).
    CLAIM = "claim"
    #: :class:`NeedSize` given before a start or a holder (reply: an int).
    SIZE = "size"
    #: The miss's decision given (``Walk.decided``; reply: answered).
    MISSED = "missed"
    #: :class:`NeedPromoted` given after a refresh read passed (reply: a bool).
    PROMOTED = "promoted"
    #: :class:`NeedCopy` given once that refresh was promoted (reply: a :class:`Copy`).
    PROMOTED_COPY = "promoted_copy"
    #: :class:`CacheHit` given on the copy that refresh became (reply: answered).
    PROMOTED_HIT = "promoted_hit"
    #: :class:`NeedNow` given for the fallback (reply: a :class:`Now`).
    FALLBACK = "fallback"
    #: The last decision given (a relay, :class:`Gone`, a prefetch's start).
    LAST = "last"
    #: Over: no step follows.
    DONE = "done"
    #: A prefetch, nothing asked yet.
    PREFETCH = "prefetch"
    #: :class:`NeedFound` given (reply: a :class:`Prefetching`).
    FOUND = "found"
    #: :class:`NeedInBucket` given (reply: a bool).
    IN_BUCKET = "in_bucket"
    #: A prefetch's :class:`Claim` given (reply: a :class:`Claimed`).
    PREFETCH_CLAIM = "prefetch_claim"


@attrs.frozen
class Walk:
    """The state of one walk, all of it visible: the facts it started from, its stage and
    what the steps before it learned. :func:`next_step` gives the next one."""

    asked: Asked
    mode: Mode
    #: Some source of the file can be asked (else a relay is :class:`Gone`).
    relayable: bool = True
    stage: Stage = Stage.START
    #: The stored copies still to try after the one given.
    todo: tuple[Stored, ...] = ()
    #: The miss's decision: waiting for the file's size, or given.
    decided: AfterMiss | AfterClaim | None = None
    #: What asking the bucket for the file's lock gave.
    claim: Claimed | None = None


def request_walk(asked: Asked, mode: Mode, *, relayable: bool = True) -> Walk:
    """The walk of an archive request, before its first step."""
    return Walk(asked, mode, relayable)


def prefetch_walk(bucket: bool) -> Walk:
    """The walk of a refresh with no client: :func:`prefetches`, then with a ``bucket`` the
    bucket's copy and its lock; it ends in :class:`StartPrefetch`, or in nothing."""
    return Walk(Asked("GET"), Mode(bucket=Bucket() if bucket else None), stage=Stage.PREFETCH)


def next_step(walk: Walk, reply: Reply = None) -> tuple[Walk, Step | None]:
    """The state after ``walk`` got ``reply`` (to the step it gave last: a lookup's value,
    or whether a decision answered; None at the start), and the step it gives next; None
    once the walk is over."""
    return _STAGES[walk.stage](walk, reply)


def _give(
    walk: Walk,
    stage: Stage,
    step: Step,
    *,
    todo: tuple[Stored, ...] | None = None,
    decided: AfterMiss | AfterClaim | None = None,
    claim: Claimed | None = None,
) -> tuple[Walk, Step]:
    """``step`` given at ``stage``, with what the stage learned (None: as before); a relay,
    when no source is left to ask, is :class:`Gone` (a kept file, ``ordering.holdings``, whose
    copies did not answer). Built field by field: ``attrs.evolve`` would cost several times
    the whole walk (it is on every proxied request's path)."""
    if isinstance(step, Relay):
        stage, step = Stage.LAST, step if walk.relayable else Gone()
    after = Walk(
        walk.asked,
        walk.mode,
        walk.relayable,
        stage,
        walk.todo if todo is None else todo,
        walk.decided if decided is None else decided,
        walk.claim if claim is None else claim,
    )
    return after, step


def _over(walk: Walk, _reply: Reply = None) -> tuple[Walk, Step | None]:
    return Walk(walk.asked, walk.mode, walk.relayable, Stage.DONE), None


def _start(walk: Walk, _reply: Reply) -> tuple[Walk, Step | None]:
    if redirect(walk.asked, walk.mode) is not None:
        return _give(walk, Stage.REDIRECT, Redirect())
    return _give(walk, Stage.COPY, NeedCopy())


def _redirected(walk: Walk, reply: Reply) -> tuple[Walk, Step | None]:
    return _over(walk) if _as(bool, reply) else _give(walk, Stage.COPY, NeedCopy())


def _copy(walk: Walk, reply: Reply) -> tuple[Walk, Step | None]:
    return _stored_next(walk, stored(walk.asked, walk.mode, _as(Copy, reply)))


def _stored_next(walk: Walk, todo: tuple[Stored, ...]) -> tuple[Walk, Step | None]:
    first, rest = todo[0], todo[1:]
    return _give(walk, Stage.MISS if isinstance(first, Miss) else Stage.STORED, first, todo=rest)


def _stored(walk: Walk, reply: Reply) -> tuple[Walk, Step | None]:
    return _over(walk) if _as(bool, reply) else _stored_next(walk, walk.todo)


def _missed(walk: Walk, _reply: Reply) -> tuple[Walk, Step | None]:
    return _give(walk, Stage.ON_MISS, NeedNow(settle=walk.mode.shares))


def _on_miss(walk: Walk, reply: Reply) -> tuple[Walk, Step | None]:
    step = on_miss(walk.asked, walk.mode, _as(Now, reply))
    if isinstance(step, Claim):
        return _give(walk, Stage.CLAIM, step)
    if isinstance(step, StartShared | OwnRefresh):
        return _give(walk, Stage.SIZE, NeedSize(), decided=step)
    return _give(walk, Stage.MISSED, step, decided=step)


def _claimed(walk: Walk, reply: Reply) -> tuple[Walk, Step | None]:
    return _give(walk, Stage.SIZE, NeedSize(), claim=_as(Claimed, reply))


def _sized(walk: Walk, reply: Reply) -> tuple[Walk, Step | None]:
    size = _as(int, reply)
    step = walk.decided
    if walk.claim is not None:
        step = claimed(walk.asked, walk.mode, walk.claim, size)
    early = early_head(walk.asked, size)
    if isinstance(step, StartShared):
        step = StartShared(step.keep, step.locked, early)
    elif isinstance(step, OwnRefresh):
        step = OwnRefresh(step.keep, early)
    assert step is not None  # a size is asked for a decision, or after a claim
    return _give(walk, Stage.MISSED, step, decided=step)


def _decided(walk: Walk, reply: Reply) -> tuple[Walk, Step | None]:
    if _as(bool, reply):
        return _over(walk)
    if isinstance(walk.decided, JoinShared | StartShared | OwnRefresh):
        return _give(walk, Stage.PROMOTED, NeedPromoted())
    return _give(walk, Stage.FALLBACK, NeedNow())  # passed: what is true now decides


def _promoted(walk: Walk, reply: Reply) -> tuple[Walk, Step | None]:
    """The ``promoted`` stage: a refresh read passed, as it was promoted meanwhile; the copy
    it became answers as a cache hit."""
    if _as(bool, reply):
        return _give(walk, Stage.PROMOTED_COPY, NeedCopy())
    return _give(walk, Stage.FALLBACK, NeedNow())


def _promoted_copy(walk: Walk, reply: Reply) -> tuple[Walk, Step | None]:
    if _as(Copy, reply) is Copy.SERVABLE:
        return _give(walk, Stage.PROMOTED_HIT, CacheHit())
    return _give(walk, Stage.FALLBACK, NeedNow())


def _promoted_hit(walk: Walk, reply: Reply) -> tuple[Walk, Step | None]:
    return _over(walk) if _as(bool, reply) else _give(walk, Stage.FALLBACK, NeedNow())


def _fallback(walk: Walk, reply: Reply) -> tuple[Walk, Step | None]:
    return _give(walk, Stage.LAST, fallback(walk.asked, _as(Now, reply)))


def _prefetch(walk: Walk, _reply: Reply) -> tuple[Walk, Step | None]:
    return _give(walk, Stage.FOUND, NeedFound())


def _found(walk: Walk, reply: Reply) -> tuple[Walk, Step | None]:
    facts = _as(Prefetching, reply)
    if not prefetches(facts.best, facts.found, facts.cached):
        return _over(walk)
    if walk.mode.bucket is None:
        return _give(walk, Stage.LAST, StartPrefetch())
    return _give(walk, Stage.IN_BUCKET, NeedInBucket())


def _in_bucket(walk: Walk, reply: Reply) -> tuple[Walk, Step | None]:
    if _as(bool, reply):
        return _over(walk)  # clients are sent to the bucket's copy
    return _give(walk, Stage.PREFETCH_CLAIM, Claim())


def _prefetch_claimed(walk: Walk, reply: Reply) -> tuple[Walk, Step | None]:
    claim = _as(Claimed, reply)
    if claim is Claimed.HOLDER:  # another replica's lock: it refreshes the file
        return _over(walk)
    return _give(walk, Stage.LAST, StartPrefetch(locked=claim is Claimed.LOCK))


_STAGES: dict[Stage, Callable[[Walk, Reply], tuple[Walk, Step | None]]] = {
    Stage.START: _start,
    Stage.REDIRECT: _redirected,
    Stage.COPY: _copy,
    Stage.STORED: _stored,
    Stage.MISS: _missed,
    Stage.ON_MISS: _on_miss,
    Stage.CLAIM: _claimed,
    Stage.SIZE: _sized,
    Stage.MISSED: _decided,
    Stage.PROMOTED: _promoted,
    Stage.PROMOTED_COPY: _promoted_copy,
    Stage.PROMOTED_HIT: _promoted_hit,
    Stage.FALLBACK: _fallback,
    Stage.LAST: _over,
    Stage.DONE: _over,
    Stage.PREFETCH: _prefetch,
    Stage.FOUND: _found,
    Stage.IN_BUCKET: _in_bucket,
    Stage.PREFETCH_CLAIM: _prefetch_claimed,
}


def _as(kind: type[_T], reply: Reply) -> _T:
    """``reply`` checked to be the kind the step asked for."""
    if not isinstance(reply, kind) or (kind is int and isinstance(reply, bool)):
        raise TypeError(f"the walk expected a {kind.__name__}, got {reply!r}")
    return reply
