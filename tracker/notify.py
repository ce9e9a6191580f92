"""systemd's notify protocol (``sd_notify``) over a datagram socket, without a library.

Under ``Type=notify`` systemd passes ``NOTIFY_SOCKET`` (a path, or ``@name`` for an abstract
socket) and waits for ``READY=1``; with ``WatchdogSec=`` it also passes ``WATCHDOG_USEC`` and
kills the service when ``WATCHDOG=1`` stops arriving. Outside systemd the variable is absent
and every call is a no-op, so the service calls these unconditionally.

Sending never raises: a daemon must not die because systemd went away or its socket is full.
Failures are logged (event ``sd_notify_failed``) and reported by the ``False`` return value.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping

import attrs
import trio

from tracker.observability.logs import log_event

log = logging.getLogger(__name__)


@attrs.frozen
class Notifier:
    """Sends notifications to ``address`` (a socket path, or a str starting with NUL for an
    abstract socket); ``address=None`` disables it. Build it with :meth:`from_env`."""

    address: str | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Notifier:
        """Read ``NOTIFY_SOCKET``; absent, empty or of an unsupported kind: a disabled notifier."""
        value = environ.get("NOTIFY_SOCKET", "")
        if value.startswith("@"):
            return cls("\0" + value[1:])
        if value.startswith("/"):
            return cls(value)
        if value:
            # e.g. "vsock:..." (systemd >= 253 for VMs): not something this daemon runs under.
            log_event(log, "warning", "sd_notify_unsupported_socket", notify_socket=value)
        return cls(None)

    @property
    def enabled(self) -> bool:
        """True when there is a socket to notify."""
        return self.address is not None

    def send(self, *assignments: str) -> bool:
        """Send ``KEY=value`` lines in one datagram; True when it was handed to the socket.

        Never blocks (``MSG_DONTWAIT``) and never raises; a failure is logged.
        """
        if self.address is None:
            return False
        payload = "\n".join(assignments).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto(payload, socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL, self.address)
        except OSError as exc:
            log_event(
                log,
                "warning",
                "sd_notify_failed",
                notification=assignments[0] if assignments else "",
                error=f"{type(exc).__name__}: {exc}",
            )
            return False
        return True

    def ready(self) -> bool:
        """``READY=1``: start-up (or a reload) is complete; the listeners accept connections."""
        return self.send("READY=1")

    def stopping(self) -> bool:
        """``STOPPING=1``: a graceful stop has begun."""
        return self.send("STOPPING=1")

    def reloading(self) -> bool:
        """``RELOADING=1`` with ``MONOTONIC_USEC`` (what ``Type=notify-reload`` requires).

        The service must send :meth:`ready` once the reload is done, applied or refused.
        """
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.send("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def status(self, text: str) -> bool:
        """``STATUS=text``, shown by ``systemctl status``; newlines become spaces."""
        return self.send("STATUS=" + " ".join(text.splitlines()))

    def watchdog(self) -> bool:
        """``WATCHDOG=1``: the keep-alive ping of ``WatchdogSec=``."""
        return self.send("WATCHDOG=1")


def watchdog_interval(environ: Mapping[str, str], pid: int | None = None) -> float | None:
    """Seconds between watchdog pings: half of ``WATCHDOG_USEC``, or None when no watchdog.

    None also when ``WATCHDOG_PID`` is set to another process than ``pid`` (default: this one),
    or when ``WATCHDOG_USEC`` is not a positive integer systemd could set (a u64 of ASCII
    digits: one of hundreds of digits was an OverflowError that ended ``serve``).
    """
    watchdog_pid = environ.get("WATCHDOG_PID")
    if watchdog_pid and watchdog_pid != str(os.getpid() if pid is None else pid):
        return None
    text = environ.get("WATCHDOG_USEC", "")
    if not (text.isascii() and text.isdigit() and len(text) <= 20):
        return None
    usec = int(text)
    return usec / 2_000_000 if 0 < usec < 2**64 else None


async def run_watchdog(
    notifier: Notifier,
    interval: float,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Send ``WATCHDOG=1`` now and then every ``interval`` seconds, forever.

    Reports started after the first ping. Runs until cancelled (it then returns by raising
    ``trio.Cancelled``); raises nothing else, since send failures are only logged.
    """
    notifier.watchdog()
    task_status.started()
    while True:
        await trio.sleep(interval)
        notifier.watchdog()
