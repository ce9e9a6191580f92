"""Listening sockets: taken from systemd (socket activation) or bound here.

The service gets its two listeners, ``public`` and ``internal``, from :func:`listen_fds` when
systemd passed them, otherwise from :func:`bind_socket`, and hands each to its own
:func:`tracker.zerocopy.server.serve`, which closes it when it returns.

Both kinds get ``TCP_USER_TIMEOUT``: Linux copies it to every accepted connection, so a client
that stops acknowledging data is dropped by the kernel after that long instead of holding a
transfer (and graceful shutdown) forever. Quart's own response timeout cannot do that job for
downloads that legitimately last hours (docs/architecture.md#traps-of-the-stack, 2).
"""

from __future__ import annotations

import errno
import os
import socket
import stat
from collections.abc import Container, Mapping, Sequence
from typing import Any

from tracker.config.schema import Config, parse_address
from tracker.errors import ConfigError

PUBLIC = "public"
INTERNAL = "internal"
#: Names of the listeners, in the order unnamed sockets are assigned to them.
ROLES = (PUBLIC, INTERNAL)

#: First file descriptor systemd passes (``SD_LISTEN_FDS_START``).
LISTEN_FDS_START = 3
#: listen() backlog, for the burst of a fleet restarting at once (hypercorn's default: 100).
BACKLOG = 1024
#: Seconds unacknowledged data may wait before the kernel drops a connection.
DEFAULT_USER_TIMEOUT = 60.0


def listen_fds(
    environ: Mapping[str, str], *, user_timeout: float | None = DEFAULT_USER_TIMEOUT
) -> dict[str, socket.socket]:
    """Return the sockets systemd passed to this process, by role (``public``/``internal``).

    Reads ``LISTEN_PID`` (must be this process, else nothing was meant for us), ``LISTEN_FDS``
    and ``LISTEN_FDNAMES`` (see :func:`assign_roles`), fds starting at 3. Each socket is made
    non-inheritable and, for TCP, gets ``TCP_USER_TIMEOUT`` (None: left as it is).
    Returns ``{}`` outside socket activation. Raises :class:`ConfigError` when the passed fds
    cannot be used (not sockets, more than two, two with the same role).
    """
    if environ.get("LISTEN_PID") != str(os.getpid()):
        return {}
    try:
        count = int(environ.get("LISTEN_FDS", "0"))
    except ValueError:
        raise ConfigError([f"LISTEN_FDS: not a number: {environ['LISTEN_FDS']!r}"]) from None
    names = environ.get("LISTEN_FDNAMES", "").split(":")
    roles = assign_roles(count, names)
    sockets: dict[str, socket.socket] = {}
    for role, offset in roles.items():
        fd = LISTEN_FDS_START + offset
        try:
            sock = socket.socket(fileno=fd)
        except OSError as exc:
            raise ConfigError([f"LISTEN_FDS: fd {fd} ({role}) is not a socket: {exc}"]) from None
        unusable = _not_a_tcp_listener(sock)
        if unusable:
            sock.detach()  # systemd's descriptor: left as it was passed
            raise ConfigError([f"LISTEN_FDS: fd {fd} ({role}) is {unusable}"])
        sock.set_inheritable(False)
        if user_timeout is not None and _is_tcp(sock):
            set_user_timeout(sock, user_timeout)
        sockets[role] = sock
    return sockets


def _not_a_tcp_listener(sock: socket.socket) -> str:
    """What makes a passed socket no TCP listener ("" when it is one): a unit's
    ``ListenStream=/path`` (a Unix socket), ``ListenDatagram=``, or one not listening."""
    if sock.family not in (socket.AF_INET, socket.AF_INET6):
        return "not a TCP socket (ListenStream= needs an address and port, not a path)"
    if sock.type != socket.SOCK_STREAM:
        return "not a stream socket (ListenStream=, not ListenDatagram=)"
    try:
        listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
    except OSError:
        listening = 0
    return "" if listening else "a socket that is not listening"


def assign_roles(count: int, names: Sequence[str]) -> dict[str, int]:
    """Map each role to the offset (from fd 3) of its socket among ``count`` passed fds.

    A socket named ``public`` or ``internal`` takes that role. Sockets without one of these
    names (no ``LISTEN_FDNAMES``, an empty name, systemd's default ``unknown`` or a unit name)
    take the roles still free, ``public`` first. Raises :class:`ConfigError` on a duplicate
    role or on more sockets than roles.
    """
    if count > len(ROLES):
        raise ConfigError([f"LISTEN_FDS: {count} sockets passed, expected at most {len(ROLES)}"])
    roles: dict[str, int] = {}
    unnamed: list[int] = []
    for offset in range(count):
        name = names[offset] if offset < len(names) else ""
        if name not in ROLES:
            unnamed.append(offset)
        elif name in roles:
            raise ConfigError([f"LISTEN_FDNAMES: more than one socket named {name!r}"])
        else:
            roles[name] = offset
    free = [role for role in ROLES if role not in roles]
    roles.update(zip(free, unnamed, strict=False))
    return roles


def open_listeners(config: Config, environ: dict[str, str]) -> dict[str, socket.socket]:
    """The public and (optional) internal sockets: each systemd's when it passed it, else
    bound here (a unit that passes one of them leaves the other to the config: ``listen``,
    ``internal_listen``).

    Raises OSError when an address cannot be bound (in use, not local, ...).
    """
    sockets = listen_fds(environ)
    if PUBLIC not in sockets:
        sockets[PUBLIC] = bind_address(config.listen, "listen")
    if INTERNAL not in sockets and config.internal_listen:
        sockets[INTERNAL] = bind_address(config.internal_listen, "internal_listen")
    return sockets


def bind_address(address: str, key: str) -> socket.socket:
    """:func:`bind_socket` at ``address`` (a config value, checked); its OSError names the
    address and the config ``key``: ``Address already in use: 127.0.0.1:8457
    (internal_listen)``."""
    try:
        return bind_socket(*parse_address(address))
    except OSError as exc:
        raise OSError(exc.errno, f"{exc.strerror}: {address} ({key})") from exc


def bind_socket(
    host: str, port: int, *, user_timeout: float | None = DEFAULT_USER_TIMEOUT
) -> socket.socket:
    """Create a listening TCP socket on ``host:port`` (IPv6 when ``host`` contains ``:``).

    ``host`` ``""`` means every interface: ``::`` serving IPv4 too, or ``0.0.0.0`` on a host
    without IPv6. Sets ``SO_REUSEADDR`` (a restart does not wait for TIME_WAIT),
    ``TCP_USER_TIMEOUT`` (None: the kernel default) and a backlog of :data:`BACKLOG`; the
    socket is non-inheritable. Raises OSError when the address cannot be bound (malformed,
    in use, not local, no permission).
    """
    host = host.strip("[]")
    if host:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        return _listen(family, host, port, user_timeout)
    try:
        return _listen(socket.AF_INET6, "::", port, user_timeout)
    except OSError as exc:
        if exc.errno not in (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL):
            raise
    return _listen(socket.AF_INET, "0.0.0.0", port, user_timeout)


def _listen(
    family: socket.AddressFamily, host: str, port: int, user_timeout: float | None
) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if host == "::":
            # The wildcard serves IPv4 too, whatever net.ipv6.bindv6only says.
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        if user_timeout is not None:
            set_user_timeout(sock, user_timeout)
        sock.bind(socket_address(family, host, port))
        sock.listen(BACKLOG)
    except BaseException:
        sock.close()
        raise
    return sock


def socket_address(family: socket.AddressFamily, host: str, port: int) -> tuple[Any, ...]:
    """The address ``bind`` takes for ``host:port``: an IPv6 one as the resolver reads it,
    its zone id (``fe80::1%eth0``) the interface's index: the tuple ``(host, port)`` leaves
    the scope id 0 and a link-local address then fails with EINVAL (docs/configuration.md,
    ``listen``). Raises OSError (``socket.gaierror``) for an IPv6 text that is none or names
    no interface."""
    if family != socket.AF_INET6:
        return (host, port)
    flags = socket.AI_PASSIVE | socket.AI_NUMERICHOST  # never a lookup: a literal only
    return tuple(socket.getaddrinfo(host, port, family, socket.SOCK_STREAM, 0, flags)[0][4])


def set_user_timeout(sock: socket.socket, seconds: float) -> None:
    """Set ``TCP_USER_TIMEOUT`` (inherited by accepted sockets on Linux) to ``seconds``."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, round(seconds * 1000))


def _is_tcp(sock: socket.socket) -> bool:
    return sock.family in (socket.AF_INET, socket.AF_INET6) and sock.type == socket.SOCK_STREAM


def abort_connections(
    local_ports: set[int], spare: Container[tuple[str, int]] = frozenset()
) -> int:
    """Shut down every connected TCP socket of this process on one of ``local_ports``.

    Connections whose peer address is in ``spare`` are left alone (requests in flight).

    The last step of a graceful stop: hypercorn sends response bytes in a shielded scope, so a
    client that stopped reading (its kernel still acknowledging, its window zero) would hold
    the process forever — no cancellation reaches that send. ``shutdown()`` on the socket does:
    the blocked send fails and the transfer ends. Returns how many connections were shut down.
    """
    count = 0
    for name in os.listdir("/proc/self/fd"):
        sock = _borrow_socket(int(name))
        if sock is None:
            continue
        with sock:  # closes the duplicate only; shutdown() acts on the shared connection
            try:
                if _is_our_connection(sock, local_ports, spare):
                    sock.shutdown(socket.SHUT_RDWR)
                    count += 1
            except OSError:
                continue  # gone meanwhile
    return count


def _borrow_socket(fd: int) -> socket.socket | None:
    """A socket object on a duplicate of ``fd``, or None when ``fd`` is not a socket."""
    try:
        if not stat.S_ISSOCK(os.fstat(fd).st_mode):
            return None
        dup = os.dup(fd)
    except OSError:
        return None  # closed meanwhile (the listdir descriptor, typically)
    try:
        return socket.socket(fileno=dup)
    except OSError:
        os.close(dup)
        return None


def _is_our_connection(
    sock: socket.socket, local_ports: set[int], spare: Container[tuple[str, int]]
) -> bool:
    if not _is_tcp(sock) or sock.getsockname()[1] not in local_ports:
        return False
    try:
        peer = sock.getpeername()
    except OSError:
        return False  # a listening socket, not a connection
    return (peer[0], peer[1]) not in spare


def port_of(address: str) -> int:
    """The port of a bound address as hypercorn reports it (``http://host:port``)."""
    return int(address.rsplit(":", 1)[1])
