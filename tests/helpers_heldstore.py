"""A relay on 127.0.0.1 in front of a real store (SeaweedFS) that holds the requests a rule
names until the test lets them go (a store, or a network, that answers late), or passes one
on and cuts the connection once the store answered it (an answer lost on the way: the store
applied the request, its client never learns so)."""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import urlsplit

import attrs
import trio


@attrs.define
class Held:
    """Requests whose first line ``matches``: ``arrived`` is set when one comes, each is
    held until ``release`` is set."""

    matches: Callable[[str], bool]
    arrived: trio.Event = attrs.Factory(trio.Event)
    release: trio.Event = attrs.Factory(trio.Event)
    #: Not held: the first request it names is passed on and its answer lost.
    lose_answer: bool = False


class HeldStore:
    """Relays every connection to ``target``; a request is held while a :class:`Held` of
    :meth:`hold` matches its first line and was not released."""

    def __init__(self, target: str) -> None:
        parts = urlsplit(target)
        assert parts.hostname is not None and parts.port is not None
        self.host, self.port = parts.hostname, parts.port
        self.holds: list[Held] = []

    def hold(self, matches: Callable[[str], bool]) -> Held:
        """Hold the requests ``matches`` names from now on."""
        held = Held(matches)
        self.holds.append(held)
        return held

    def lose_answer(self, matches: Callable[[str], bool]) -> Held:
        """Pass the next request ``matches`` names on to the store, and cut its connection
        once the store answered (``arrived`` is set when the request comes)."""
        held = Held(matches, lose_answer=True)
        self.holds.append(held)
        return held

    async def serve(self, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen until cancelled; the relay's base URL is given to ``task_status``."""
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        task_status.started(f"http://127.0.0.1:{listeners[0].socket.getsockname()[1]}")
        await trio.serve_listeners(self._relay, listeners)

    async def _relay(self, client: trio.SocketStream) -> None:
        try:
            upstream = await trio.open_tcp_stream(self.host, self.port)
        except OSError:
            await client.aclose()
            return
        cut = trio.Event()  # the answer on its way is to be lost
        async with client, upstream, trio.open_nursery() as nursery:

            async def requests() -> None:
                with _closing():
                    while data := await client.receive_some(65536):
                        first = data[:400].decode("latin-1").split("\r\n", 1)[0]
                        if " HTTP/1." in first:
                            for held in self.holds:
                                if held.matches(first) and not held.release.is_set():
                                    held.arrived.set()
                                    if held.lose_answer:
                                        held.release.set()  # once
                                        cut.set()
                                    else:
                                        await held.release.wait()
                        await upstream.send_all(data)
                nursery.cancel_scope.cancel()

            async def answers() -> None:
                with _closing():
                    while data := await upstream.receive_some(65536):
                        if cut.is_set():
                            break  # the store answered: its client never hears it
                        await client.send_all(data)
                nursery.cancel_scope.cancel()

            nursery.start_soon(requests)
            nursery.start_soon(answers)


class _closing:
    """Ends a relay's direction quietly when either side closed."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: object, exc: object, tb: object) -> bool:
        return isinstance(exc, trio.BrokenResourceError | trio.ClosedResourceError)
