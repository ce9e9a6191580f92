"""Blocking calls started in a worker thread now and awaited later.

``trio.to_thread.run_sync`` waits in the calling task; to overlap a disk read or write with
network I/O the call must start, the task move on, and the result be collected afterwards.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Generic, TypeVar

import outcome
import trio

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
        token = trio.lowlevel.current_trio_token()

        def finished() -> None:
            assert self._outcome is not None
            if on_done is not None:
                on_done(self._outcome)
            self._done.set()

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

    async def settle(self) -> None:
        """Wait (shielded) until the call has finished; discard its result."""
        with trio.CancelScope(shield=True):
            await self._done.wait()
