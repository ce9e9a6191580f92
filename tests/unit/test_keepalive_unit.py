"""KeepAlive's bookkeeping with a fake clock (the server around it:
tests/integration/test_keepalive.py)."""

from __future__ import annotations

import attrs

from tracker.zerocopy.keepalive import KeepAlive


@attrs.define(eq=False)
class Conn:
    name: str
    shut: int = 0

    def shut_down(self) -> None:
        self.shut += 1


@attrs.define
class Clock:
    now: float = 0.0

    def __call__(self) -> float:
        return self.now


def keep_alive(timeout: float = 5.0) -> tuple[KeepAlive, Clock]:
    clock = Clock()
    return KeepAlive(timeout, clock=clock), clock


def test_expired_are_those_idle_for_the_whole_timeout_oldest_first() -> None:
    ka, clock = keep_alive()
    a, b, c = Conn("a"), Conn("b"), Conn("c")
    for conn, at in ((a, 0.0), (b, 1.0), (c, 2.0)):
        clock.now = at
        ka.idle(conn)
    assert list(ka.expired(4.9)) == []
    assert list(ka.expired(5.0)) == [a]
    assert list(ka.expired(6.5)) == [a, b]
    assert list(ka.expired(100.0)) == [a, b, c]


def test_idle_again_restarts_from_then() -> None:
    ka, clock = keep_alive()
    a, b = Conn("a"), Conn("b")
    ka.idle(a)
    clock.now = 1.0
    ka.idle(b)
    clock.now = 3.0
    ka.busy(a)
    ka.idle(a)  # answered a request: idle again from 3.0, behind b
    assert list(ka.expired(6.0)) == [b]
    assert list(ka.expired(8.0)) == [b, a]


def test_a_busy_connection_never_expires() -> None:
    ka, _clock = keep_alive()
    a = Conn("a")
    ka.idle(a)
    ka.busy(a)
    assert list(ka.expired(1e9)) == []
    ka.busy(a)  # twice (a request, then its close) is harmless


def test_close_expired_shuts_each_down_once() -> None:
    ka, clock = keep_alive(timeout=1.0)
    a, b = Conn("a"), Conn("b")
    ka.idle(a)
    clock.now = 0.5
    ka.idle(b)
    clock.now = 1.2
    assert ka.close_expired() == 1
    assert (a.shut, b.shut) == (1, 0)
    assert ka.close_expired() == 0  # a is forgotten once shut down
    clock.now = 2.0
    assert ka.close_expired() == 1
    assert (a.shut, b.shut) == (1, 1)


def test_stop_shuts_down_the_idle_and_every_one_idle_later() -> None:
    ka, _clock = keep_alive()
    idle, busy = Conn("idle"), Conn("busy")
    ka.idle(idle)
    ka.stop()
    assert (idle.shut, busy.shut) == (1, 0)
    ka.idle(busy)  # its answer ended after the stop
    assert busy.shut == 1
    assert ka.close_expired() == 0
