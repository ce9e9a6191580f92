"""Blocking calls started in a worker thread now and awaited later, and blocking calls on a
path that may hang, each in a thread of its own, waited for within a bound.

``trio.to_thread.run_sync`` waits in the calling task; to overlap a disk read or write with
network I/O the call must start, the task move on, and the result be collected afterwards
(:class:`Background`). A call on a path a hung mount may hold runs in a thread of its own,
never one of trio's shared ones: waited for by a trio task within its bound, one per path
(:class:`DirectoryThreads`: the trio side of "one thread per hung path, bounded", beside
:func:`tracker.config.bounded.answered`, the synchronous callers' such as the config load),
or, on a request's path, awaited by its request and left at once when it is cancelled
(:func:`given_way`).
"""

from __future__ import annotations

import contextlib
import errno
import threading
from collections import Counter
from collections.abc import Callable
from typing import Generic, TypeVar

import attrs
import outcome
import trio

from tracker.config.bounded import LOOK_BOUND

T = TypeVar("T")


class Background(Generic[T]):
    """``function()`` running in a worker thread from construction on.

    ``on_done(outcome)`` (optional) runs in the trio thread when the call has finished,
    before any waiter wakes; ``name`` names the thread while it runs ``function``. trio's
    thread limiter is not used: callers bound their own number of calls in flight (one per
    stream).
    """

    def __init__(
        self,
        function: Callable[[], T],
        on_done: Callable[[outcome.Outcome[T]], None] | None = None,
        name: str | None = None,
    ) -> None:
        self._done = trio.Event()
        self._outcome: outcome.Outcome[T] | None = None
        #: Set once the caller gave up (:meth:`abandon`): what releases the value.
        self._release: Callable[[T], object] | None = None
        self._abandoned = False
        token = trio.lowlevel.current_trio_token()

        def finished() -> None:
            assert self._outcome is not None
            if on_done is not None:
                on_done(self._outcome)
            self._done.set()
            if self._release is not None:
                self._released()

        def deliver(result: outcome.Outcome[T]) -> None:
            self._outcome = result
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(finished)

        trio.lowlevel.start_thread_soon(function, deliver, name=name)

    async def wait(self) -> None:
        """Wait until the call has finished (its result stays for :meth:`result`)."""
        await self._done.wait()

    def done(self) -> bool:
        """True once the call has finished (and ``on_done`` ran)."""
        return self._done.is_set()

    async def result(self) -> T:
        """The call's return value; raises its exception. On cancellation the call goes on."""
        await self._done.wait()
        assert self._outcome is not None
        return self._outcome.unwrap()

    def failure(self) -> BaseException | None:
        """What the finished call raised; None when it returned or has not finished. Unlike
        :meth:`result`, looking leaves the outcome to be taken."""
        return self._outcome.error if isinstance(self._outcome, outcome.Error) else None

    def abandon(self, release: Callable[[T], object]) -> None:
        """Nobody takes the call's value: ``release(value)`` frees it (in the trio thread),
        now if the call returned, else as it returns, however late; an exception is
        dropped. Once: a second call does nothing. Instead of taking the result."""
        if self._abandoned:
            return
        self._abandoned, self._release = True, release
        if self._done.is_set():
            self._released()

    def _released(self) -> None:
        assert self._release is not None
        release, self._release = self._release, None
        if isinstance(self._outcome, outcome.Value):
            release(self._outcome.value)

    async def settle(self) -> None:
        """Wait (shielded) until the call has finished; discard its result."""
        with trio.CancelScope(shield=True):
            await self._done.wait()


@attrs.define(eq=False)
class _Call:
    """A call running on a directory: when it began (trio's clock), set once it ended."""

    began: float
    ended: trio.Event = attrs.field(factory=trio.Event)


class DirectoryThreads:
    """Blocking calls on local directories, each in a thread of its own (never trio's
    shared pool, which file answers and parsers use), at most one running per directory.
    A call that outlives its bound is abandoned by its caller and its thread left until
    the file system answers; the directory's next call is refused meanwhile, so a mount
    that stays hung holds one thread however many rounds ask, and takes nothing the other
    directories' calls wait for (no shared pool of threads or slots: their number is the
    configured directories' at most). Shared by the scrape's probes and the local files'
    checks (:class:`tracker.proof.background.localfiles.LocalProofs`); keyed by path, it
    reads the ``file_targets`` files too (:class:`tracker.discovery.targetset.TargetFinder`),
    and the disk cache's directory is looked at and listed through it at start-up and at
    each reload (:class:`tracker.cache.opening.CacheDirectories`)."""

    def __init__(self) -> None:
        #: The call running on each directory (kept until its thread ends, however late).
        self._running: dict[str, _Call] = {}

    async def run(self, directory: str, call: Callable[[], T], bound: float) -> T:
        """``call()`` on ``directory``, blocking, in a thread, within ``bound`` seconds (a
        call on the same directory still running is waited for first, within the same
        bound). Raises :class:`trio.TooSlowError` (its message a one-line reason) when no
        answer came within ``bound``, or at once when the directory's last call has run
        longer than ``bound`` (a hung mount: no second thread is started there); else
        what ``call`` raises."""
        deadline = trio.current_time() + bound
        late = f"not read within {bound:g}s (a hung mount?)"
        while (running := self._running.get(directory)) is not None:
            ago = trio.current_time() - running.began
            if ago >= bound:
                raise trio.TooSlowError(
                    f"the directory's last read, {ago:.0f}s ago, has not ended (a hung mount?)"
                )
            with trio.move_on_at(min(deadline, running.began + bound)):
                await running.ended.wait()
            if trio.current_time() >= deadline:
                raise trio.TooSlowError(late)
        mine = self._running[directory] = _Call(trio.current_time())
        try:
            thread = Background(
                call,
                on_done=lambda _outcome: self._ended(directory, mine),
                name=f"directory read {directory}",
            )
        except BaseException:  # no thread started (this process's limits): none runs
            self._ended(directory, mine)
            raise
        with trio.move_on_at(deadline):
            return await thread.result()
        raise trio.TooSlowError(late)

    def _ended(self, directory: str, call: _Call) -> None:
        """In the trio thread, once ``call`` on ``directory`` has ended: the directory is
        free for its next call."""
        call.ended.set()
        if self._running.get(directory) is call:
            del self._running[directory]


#: Seconds a call of :func:`given_way` on a place may run before the place counts as hung
#: (a stuck NFS or FUSE mount): the config load's bound on a look.
HUNG_AFTER = LOOK_BOUND

#: Per place (a directory) given to :func:`started_at` (:func:`given_way`): for each of its
#: calls running now, when it began (trio's clock) and the seconds after which it counts as
#: hung (None: :data:`HUNG_AFTER`, as it is when asked). A place one of whose calls has run
#: its bound is hung: no thread more is parked there until that call ends.
_RUNNING: dict[str, dict[object, tuple[float, float | None]]] = {}


def hung_for(place: str, now: float) -> float | None:
    """Seconds the oldest call that has run past its bound on ``place`` (:data:`HUNG_AFTER`,
    or the call's own: :func:`started_at`) has run; None when none has (not hung)."""
    running = _RUNNING.get(place)
    if not running:
        return None
    ago = [
        now - began
        for began, after in running.values()
        if now - began >= (HUNG_AFTER if after is None else after)
    ]
    return max(ago) if ago else None


def hung_reason(place: str, now: float) -> str | None:
    """Why ``place`` counts as hung at ``now`` (:func:`hung_for`), in one line; None when it
    does not."""
    ago = hung_for(place, now)
    if ago is None:
        return None
    return f"{place}: a read there {ago:.0f}s ago has not ended (a hung mount?)"


def _nothing_to_free(_value: object) -> None:
    """What a value that holds nothing (no descriptor) needs once nobody takes it."""


def started_at(
    call: Callable[[], T],
    *,
    name: str,
    place: str | None = None,
    must_run: bool = False,
    hung_after: float | None = None,
) -> Background[T]:
    """``call()`` started in a thread of its own (:class:`Background`), never one of trio's
    shared worker threads (``trio.to_thread`` holds one of its limiter's tokens until a hung
    call ends, and the daemon's other disk reads wait for those).

    ``place`` (the directory the call reads): the call is counted there while it runs, and
    once it has run ``hung_after`` seconds (:data:`HUNG_AFTER` by default) without an answer
    the place counts as hung (:func:`hung_for`): the next calls there raise TimeoutError at
    once, no thread started, until it ends, so that clients that leave and ask again while a
    mount hangs park one thread each only for that long, not for as long as it hangs. A
    thread that cannot be started (this process's limit: threads parked on a hung mount
    pile up) is a TimeoutError too, which callers answer as a hang (a 503, the file
    streamed uncached), never a 500: the call did not run. ``must_run``: started even while
    ``place`` counts as hung (a call whose caller must learn what it did, such as a
    promotion's rename), counted there all the same."""
    began = trio.current_time()
    on_done: Callable[[object], None] | None = None  # the place's bookkeeping
    if place is not None:
        reason = hung_reason(place, began)
        if reason is not None and not must_run:
            raise TimeoutError(errno.ETIMEDOUT, reason)
        mine = object()
        running = _RUNNING.setdefault(place, {})
        running[mine] = (began, hung_after)

        def ended(_outcome: object) -> None:
            running.pop(mine, None)
            if not running and _RUNNING.get(place) is running:
                del _RUNNING[place]

        on_done = ended
    try:
        return Background(call, on_done=on_done, name=name)
    except BaseException as exc:  # no thread started (this process's limits): none runs
        if on_done is not None:
            on_done(None)
        if isinstance(exc, RuntimeError):
            raise TimeoutError(errno.EAGAIN, f"{name}: no thread to be had ({exc})") from exc
        raise


async def given_way(
    call: Callable[[], T],
    release: Callable[[T], object] = _nothing_to_free,
    *,
    name: str,
    place: str | None = None,
    must_run: bool = False,
) -> T:
    """``call()`` in a thread of its own (:func:`started_at`, counted at ``place``),
    awaited, and given up on cancellation: the caller leaves at once, and the value the call
    returns once its file system answers is freed with ``release`` (a descriptor it opened
    is closed; by default nothing), never leaked. Each call is one thread hop (~35 us
    here); a hung one holds its own thread only."""
    thread = started_at(call, name=name, place=place, must_run=must_run)
    try:
        return await thread.result()
    except BaseException:  # cancelled (its value, if any, is freed), or the call failed
        thread.abandon(release)
        raise


def threads_running() -> list[str]:
    """What this process's threads other than the main one run now, for a stop held past
    its grace: each name once, with how many run it (``cache temp removal x2``), sorted.
    trio's idle workers are not counted: its thread cache names a worker ``Trio thread N``
    while it waits for a call, and after the call's own name while it runs one."""
    main = threading.main_thread()
    names = Counter(
        t.name
        for t in threading.enumerate()
        if t is not main and not t.name.startswith("Trio thread ")
    )
    return [f"{name} x{count}" if count > 1 else name for name, count in sorted(names.items())]
