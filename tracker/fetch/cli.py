"""The ``fetch`` subcommand's flags (a superset of the Go tracker's) and its exit codes."""

from __future__ import annotations

import argparse
import logging
from typing import TYPE_CHECKING, Any

from tracker.core.logs import log_event, setup_logging
from tracker.core.untrusted import ascii_digits
from tracker.core.values import parse_duration, parse_size
from tracker.errors import FetchError
from tracker.fetch.settings import FetchSettings

if TYPE_CHECKING:
    from tracker.fetch.run import FetchOptions

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2

log = logging.getLogger("tracker.fetch")


def _flag_bool(text: str) -> bool:
    """Go's boolean flag values: ``--full=false`` keeps its meaning."""
    lowered = text.strip().lower()
    if lowered in ("1", "t", "true", "yes"):
        return True
    if lowered in ("0", "f", "false", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _duration(text: str) -> float:
    try:
        seconds = parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text!r}")
    return seconds


def _size(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _count(lowest: int, highest: int) -> Any:
    def check(text: str) -> int:
        value = ascii_digits(text)
        if value is None or not lowest <= value <= highest:
            raise argparse.ArgumentTypeError(f"expected {lowest} to {highest}, got {text!r}")
        return value

    return check


def add_fetch_parser(commands: Any) -> None:
    """Add ``fetch`` and its flags to the subcommands."""
    fetch = commands.add_parser("fetch", help="download the best snapshot into a ledger directory")
    fetch.add_argument("--ledger", required=True, metavar="DIR")
    fetch.add_argument("--tracker", default="", metavar="URL")
    fetch.add_argument("--source", action="append", default=[], metavar="URL")
    fetch.add_argument("--group", default="")
    fetch.add_argument("--min-slots", type=_count(0, 2**63), default=500)
    fetch.add_argument("--max-slots", type=_count(0, 2**63), default=10_000)
    fetch.add_argument("--slot", type=_count(0, 2**63), default=0)
    for name in ("full", "incremental", "verify"):
        fetch.add_argument(f"--{name}", type=_flag_bool, nargs="?", const=True, default=True)
    fetch.add_argument("--connections", type=_count(1, 64), default=8)
    fetch.add_argument("--min-speed", type=_size, default=10 * 1024 * 1024)
    fetch.add_argument("--request-timeout", type=_duration, default=3.0)
    fetch.add_argument("--download-timeout", type=_duration, default=600.0)
    fetch.add_argument("--keep", type=_count(0, 1000), default=2)
    fetch.add_argument("--progress", choices=["auto", "bar", "log", "none"], default="auto")
    # Seconds between two fetch_progress log lines (tests; hidden from --help).
    fetch.add_argument("--progress-every", type=_duration, default=5.0, help=argparse.SUPPRESS)
    fetch.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    fetch.add_argument("--log-format", default="text", choices=["text", "json"])


def options_of(args: argparse.Namespace) -> FetchOptions:
    """The options of parsed ``fetch`` arguments."""
    from tracker.fetch.run import FetchOptions

    settings = FetchSettings(
        connections=args.connections,
        min_speed=args.min_speed,
        request_timeout=args.request_timeout,
        verify=args.verify,
    )
    return FetchOptions(
        ledger=args.ledger,
        tracker=args.tracker,
        sources=tuple(args.source),
        group=args.group,
        min_slots=args.min_slots,
        max_slots=args.max_slots,
        slot=args.slot,
        full=args.full,
        incremental=args.incremental,
        keep=args.keep,
        progress=args.progress,
        progress_every=args.progress_every,
        download_timeout=args.download_timeout,
        settings=settings,
    )


def fetch_main(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Run ``fetch``; 0 when the ledger holds the wanted files, 1 on failure, 2 on usage."""
    if bool(args.tracker) == bool(args.source):
        parser.error("fetch needs exactly one of --tracker URL or --source URL (repeatable)")
    if not (args.full or args.incremental):
        parser.error("fetch needs at least one of --full and --incremental")
    setup_logging(args.log_level, args.log_format)
    # Imported here: the other commands (`verify` above all) start without httpx and trio.
    import trio

    from tracker.fetch.run import os_reason, run_fetch

    try:
        trio.run(run_fetch, options_of(args))
    except (FetchError, OSError) as exc:
        reason = os_reason(exc) if isinstance(exc, OSError) else str(exc)
        # One line on stderr, in the log format (the formatters mask secrets in URLs).
        log_event(log, "error", "fetch_failed", reason=" ".join(reason.split()))
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return EXIT_FAILURE
    return EXIT_OK
