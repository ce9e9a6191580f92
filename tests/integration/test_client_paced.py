"""A relayed transfer is paced by its client: the pump reads the source only as fast as the
client takes the bytes. One a slow client paced says nothing of its source's speed and is not
recorded, while a slow source is measured at its own pace whatever the client
(docs/ranking.md, "Failed transfers"). Real parts: an upstream on 127.0.0.1, the tracker's
own components (no cache), a raw client on its own socket reading at a set pace, on both
byte paths (the splice and the relay through Python).
"""

from __future__ import annotations

import socket
from typing import Any

import pytest
import trio
from helpers_bytes import MiB, archive_bytes
from helpers_proxy import GROUP, proxy_tracker, wait_for
from helpers_upstream import Behaviour, FakeUpstream, serving
from names import full_name

from tracker.ordering.index import TargetKey
from tracker.proxy import transfers
from tracker.zerocopy import pieces

KiB = 1024
NAME = full_name(1000)
#: Larger than what the loopback's socket buffers hold between the tracker and the client,
#: so that the slow client paces most of the transfer.
DATA = archive_bytes(12 * MiB, seed=11)
#: The slow client's pace; the fast source sends at loopback speed, hundreds of MB/s.
CLIENT_RATE = 8 * MiB


class PacedClient:
    """A raw HTTP/1.1 GET on its own socket, its answer read at a set pace, 16 KiB at a
    time."""

    def __init__(self, sock: trio.socket.SocketType) -> None:
        self.sock = sock

    @classmethod
    async def get(cls, base: str, target: str, *, small_buffer: bool) -> PacedClient:
        host, port = base.removeprefix("http://").rsplit(":", 1)
        sock = trio.socket.socket()
        if small_buffer:  # a slow link: little waits in the client's socket
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * KiB)
        await sock.connect((host, int(port)))
        await sock.send(f"GET {target} HTTP/1.1\r\nhost: {host}\r\n\r\n".encode())
        return cls(sock)

    async def _body_start(self) -> bytearray:
        """The body's first bytes, read with the head after it (a 200's)."""
        data = bytearray()
        while b"\r\n\r\n" not in data:
            data += await self.sock.recv(16 * KiB)
        head, _, body = bytes(data).partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), head
        return bytearray(body)

    async def read(self, rate: float | None) -> bytes:
        """The whole body, read at ``rate`` bytes/s (None: as fast as it comes)."""
        with self.sock, trio.fail_after(20):
            received = await self._body_start()
            while len(received) < len(DATA):
                chunk = await self.sock.recv(16 * KiB)
                assert chunk, "the connection ended mid-body"
                received += chunk
                if rate is not None:
                    await trio.sleep(len(chunk) / rate)  # the client's pace, on purpose
        return bytes(received)

    async def read_until_closed(self, rate: float) -> bytes:
        """The body's bytes until the tracker ends the connection (a body cut short), read
        at ``rate`` bytes/s."""
        with self.sock, trio.fail_after(20):
            received = await self._body_start()
            while True:
                try:
                    chunk = await self.sock.recv(16 * KiB)
                except ConnectionResetError:
                    break
                if not chunk:
                    break
                received += chunk
                await trio.sleep(len(chunk) / rate)  # the client's pace, on purpose
        return bytes(received)


async def _achieved_after_one_download(
    monkeypatch: pytest.MonkeyPatch, up: FakeUpstream, *, plain: bool, client_rate: float | None
) -> float:
    """The source's achieved figure once one download of NAME from it, read at
    ``client_rate``, was measured (or found to say nothing)."""
    decided = trio.Event()
    measured_transfer = transfers.measured_transfer

    def spy(*args: Any, **kwargs: Any) -> tuple[int, float] | None:
        decided.set()  # the pump is done with its source: the figure is final
        return measured_transfer(*args, **kwargs)

    monkeypatch.setattr(transfers, "measured_transfer", spy)
    async with serving(up), proxy_tracker(None, up, plain=plain) as t:
        target = f"/v1/{NAME}?group={GROUP}"
        client = await PacedClient.get(t.base, target, small_buffer=client_rate is not None)
        assert await client.read(client_rate) == DATA
        with trio.fail_after(10):
            await decided.wait()
        _probed, achieved = t.index.speeds.figures(TargetKey(GROUP, up.base), trio.current_time())
        return achieved


@pytest.mark.parametrize("plain", [False, True], ids=["spliced relay", "relay through Python"])
async def test_a_slow_client_does_not_mark_a_fast_source_slow(
    monkeypatch: pytest.MonkeyPatch, plain: bool
) -> None:
    """A validator on a slow link pulls a full from a source as fast as loopback: the relay
    went at the client's pace, which is not the source's (recorded, one slow client would
    decide what the fleet gets)."""
    up = FakeUpstream(files={NAME: DATA})
    achieved = await _achieved_after_one_download(
        monkeypatch, up, plain=plain, client_rate=CLIENT_RATE
    )
    assert achieved == 0 or achieved > 10 * CLIENT_RATE, achieved


@pytest.mark.parametrize("plain", [False, True], ids=["spliced relay", "relay through Python"])
async def test_a_slow_source_is_measured_at_its_pace_whatever_the_client(
    monkeypatch: pytest.MonkeyPatch, plain: bool
) -> None:
    """The other way round: the source paces the relay, and its figure is its own pace (a
    loaded host may slow the source's sends, never speed them up)."""
    rate = 8 * MiB
    up = FakeUpstream(files={NAME: DATA}, behaviour={NAME: Behaviour(rate=rate)}, chunk=64 * KiB)
    achieved = await _achieved_after_one_download(monkeypatch, up, plain=plain, client_rate=None)
    assert rate / 4 < achieved < rate * 1.5, achieved


#: Larger than every buffer between the source and a client that takes nothing (the
#: source's send buffer, the tracker's receive buffer, read-ahead and splice pipe, the
#: tracker's send buffer), so that the source's sends wait on the stalled client.
STALLED_DATA = archive_bytes(16 * MiB, seed=12)


@pytest.mark.parametrize("plain", [False, True], ids=["spliced relay", "relay through Python"])
async def test_a_client_that_stalls_until_the_source_gives_up_does_not_mark_it_slow(
    monkeypatch: pytest.MonkeyPatch, plain: bool
) -> None:
    """A validator whose disk stops taking bytes: the relay stops reading its source, whose
    own send timeout (nginx's ``send_timeout``) closes the connection; the client then reads
    on and finds its body cut. The source ended the transfer, but only because our client
    held it: the client took no byte for longer than CLIENT_STALL (here under the source's
    send timeout, to keep the test short: a real one is a minute), so the transfer says
    nothing of the source (recorded, a fast honest source was priced at a few hundred kB/s
    for the fleet)."""
    name = full_name(1001)
    up = FakeUpstream(files={name: STALLED_DATA}, behaviour={name: Behaviour(send_timeout=0.5)})
    monkeypatch.setattr(transfers, "CLIENT_STALL", 0.25)
    decided = trio.Event()
    measured_transfer = transfers.measured_transfer
    endings: list[str] = []

    def spy(*args: Any, **kwargs: Any) -> tuple[int, float] | None:
        endings.append(args[2])
        decided.set()  # the pump is done with its source: the figure is final
        return measured_transfer(*args, **kwargs)

    monkeypatch.setattr(transfers, "measured_transfer", spy)
    async with serving(up), proxy_tracker(None, up, plain=plain) as t:
        client = await PacedClient.get(t.base, f"/v1/{name}?group={GROUP}", small_buffer=True)
        with client.sock, trio.fail_after(20):
            data = bytearray()
            while b"\r\n\r\n" not in data:
                data += await client.sock.recv(16 * KiB)
            assert data.startswith(b"HTTP/1.1 200"), bytes(data[:100])
            # the client takes nothing until the source gave up on it
            await wait_for(lambda: any(s.timed_out for s in up.gets(name)))
            while chunk := await client.sock.recv(256 * KiB):
                data += chunk
        assert len(data) < len(STALLED_DATA), "the body came whole: the source never gave up"
        with trio.fail_after(10):
            await decided.wait()
        _probed, achieved = t.index.speeds.figures(TargetKey(GROUP, up.base), trio.current_time())
    assert endings == ["source"]  # the break is the source's (a cut) ...
    assert achieved == 0, f"priced at {achieved:.0f} bytes/s"  # ... its pace is not known


#: A source that cuts every real GET after this many body bytes: more than the buffers
#: between it and a slow client hold, so that the relay waits on its client most of the
#: transfer's seconds before it meets the cut.
CUT = 24 * MiB
CUT_DATA = archive_bytes(32 * MiB, seed=13)


def measured_transfers(
    monkeypatch: pytest.MonkeyPatch,
) -> tuple[list[tuple[Any, ...]], trio.Event]:
    """Every call of ``transfers.measured_transfer`` (its arguments, keywords last) as the
    tracker makes it, and an event set at the first (the pump is done with its source:
    the figure is final)."""
    decided = trio.Event()
    measured_transfer = transfers.measured_transfer
    seen: list[tuple[Any, ...]] = []

    def spy(*args: Any, **kwargs: Any) -> tuple[int, float] | None:
        seen.append((*args, kwargs))
        decided.set()
        return measured_transfer(*args, **kwargs)

    monkeypatch.setattr(transfers, "measured_transfer", spy)
    return seen, decided


@pytest.mark.parametrize("plain", [False, True], ids=["spliced relay", "relay through Python"])
async def test_a_source_faster_than_its_client_that_cuts_every_get_is_measured(
    monkeypatch: pytest.MonkeyPatch, plain: bool
) -> None:
    """A lying source answers its speed tests and cuts every real GET part way through,
    relayed to a validator that reads steadily, slower than the source sends. The pump
    waited on that client most of the transfer's seconds, but the client never stalled (it
    took bytes every few milliseconds), so the cut is the source's own, not a send timeout
    our client caused: it is measured as the source's failure (had it recorded nothing, the
    liar kept its speed-test rank while every client given it failed)."""
    name = full_name(1002)
    up = FakeUpstream(files={name: CUT_DATA}, behaviour={name: Behaviour(real_drop_after=CUT)})
    seen, decided = measured_transfers(monkeypatch)
    async with serving(up), proxy_tracker(None, up, plain=plain) as t:
        client = await PacedClient.get(t.base, f"/v1/{name}?group={GROUP}", small_buffer=True)
        received = await client.read_until_closed(CLIENT_RATE)  # most of its seconds
        assert CUT // 2 < len(received) <= CUT, len(received)  # cut short, after the cut
        with trio.fail_after(10):
            await decided.wait()
        _probed, achieved = t.index.speeds.figures(TargetKey(GROUP, up.base), trio.current_time())
    [(moved, seconds, ending, read_timeout, kwargs)] = seen
    assert ending == "source"
    # the hole's case: the pump waited on its client most of the transfer's seconds
    assert transfers.paced_by_client(seconds, kwargs["client_waited"]), (seconds, kwargs)
    # priced as a failure: its bytes over at least the read timeout (aged a little since)
    assert 0 < achieved < 2 * moved / read_timeout, achieved


#: Larger than what a client's receive buffer of 2 MiB and the tracker's send buffer hold,
#: so that the spliced relay waits on its client before it meets the cut.
ROOMLESS_CUT = 12 * MiB
ROOMLESS_DATA = archive_bytes(16 * MiB, seed=14)


async def test_a_steady_client_whose_socket_has_room_only_now_and_then_is_not_stalled(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A spliced relay on a connection without ``TCP_NOTSENT_LOWAT`` (a keep-alive connection
    whose earlier file answer, sent beside others, cleared trio's mark:
    ``zerocopy.kernelcopy._low_water_mark``): its socket has room again only once a third of
    what it queues went, seconds for a client that reads steadily but slowly. Told from the
    waits for room alone, such a client looked stalled, and a liar's cut during its
    transfer recorded nothing; the client's acknowledgements, looked at while a piece waits
    (``zerocopy.pieces.CLIENT_LOOK``), show it took bytes all along, and the cut is
    measured as the source's failure (docs/ranking.md, "Failed transfers"). Scaled down: a
    stall of 0.3 s, looks every 0.03 s, a client at 4 MiB/s with 2 MiB of receive buffer
    (its socket then has room about every half second)."""
    name = full_name(1003)
    behaviour = Behaviour(real_drop_after=ROOMLESS_CUT)
    up = FakeUpstream(files={name: ROOMLESS_DATA}, behaviour={name: behaviour})
    monkeypatch.delattr(trio.socket, "TCP_NOTSENT_LOWAT")  # the kernel's default: no mark
    monkeypatch.setattr(transfers, "CLIENT_STALL", 0.3)
    monkeypatch.setattr(pieces, "CLIENT_LOOK", 0.03)
    seen, decided = measured_transfers(monkeypatch)
    async with serving(up), proxy_tracker(None, up) as t:
        host, port = t.base.removeprefix("http://").rsplit(":", 1)
        sock = trio.socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2 * MiB)
        await sock.connect((host, int(port)))
        await sock.send(f"GET /v1/{name}?group={GROUP} HTTP/1.1\r\nhost: {host}\r\n\r\n".encode())
        received = await PacedClient(sock).read_until_closed(4 * MiB)
        assert len(received) <= ROOMLESS_CUT < len(ROOMLESS_DATA)  # cut short
        with trio.fail_after(10):
            await decided.wait()
        _probed, achieved = t.index.speeds.figures(TargetKey(GROUP, up.base), trio.current_time())
    [(moved, _seconds, ending, read_timeout, kwargs)] = seen
    assert ending == "source"
    # it waited on its client longer than a stall, and saw it take bytes all along
    assert kwargs["client_waited"] > transfers.CLIENT_STALL > kwargs["client_stalled"], kwargs
    # priced as a failure: its bytes over at least the read timeout (aged a little since)
    assert 0 < achieved < 2 * moved / read_timeout, achieved
