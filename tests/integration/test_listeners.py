"""Listening sockets: bound here, served by hypercorn through fd://, or passed by systemd."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import httpx
import pytest
import trio
from helpers_s3 import free_ports
from helpers_tls import client_tls
from hypercorn.config import Config
from quart_trio import QuartTrio

from tracker.web.listeners import bind_socket
from tracker.zerocopy.connection import Connections
from tracker.zerocopy.server import serve

REPO = Path(__file__).resolve().parents[2]
ACTIVATE = shutil.which("systemd-socket-activate")


def user_timeout_ms(sock: socket.socket) -> int:
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT)


# --- bind_socket -------------------------------------------------------------------------------


def test_bind_socket_listens_with_reuseaddr_and_user_timeout() -> None:
    with bind_socket("127.0.0.1", 0) as sock:
        assert sock.family == socket.AF_INET
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR) == 1
        assert user_timeout_ms(sock) == 60_000
        assert not sock.get_inheritable()


def test_accepted_connections_inherit_the_user_timeout() -> None:
    with bind_socket("127.0.0.1", 0, user_timeout=7.5) as sock:
        sock.settimeout(5)
        with socket.create_connection(sock.getsockname(), timeout=5):
            conn, _ = sock.accept()
            with conn:
                assert user_timeout_ms(conn) == 7500


def test_bind_socket_ipv6_literal() -> None:
    with bind_socket("[::1]", 0) as sock:
        assert sock.family == socket.AF_INET6
        assert sock.getsockname()[0] == "::1"


def test_bind_socket_all_interfaces_serves_ipv4_and_ipv6() -> None:
    with bind_socket("", 0) as sock:
        port = sock.getsockname()[1]
        for host in ("127.0.0.1", "::1"):
            with socket.create_connection((host, port), timeout=5):
                pass


def test_bind_socket_without_user_timeout_keeps_the_kernel_default() -> None:
    with bind_socket("127.0.0.1", 0, user_timeout=None) as sock:
        assert user_timeout_ms(sock) == 0


def test_bind_socket_on_a_port_in_use_raises_oserror() -> None:
    with bind_socket("127.0.0.1", 0) as sock, pytest.raises(OSError, match="in use"):
        bind_socket("127.0.0.1", sock.getsockname()[1])


#: Binds a link-local address with its zone in a namespace of its own (lo, up, holding
#: fe80::1), and prints where it listens and what a client reached there.
_ZONED_LISTENER = """
import json, socket
from tracker.web.listeners import bind_address
with bind_address("[fe80::1%lo]:8461", "listen") as sock:
    with socket.create_connection(("fe80::1%lo", 8461), timeout=5) as client:
        peer = client.getpeername()
    print(json.dumps({"bound": sock.getsockname(), "peer": peer,
                      "lo": socket.if_nametoindex("lo")}))
"""


def _own_namespace() -> bool:
    unshare = shutil.which("unshare")
    if unshare is None or shutil.which("ip") is None:
        return False
    return subprocess.run([unshare, "-rn", "true"], capture_output=True).returncode == 0


@pytest.mark.skipif(not _own_namespace(), reason="needs unshare -rn and ip (a namespace)")
def test_a_link_local_listen_address_with_its_zone_is_bound_and_served() -> None:
    """``listen: "[fe80::1%lo]:8461"``: bound on that interface (the zone its scope id), not
    refused with EINVAL; in a network namespace of the test's own, its loopback holding
    fe80::1, so nothing outside 127.0.0.0/8 of this machine is touched."""
    setup = "ip link set lo up && ip -6 addr add fe80::1/64 dev lo nodad"
    done = subprocess.run(
        [
            "unshare",
            "-rn",
            "sh",
            "-c",
            f'{setup} && exec "$0" -c "$1"',
            sys.executable,
            _ZONED_LISTENER,
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    assert found["bound"] == ["fe80::1", 8461, 0, found["lo"]]
    assert found["peer"][:2] == ["fe80::1", 8461]


# --- tracker.server serving a socket bound here ---------------------------------------------------


def tiny_app() -> QuartTrio:
    app = QuartTrio(__name__)

    @app.get("/ping")
    async def ping() -> str:
        return "pong"

    return app


async def test_server_serves_a_bound_socket_and_closes_it_on_stop() -> None:
    sock = bind_socket("127.0.0.1", 0)
    port = sock.getsockname()[1]
    config = Config()
    config.accesslog = None
    stop = trio.Event()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            binds = await nursery.start(
                partial(serve, tiny_app(), config, sock, Connections(), shutdown_trigger=stop.wait)
            )
            assert binds == [f"http://127.0.0.1:{port}"]
            async with httpx.AsyncClient(verify=client_tls()) as client:
                response = await client.get(f"http://127.0.0.1:{port}/ping")
            assert (response.status_code, response.text) == (200, "pong")
            stop.set()
    # serve() closed the listening socket when it returned: nothing listens any more.
    assert sock.fileno() == -1
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()


# --- listen_fds under systemd-socket-activate ---------------------------------------------------

# Runs under systemd-socket-activate: prints what listen_fds sees, answers one request on public.
CHILD = """
import json, os, socket
from tracker.web.listeners import listen_fds

socks = listen_fds(os.environ)
print(json.dumps({
    role: {
        "family": s.family.name,
        "addr": list(s.getsockname()[:2]),
        "inheritable": s.get_inheritable(),
        "user_timeout_ms": s.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT),
    }
    for role, s in socks.items()
}), flush=True)
public = socks["public"]
public.settimeout(10)
conn, _ = public.accept()
conn.settimeout(10)
conn.recv(4096)
conn.sendall(b"HTTP/1.0 200 OK\\r\\nContent-Length: 2\\r\\n\\r\\nok")
conn.close()
"""


def free_port() -> int:
    """A port free a moment ago, outside the kernel's ephemeral range (for a listener made
    by another program: systemd-socket-activate)."""
    (port,) = free_ports(1)
    return port


def connect_when_listening(port: int, deadline: float) -> socket.socket:
    while True:
        try:
            return socket.create_connection(("127.0.0.1", port), timeout=5)
        except ConnectionRefusedError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def activate(
    ports: list[int], fdnames: str | None, connect_to: int
) -> tuple[bytes, dict[str, object]]:
    """Run CHILD under systemd-socket-activate; return the HTTP answer and what it printed."""
    assert ACTIVATE is not None
    argv = [ACTIVATE, f"--setenv=PYTHONPATH={REPO}"]
    argv += [f"--listen=127.0.0.1:{port}" for port in ports]
    if fdnames is not None:
        argv.append(f"--fdname={fdnames}")
    argv += [sys.executable, "-c", CHILD]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        with connect_when_listening(connect_to, time.monotonic() + 10) as conn:
            conn.sendall(b"GET / HTTP/1.0\r\n\r\n")
            answer = b""
            while chunk := conn.recv(4096):
                answer += chunk
        stdout, stderr = proc.communicate(timeout=10)
    finally:
        proc.kill()
        proc.wait(timeout=10)
    assert proc.returncode == 0, stderr.decode()
    seen: dict[str, object] = json.loads(stdout)
    return answer, seen


def passed(port: int) -> dict[str, object]:
    return {
        "family": "AF_INET",
        "addr": ["127.0.0.1", port],
        "inheritable": False,
        "user_timeout_ms": 60_000,
    }


@pytest.mark.skipif(ACTIVATE is None, reason="systemd-socket-activate is not installed")
def test_listen_fds_takes_a_named_socket_from_systemd() -> None:
    port = free_port()
    answer, seen = activate([port], "public", connect_to=port)
    assert answer.endswith(b"\r\n\r\nok")
    assert seen == {"public": passed(port)}


@pytest.mark.skipif(ACTIVATE is None, reason="systemd-socket-activate is not installed")
def test_listen_fds_goes_by_name_not_by_position() -> None:
    internal, public = free_port(), free_port()
    answer, seen = activate([internal, public], "internal:public", connect_to=public)
    assert answer.endswith(b"ok")
    assert seen == {"internal": passed(internal), "public": passed(public)}


@pytest.mark.skipif(ACTIVATE is None, reason="systemd-socket-activate is not installed")
def test_listen_fds_unnamed_sockets_are_public_then_internal() -> None:
    public, internal = free_port(), free_port()
    answer, seen = activate([public, internal], None, connect_to=public)
    assert answer.endswith(b"ok")
    assert seen == {"public": passed(public), "internal": passed(internal)}


UNUSABLE = """
import os, socket, sys
from tracker.errors import ConfigError
from tracker.web.listeners import listen_fds
kind = sys.argv[1]
if kind == "unix":
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(sys.argv[2])
    sock.listen()
elif kind == "udp":
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
else:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))  # bound, never listening
os.dup2(sock.fileno(), 3)
try:
    listen_fds({"LISTEN_PID": str(os.getpid()), "LISTEN_FDS": "1"})
except ConfigError as exc:
    print(exc)
"""


@pytest.mark.parametrize(
    ("kind", "said"),
    [
        ("unix", "is not a TCP socket (ListenStream= needs an address and port, not a path)"),
        ("udp", "is not a stream socket (ListenStream=, not ListenDatagram=)"),
        ("unlistened", "is a socket that is not listening"),
    ],
)
def test_a_passed_socket_no_tcp_listener_is_a_config_error(
    tmp_path: Path, kind: str, said: str
) -> None:
    """A unit's ``ListenStream=/path``, ``ListenDatagram=`` or a socket not listening: a
    ConfigError naming the fd (``serve``: one line, exit 2), not a traceback from the
    server or from reading its port."""
    result = subprocess.run(
        [sys.executable, "-c", UNUSABLE, kind, str(tmp_path / "sock")],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert result.stdout == f"LISTEN_FDS: fd 3 (public) {said}\n", result.stderr
