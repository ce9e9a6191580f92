"""The ``fetch`` subcommand's flags (a superset of the Go tracker's) and its exit codes."""

from __future__ import annotations

import argparse
import logging
import math
import os
import signal
import tempfile
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import attrs

from tracker.config.values import check_http_url, duration_text, parse_duration, parse_size
from tracker.core.cachedirs import group_name_problem
from tracker.core.hosts import bracketed
from tracker.core.untrusted import ascii_digits
from tracker.errors import FetchError
from tracker.fetch.settings import FetchSettings
from tracker.fetch.statementfiles import add_trust_key_flags
from tracker.fetch.trust import TrustPolicy
from tracker.observability.logs import log_event, setup_logging
from tracker.observability.redact import redact_url
from tracker.proof.accounts.budget import (
    CACHE_TEMP,
    AccountsLimits,
    beyond_the_machine,
    default_memory,
    default_workers,
    shared_limits,
)
from tracker.proof.accounts.machine import in_memory
from tracker.proof.levels import LEVEL_NAMES, LOADERS, Level

if TYPE_CHECKING:
    import httpx

    from tracker.fetch.run import FetchOptions
    from tracker.proof.levels import Voter

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
#: ``--prove-accounts-max``: its range (that of the config's ``prove_accounts_max``; no
#: bound unless given).
PROVE_ACCOUNTS_RANGE = (1000, 1_000_000_000_000)
#: ``--prove-accounts-memory``: its smallest value (that of ``prove_accounts_memory``).
PROVE_ACCOUNTS_MIN_MEMORY = 1024**2

log = logging.getLogger("tracker.fetch")


def _flag_bool(text: str) -> bool:
    """Go's boolean flag values: ``--full=false`` keeps its meaning."""
    lowered = text.strip().lower()
    if lowered in ("1", "t", "true", "yes"):
        return True
    if lowered in ("0", "f", "false", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def duration_arg(text: str) -> float:
    """A command-line duration above 0 (``30s``, ``10m``, ``7d``)."""
    try:
        seconds = parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text!r}")
    return seconds


def duration_in_arg(lowest: float, highest: float) -> Callable[[str], float]:
    """A command-line duration of ``lowest`` to ``highest`` seconds (``attest --valid-for``:
    the range of the config's ``attest.valid_for``)."""

    def arg(text: str) -> float:
        seconds = duration_arg(text)
        if not lowest <= seconds <= highest:
            shown = f"{duration_text(lowest)} to {duration_text(highest)}"
            raise argparse.ArgumentTypeError(f"must be from {shown}, got {text!r}")
        return seconds

    return arg


def group_arg(text: str) -> str:
    """``--group``: "" (the tracker's default group) or a name a group can have
    (:func:`tracker.core.cachedirs.group_name_problem`: the tracker would answer 400)."""
    problem = group_name_problem(text) if text else ""
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return text


def url_arg(text: str) -> str:
    """An ``http://`` or ``https://`` URL (``--tracker``, ``--source``); one without a
    scheme is answered with the fix (``127.0.0.1:8458``: did you mean
    ``http://127.0.0.1:8458``?), not left for the first request to refuse. "" stays ""
    (the flag's default: not given). A value echoed in an answer has its userinfo and query
    masked (a typed password would reach the journal)."""
    scheme, sep, rest = text.partition("://")
    if not text:
        return text
    if sep and scheme.lower() in ("http", "https") and rest:
        try:
            check_http_url(text)  # the config's rule: a port that is a port, a host httpx reads
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        return text
    if not sep:
        # ``::1:8458`` meant ``http://[::1]:8458`` (core.hosts.bracketed), not
        # ``http://::1:8458``, which the URL check refuses in turn
        authority, slash, path = text.partition("/")
        meant = (bracketed(authority) or authority) + slash + path
        shown, meant = redact_url(text), redact_url(f"http://{meant}")
        raise argparse.ArgumentTypeError(f"{shown!r} has no scheme: did you mean {meant}?")
    shown = redact_url(text)
    raise argparse.ArgumentTypeError(f"expected an http:// or https:// URL, got {shown!r}")


def listed_url_arg(text: str) -> str:
    """A URL of a repeatable flag (``--source``, ``--rpc``): :func:`url_arg`, where "" is no
    default but an empty value typed (``--source=``, a variable that was not set)."""
    if not text:
        raise argparse.ArgumentTypeError("empty: expected an http:// or https:// URL")
    return url_arg(text)


def tracker_url_arg(text: str) -> str:
    """``--tracker``: a URL (:func:`url_arg`) that is the tracker's base, as its own routes
    are ``{base}/v1/...``: one whose path names ``/v1`` (``http://127.0.0.1:8458/v1``, a
    route copied from the tour) is answered with the base it meant."""
    url = url_arg(text)
    scheme, _sep, rest = url.partition("://")
    authority, slash, path = rest.partition("/")
    segments = path.split("?", 1)[0].split("/")
    if slash and "v1" in segments:
        base = f"{scheme}://{authority}/" + "/".join(segments[: segments.index("v1")])
        raise argparse.ArgumentTypeError(
            f"{redact_url(text)!r} is one of the tracker's routes; --tracker wants its base URL, "
            f"without /v1: did you mean {redact_url(base.rstrip('/'))}?"
        )
    return url


def _rate(text: str) -> float:
    """A positive, finite number (slots per second)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def _size(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def count_in(lowest: int, highest: int) -> Any:
    """An argparse type: an integer from ``lowest`` to ``highest``, written in ASCII digits."""

    def check(text: str) -> int:
        value = ascii_digits(text)
        if value is None or not lowest <= value <= highest:
            raise argparse.ArgumentTypeError(f"expected {lowest} to {highest}, got {text!r}")
        return value

    return check


def add_prove_accounts_flags(command: argparse.ArgumentParser, spill_default: str) -> None:
    """``--prove-accounts-max``, ``--prove-accounts-memory``, ``--proof-workers`` and
    ``--prove-accounts-temp-dir`` (its default as ``spill_default`` says), as ``fetch`` and
    ``verify`` take them (docs/architecture.md, "Bounded memory")."""
    command.add_argument(
        "--prove-accounts-max",
        type=count_in(*PROVE_ACCOUNTS_RANGE),
        default=None,
        metavar="N",
        help="a full of more accounts than this stays at level manifest, said so (default: "
        "no bound)",
    )
    command.add_argument(
        "--prove-accounts-memory",
        type=_proof_memory,
        default=None,
        metavar="SIZE",
        help="memory of the accounts proof, its processes included (e.g. 2GiB); past it its "
        "index spills to --prove-accounts-temp-dir (default: from the cores and the memory it "
        "may use, a container's limits included, "
        f"{default_memory() // 1024**2}MiB here)",
    )
    command.add_argument(
        "--proof-workers",
        type=count_in(1, 1024),
        default=None,
        metavar="N",
        help="processes the accounts proof uses at most, this one included (default: the "
        f"cores this process may use, a container's CPU quota included: {default_workers()} here)",
    )
    command.add_argument(
        "--prove-accounts-temp-dir",
        default=None,
        metavar="DIR",
        help="where the accounts proof's index spills: tens of GB for a mainnet full, on disk, "
        f"not a tmpfs, where it would count as memory (default: {spill_default})",
    )


def _proof_memory(text: str) -> int:
    """``--prove-accounts-memory``: at least 1 MiB, at most what this process may use."""
    value = _size(text)
    if value < PROVE_ACCOUNTS_MIN_MEMORY:
        raise argparse.ArgumentTypeError(
            f"expected at least {PROVE_ACCOUNTS_MIN_MEMORY} bytes, got {text!r}"
        )
    problem = beyond_the_machine(value)
    if problem:
        raise argparse.ArgumentTypeError(f"{problem}, got {text!r}")
    return value


def accounts_limits_of(args: argparse.Namespace) -> AccountsLimits:
    """The accounts proof's limits of parsed ``fetch`` or ``verify`` arguments: one budget
    that every proof of the run shares (``fetch`` checks several downloads at once)."""
    workers = args.proof_workers or default_workers()
    memory = args.prove_accounts_memory or default_memory(workers)
    budget, slots, frames = shared_limits(memory, workers)
    return AccountsLimits(
        memory=memory,
        max_accounts=args.prove_accounts_max,
        temp_dir=args.prove_accounts_temp_dir,
        workers=workers,
        budget=budget,
        slots=slots,
        frames=frames,
    )


def beside_the_ledger(limits: AccountsLimits, ledger: str) -> AccountsLimits:
    """``fetch``'s accounts limits: without ``--prove-accounts-temp-dir``, the index spills
    to ``.accounts-proof`` in the ledger, on the disk that holds the download, not in the
    system's temporary directory: a tmpfs on many hosts, where tens of GB of a mainnet full
    count as memory, or a small root disk (docs/fetch.md, "Safely")."""
    if limits.temp_dir is not None:
        return limits
    return attrs.evolve(limits, temp_dir=os.path.join(ledger, CACHE_TEMP))


def spill_warning(temp_dir: str | None) -> str:
    """Why the accounts proof's spill directory ``temp_dir`` (None: the system's temporary
    directory) defeats ``--prove-accounts-memory`` ("" when it does not, or did not answer
    within the config's bound on a look: a hung mount): on a memory-backed file system
    (tmpfs) the spilled index counts as memory, and the kernel kills the run where the proof
    would have stopped at "no room"."""
    # Imported here: the bounded look at a path is the config loader's (a thread, 3 s).
    from tracker.config.files import look_at

    directory = temp_dir if temp_dir is not None else tempfile.gettempdir()
    if not in_memory(directory, lambda path: look_at(path).real):
        return ""
    return (
        f"--prove-accounts-temp-dir {directory!r} is on a memory-backed file system (tmpfs): "
        "the accounts proof's spilled index (tens of GB for a mainnet full) counts as memory, "
        "past --prove-accounts-memory; name a directory on disk"
    )


def add_fetch_parser(commands: Any) -> None:
    """Add ``fetch`` and its flags to the subcommands (README "Command line")."""
    fetch = commands.add_parser(
        "fetch",
        help="download the best snapshot into a ledger directory",
        description="Download the best full snapshot (when the ledger needs one) and the "
        "newest incremental on it into a ledger directory. Exit 0: the ledger holds them; "
        "1: a one-line error; 2: usage; 130/143/129: interrupted by SIGINT/SIGTERM/SIGHUP "
        "(run again to resume).",
    )
    add = fetch.add_argument
    add("--ledger", required=True, metavar="DIR", help="the validator's ledger directory")
    add(
        "--tracker",
        type=tracker_url_arg,
        default="",
        metavar="URL",
        help="the tracker to ask (this or --source is required)",
    )
    add(
        "--source",
        action="append",
        type=listed_url_arg,
        default=[],
        metavar="URL",
        help="a validator's RPC URL to fetch from, repeatable (this or --tracker is required)",
    )
    add(
        "--group",
        type=group_arg,
        default="",
        help="the tracker's target group (default: its default group)",
    )
    # The three slot counts take the same range; a table keeps them from drifting apart.
    slot_flags = (
        (
            "--min-slots",
            500,
            "SLOTS",
            "keep a ledger full this close to the offered one (default: %(default)s)",
        ),
        (
            "--max-slots",
            10_000,
            "SLOTS",
            "--slot: refuse a snapshot this much older than the newest (default: %(default)s)",
        ),
        ("--slot", 0, "SLOT", "the full's slot (default: the best)"),
    )
    for flag, default, metavar, text in slot_flags:
        add(flag, type=count_in(0, 2**63), default=default, metavar=metavar, help=text)
    what = {
        "full": "fetch a full snapshot when the ledger needs one",
        "incremental": "fetch the newest incremental on the ledger's full",
        "verify": "check each archive (and its SHA-256) before it enters the ledger",
        "prove-accounts": "with --verify, prove a full's account storages give its manifest's "
        'lattice hash (level accounts; docs/architecture.md, "The accounts level")',
    }
    for name, meaning in what.items():
        add(
            f"--{name}",
            type=_flag_bool,
            nargs="?",
            const=True,
            default=True,
            metavar="true|false",
            help=f"{meaning} (default: true)",
        )
    add(
        "--require",
        choices=LEVEL_NAMES,
        default="structure",
        metavar="LEVEL",
        help="refuse an archive its check does not prove to LEVEL: "
        f'{", ".join(LEVEL_NAMES)} (docs/architecture.md, "Proven archives"; default: '
        "%(default)s). accounts takes incrementals at manifest, the most an incremental can "
        "reach; cluster needs --rpc",
    )
    add(
        "--loadable-by",
        choices=LOADERS,
        default=None,
        metavar="CLIENT",
        help="refuse an archive whose manifest shows CLIENT cannot load it: "
        f'{", ".join(LOADERS)} (docs/http-api.md, "Proven archives": several account storages '
        "for one slot, as Firedancer writes them; an invalid vote account); needs --verify "
        "(default: none)",
    )
    add(
        "--rpc",
        action="append",
        default=[],
        type=listed_url_arg,
        metavar="URL",
        help="a Solana JSON-RPC URL whose votes lift each checked archive to cluster "
        '(docs/architecture.md, "The cluster level"), repeatable: every one must agree, as '
        "serve --rpc (default: none, the votes are not asked)",
    )
    # Signed statements of the tracker (docs/http-api.md, "Signed statements"), checked
    # after the archive check, before the rename into the ledger.
    add_trust_key_flags(fetch, count_in)
    add_prove_accounts_flags(
        fetch, f"{CACHE_TEMP} in --ledger, beside the download, removed when the proof ends"
    )
    add(
        "--connections",
        type=count_in(1, 64),
        default=8,
        metavar="N",
        help="parallel Range requests per file, 1 to 64 (default: %(default)s)",
    )
    add(
        "--min-speed",
        type=_size,
        default=10 * 1024 * 1024,
        metavar="SIZE",
        help="drop a source slower than this per second while another is left; 0: never "
        "(default: 10MiB)",
    )
    add(
        "--request-timeout",
        type=duration_arg,
        default=3.0,
        metavar="DURATION",
        help="longest wait for an answer's head (default: 3s)",
    )
    add(
        "--download-timeout",
        type=duration_arg,
        default=600.0,
        metavar="DURATION",
        help="give up after this long (default: 10m)",
    )
    add(
        "--keep",
        type=count_in(0, 1000),
        default=2,
        metavar="N",
        help="then keep the newest N fulls and N incrementals; 0: remove nothing "
        "(default: %(default)s)",
    )
    add(
        "--replay-slots-per-second",
        type=_rate,
        default=25.0,
        metavar="SLOTS",
        help="the node's replay speed, to price the catch-up of each pair (docs/ranking.md; "
        "default: 25)",
    )
    add(
        "--slot-seconds",
        type=duration_arg,
        default=0.4,
        metavar="DURATION",
        help="the cluster's slot time, for the same (default: 400ms)",
    )
    add(
        "--progress",
        choices=["auto", "bar", "log", "none"],
        default="auto",
        help="a bar, log lines, or nothing; auto: a bar on a terminal (default: %(default)s)",
    )
    # Seconds between two fetch_progress log lines (tests; hidden from --help).
    add("--progress-every", type=duration_arg, default=5.0, help=argparse.SUPPRESS)
    add_log_flags(fetch)


def add_log_flags(parser: argparse.ArgumentParser) -> None:
    """``--log-level`` and ``--log-format``, with their help."""
    parser.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="the least severe log lines shown (default: %(default)s)",
    )
    parser.add_argument(
        "--log-format",
        default="text",
        choices=["text", "json"],
        help="log lines as text or one JSON object each (default: %(default)s)",
    )


def options_of(args: argparse.Namespace) -> FetchOptions:
    """The options of parsed ``fetch`` arguments."""
    from tracker.config.schema import Ranking  # the config's types: not for `verify`
    from tracker.fetch.run import FetchOptions

    required = Level.parse(args.require) or Level.STRUCTURE
    settings = FetchSettings(
        connections=args.connections,
        min_speed=args.min_speed,
        request_timeout=args.request_timeout,
        verify=args.verify,
        require=required,
        loadable_by=args.loadable_by,
        prove_accounts=beside_the_ledger(accounts_limits_of(args), args.ledger)
        if args.prove_accounts
        else None,
        trust=TrustPolicy(frozenset(args.trust_key), args.trust_min, required),
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
        ranking=Ranking(
            replay_slots_per_second=args.replay_slots_per_second, slot_seconds=args.slot_seconds
        ),
    )


def unreachable_level(args: argparse.Namespace) -> str:
    """Why no archive could reach ``--require`` with these flags ("" when one can): none
    reaches ``cluster`` without ``--rpc`` (nor is anything lifted without ``--verify``), a
    full reaches ``accounts`` only with its accounts proven, unless trusted keys' statements
    carry the level (``--trust-key`` with ``--verify``); said before any download, not after
    each (an incremental's ``accounts`` is ``manifest``). Pure."""
    required = Level.parse(args.require) or Level.STRUCTURE
    if args.trust_key and args.verify:
        # Trusted statements carry the level past the check's (TrustPolicy.checked_here).
        return ""
    if required >= Level.CLUSTER and not args.rpc:
        # Only an RPC's answers of the votes lift a copy to cluster (docs/architecture.md,
        # "The cluster level"): every archive would be downloaded whole, then refused.
        return f"--require {args.require} needs --rpc URL: the cluster's votes are asked of an RPC"
    if args.rpc and not args.verify:
        return "--rpc needs --verify true: the votes are weighed for the bank hash the check reads"
    if args.loadable_by and not args.verify:
        return "--loadable-by needs --verify true: the check reads what a loader refuses"
    if args.full and required >= Level.ACCOUNTS and not (args.verify and args.prove_accounts):
        return f"--require {args.require} needs --verify and --prove-accounts true"
    if required > Level.STRUCTURE and not args.verify:
        # Unchecked, nothing is proven: the archive would go in whatever the sources sent.
        return f"--require {args.require} needs --verify true: the check proves the level"
    return ""


def trust_usage(args: argparse.Namespace) -> str:
    """Why ``--trust-key`` cannot work with these flags ("" when it can or is not given):
    statements come from a tracker, name the SHA-256 the check computes, and N distinct keys
    can vouch only when N are listed. Pure."""
    keys = len(set(args.trust_key))
    if not keys:
        return ""
    if not args.tracker:
        return "--trust-key needs --tracker: the statements are the tracker's"
    if not args.verify:
        return "--trust-key needs --verify true: a statement names the SHA-256 the check computes"
    return too_few_keys(args)


def too_few_keys(args: argparse.Namespace) -> str:
    """Why ``--trust-min`` cannot be met by the ``--trust-key`` listed ("" when it can):
    N distinct keys can vouch only when N are listed (``fetch``, ``verify``). Pure."""
    keys = len(set(args.trust_key))
    if keys and args.trust_min > keys:
        return f"--trust-min {args.trust_min} needs as many distinct --trust-key, {keys} given"
    return ""


def fetch_main(
    args: argparse.Namespace,
    parser: argparse.ArgumentParser,
    voter_for: Callable[[httpx.AsyncClient], Voter] | None = None,
    stopped: list[int] | None = None,
) -> int:
    """Run ``fetch``; 0 when the ledger holds the wanted files, 1 on failure, 2 on usage,
    128 + the signal's number when SIGINT, SIGTERM or SIGHUP stopped it (the state saved).
    ``voter_for``: who asks the cluster's votes with ``--rpc`` (the command line's);
    ``stopped``: the signals received so far, the command line's list (its handlers take
    them until fetch's own receiver does: one exit code, one line)."""
    if bool(args.tracker) == bool(args.source):
        parser.error("fetch needs exactly one of --tracker URL or --source URL (repeatable)")
    if not (args.full or args.incremental):
        parser.error("fetch needs at least one of --full and --incremental")
    unusable = unreachable_level(args) or trust_usage(args)
    if unusable:
        parser.error(unusable)
    setup_logging(args.log_level, args.log_format)
    # Imported here: the other commands (`verify` above all) start without httpx and trio.
    import trio

    from tracker.fetch.run import os_reason

    options = attrs.evolve(options_of(args), voter_for=voter_for)
    limits = options.settings.prove_accounts
    spill = spill_warning(limits.temp_dir) if limits and args.verify and args.full else ""
    if spill:  # once, before the download (docs/fetch.md, "Safely")
        log_event(log, "warning", "fetch_spill_in_memory", problem=spill)
    stopped = [] if stopped is None else stopped
    try:
        trio.run(_until_signal, options, stopped)
    except BaseException as exc:
        if stopped or _is_interrupt(exc):
            return interrupted(options.ledger, stopped[0] if stopped else signal.SIGINT)
        if not isinstance(exc, FetchError | OSError):
            raise
        reason = os_reason(exc) if isinstance(exc, OSError) else str(exc)
        # One line on stderr, in the log format (the formatters mask secrets in URLs).
        log_event(log, "error", "fetch_failed", reason=" ".join(reason.split()))
        return EXIT_FAILURE
    if stopped:
        return interrupted(options.ledger, stopped[0])
    return EXIT_OK


def _is_interrupt(exc: BaseException) -> bool:
    """A Ctrl-C that came before the signal watcher ran (trio raises it, maybe grouped)."""
    if isinstance(exc, BaseExceptionGroup):
        return exc.subgroup(KeyboardInterrupt) is not None
    return isinstance(exc, KeyboardInterrupt)


def watched_signals() -> tuple[signal.Signals, ...]:
    """SIGINT, SIGTERM and SIGHUP, but one that fetch was started with ignored (SIGINT in a
    background job of a script: Ctrl-C in its terminal is for the script; SIGHUP under
    ``nohup``), as for every command."""
    # Read inside trio.run: trio replaces only Python's default SIGINT handler, so an
    # inherited SIG_IGN is still what getsignal sees.
    return tuple(
        signum
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
        if signal.getsignal(signum) != signal.SIG_IGN
    )


async def _until_signal(options: FetchOptions, stopped: list[int]) -> None:
    """Run the fetch until it ends or a signal of :func:`watched_signals` arrives (its
    number appended to ``stopped``): then it is cancelled, and the downloads save their
    state on the way out."""
    import trio

    from tracker.fetch.run import run_fetch

    failed: list[FetchError | OSError] = []
    with trio.open_signal_receiver(*watched_signals()) as signals:
        if stopped:  # one came before this receiver, its interrupt dropped: nothing starts
            return
        async with trio.open_nursery() as nursery:

            async def watch() -> None:
                async for signum in signals:
                    stopped.append(signum)
                    nursery.cancel_scope.cancel()
                    return

            async def fetch() -> None:
                try:
                    await run_fetch(options)
                except (FetchError, OSError) as exc:  # raised below, not in a group
                    failed.append(exc)
                finally:
                    nursery.cancel_scope.cancel()

            nursery.start_soon(watch)
            nursery.start_soon(fetch)
    if failed and not stopped:
        raise failed[0]


def interrupted(ledger: str, signum: int) -> int:
    """Say what an interrupted fetch leaves for the next run (one line); the exit code."""
    from tracker.fetch.ledger import kept

    done, total = kept(ledger)
    reason = f"interrupted; {done} of {total} bytes kept, run again to resume"
    log_event(log, "error", "fetch_interrupted", reason=reason)
    return 128 + signum
