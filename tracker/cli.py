"""The command line: ``serve``, ``check-config``, ``fetch``, ``verify``, ``attest``, ``keygen``,
``pubkey``, ``--version``.

Exit codes: 0 clean stop, 2 usage or config error, 1 anything else.
"""

from __future__ import annotations

import argparse
import difflib
import logging
import os
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any, NoReturn

from tracker import __version__
from tracker.config.values import VALID_FOR_RANGE
from tracker.core.snapshots import parse_archive_name
from tracker.errors import ArchiveInvalid, ConfigError, ConfigNotReady, interruption_in
from tracker.fetch.flags import (
    accounts_limits_of,
    add_fetch_parser,
    add_log_flags,
    add_prove_accounts_flags,
    count_in,
    duration_in_arg,
    fetch_main,
    spill_warning,
    too_few_keys,
)
from tracker.fetch.keyfiles import add_key_parsers, keygen_main, pubkey_main
from tracker.fetch.statementfiles import (
    add_archives_command,
    add_attest_parser,
    add_trust_flags,
    load_key,
    sign_file,
    trust_of,
    vouch_problem,
)
from tracker.observability.logs import STORE_DEBUG_ENV, log_event, setup_logging

if TYPE_CHECKING:
    import httpx
    from _typeshed import SupportsWrite

    from tracker.config.schema import Config
    from tracker.proof.levels import Voter

# The commands' own libraries are imported where they run: `verify` of a file starts without
# the server's and the config's (trio, httpx, cattrs: a third of a second).

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
#: A path the config names did not answer (a hung or late mount): sysexits.h's EX_TEMPFAIL,
#: which the systemd unit retries, where a config error's 2 is never retried
#: (docs/configuration.md, "Paths on a hung mount").
EXIT_NOT_READY = 75
log = logging.getLogger("tracker.cli")


class CommandParser(argparse.ArgumentParser):
    """An argument parser that takes no flag by a prefix of its name (a mistyped flag is
    named, not guessed) and knows its flags and subcommands."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["allow_abbrev"] = False
        super().__init__(*args, **kwargs)
        self.commands: dict[str, CommandParser] = {}

    def options(self) -> list[argparse.Action]:
        """The actions of the flags (not of the positional arguments)."""
        return [action for action in self._actions if action.option_strings]

    def print_help(self, file: SupportsWrite[str] | None = None) -> None:
        """The help on ``file`` (stdout, flushed): a write that fails is raised, which
        argparse's own drops (``--help > /dev/full`` exited 0 with nothing written); the
        command line says it in one line. Started with stdout closed: nothing to write to,
        as ``print``."""
        out = file if file is not None else sys.stdout
        if out is None:
            return
        out.write(self.format_help())
        if file is None:
            sys.stdout.flush()

    def error(self, message: str) -> NoReturn:
        """A usage error: one line, ``{command}: error: {what}``, and exit 2 (argparse
        printed its usage block first; ``--help`` shows it)."""
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())}\n")


class VersionAction(argparse.Action):
    """``--version``: the program and its version on stdout, flushed (a write that fails is
    raised, as in :meth:`CommandParser.print_help`), then exit 0."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *_args: Any, **_kwargs: Any) -> None:
        print(f"{parser.prog} {__version__}", flush=True)
        parser.exit()


def _config_command(commands: Any, name: str, summary: str, description: str) -> Any:
    """A subcommand that reads a config file: ``serve`` and ``check-config`` take it alike."""
    command = commands.add_parser(name, help=summary, description=description)
    command.add_argument("--config", required=True, metavar="PATH", help="the config file")
    return command


def build_parser() -> CommandParser:
    """The argument parser (argparse exits 2 on usage errors, as the contract wants)."""
    parser = CommandParser(
        prog="snapshot-tracker", description="Find and serve the newest Solana snapshots."
    )
    parser.add_argument("--version", action=VersionAction, help="show the version and exit")
    commands = parser.add_subparsers(dest="command", required=True)
    parser.commands = commands.choices
    serve = _config_command(
        commands,
        "serve",
        "run the tracker",
        "Run the tracker until SIGTERM or SIGINT; SIGHUP reloads the config. "
        "The flags override the config file's keys.",
    )
    for flag, key, metavar in (
        ("--listen", "listen", "ADDR"),
        ("--internal-listen", "internal_listen", "ADDR"),
        ("--max-snapshot-age", "max_snapshot_age", "SLOTS"),
    ):
        serve.add_argument(
            flag,
            type=int if metavar == "SLOTS" else str,
            metavar=metavar,
            help=f"the config's {key} (default: the file's)",
        )
    serve.add_argument(
        "--rpc",
        action="append",
        metavar="URL",
        help="the config's rpc (default: the file's); repeated: the others are "
        "cluster_proof.also_rpc, whose answers of the cluster's votes must agree",
    )
    add_log_flags(serve)
    _config_command(
        commands,
        "check-config",
        "validate a config file",
        "Check a config file: every problem with its key path (exit 2; 75 when every "
        "one is a path that did not answer, a hung mount), warnings on stderr (exit 0).",
    )
    add_fetch_parser(commands)
    verify = add_archives_command(
        commands,
        "verify",
        "check snapshot archives: compression, tar, entries; print their SHA-256",
        "Check local snapshot archives as the cache does before it serves one. "
        "One line per file: 'ok <level> <sha256> <name>' (the level it is proven to, "
        "a full's account storages included, with why it stops there) or "
        "'bad <name>: <reason>'. Exit 0 when every file passes, 1 otherwise.",
        "the archives to check",
    )
    # Named, not looked up: tempfile.gettempdir() writes a probe file there, and every
    # command built this parser (nothing is written outside the configured directories;
    # with no writable /tmp, even --version failed).
    add_prove_accounts_flags(verify, "the system's temporary directory ($TMPDIR, else /tmp)")
    add_trust_flags(verify, count_in)
    add_attest_parser(commands, duration_in_arg(*VALID_FOR_RANGE))
    add_key_parsers(commands)
    return parser


def command_of(argv: Sequence[str]) -> str:
    """The subcommand ``argv`` names ("" none): its first argument that is no flag (the
    program's own flags take no value; tracker/launch.py reads it so too, before this
    module is imported)."""
    return next((arg for arg in argv if not arg.startswith("-")), "")


def unknown_flag(parser: CommandParser, argv: Sequence[str]) -> str:
    """The usage error for the first flag ``argv`` gives that its command does not know
    (with the closest known one), "" when there is none: argparse reports a missing
    required flag first, so ``serve --conifg x`` would only say that ``--config`` is
    required (:func:`flag_error`, which also says whose flag it is not)."""
    return flag_error(parser, argv)[1]


def value_taken_away(argv: Sequence[str]) -> str:
    """The first flag ``argv`` gives the value ``--`` with ``=`` (``--log-level=--``), ""
    when none does: Python 3.11's argparse takes that ``--`` for the end of the flags and
    hands the flag an empty list, its type never called (a traceback, or a good archive
    said bad). Flags after a lone ``--`` are arguments. Pure."""
    for arg in argv:
        if arg == "--":
            return ""
        flag, equals, value = arg.partition("=")
        if flag.startswith("--") and equals and value == "--":
            return flag
    return ""


def flag_error(parser: CommandParser, argv: Sequence[str]) -> tuple[CommandParser, str]:
    """The parser a mistaken flag of ``argv`` is not one of (the program's own before the
    subcommand: ``--verison`` was reported as a missing command, ``--bogus serve`` in
    argparse's words; the subcommand's after it), and the usage error naming it ("": none)."""
    command = command_of(argv)
    at = list(argv).index(command) if command else len(argv)
    own = [flag for action in parser.options() for flag in action.option_strings]
    found = _first_unknown(argv[:at], own, short=True)
    sub = parser.commands.get(command)
    if found or sub is None:
        return parser, found
    known = [flag for action in sub.options() for flag in action.option_strings]
    return sub, _first_unknown(argv[at + 1 :], known)


def _first_unknown(args: Sequence[str], known: Sequence[str], *, short: bool = False) -> str:
    """The usage error for the first flag of ``args`` not in ``known`` (with the closest
    known one), "" when there is none; nothing after ``--``. ``short``: ``-x`` flags too
    (the program's own take no value; after a subcommand ``-5`` may be a flag's value)."""
    for arg in args:
        if arg == "--":
            break
        flag = arg.split("=", 1)[0]
        if flag.startswith("--" if not short else "-") and flag != "-" and flag not in known:
            close = difflib.get_close_matches(flag, known, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            return f"unknown flag {flag}{hint}"
    return ""


def verify_main(args: argparse.Namespace) -> int:
    """``snapshot-tracker verify FILE...``: one line per file on stdout (``ok LEVEL SHA256
    FILE``, the level it was proven to, a full's ``accounts`` included, in
    ``--prove-accounts-memory`` bytes whatever its accounts (the index spills to
    ``--prove-accounts-temp-dir`` past it), with the note that says why it stops lower when it
    could go higher; or ``bad FILE: REASON``); 0 when all pass. With ``--trust-key``, a file
    passes only when enough trusted keys vouch for it in signed statements."""
    from tracker.proof.archive.archivecheck import check_file

    unmet = too_few_keys(args)
    if unmet:  # said before minutes of checks, not as each file's failure after them
        print(f"snapshot-tracker verify: {unmet}", file=sys.stderr)
        return EXIT_USAGE
    trust = trust_of(args)
    limits = accounts_limits_of(args)
    fulls = (parse_archive_name(os.path.basename(path)) for path in args.files)
    spill = spill_warning(limits.temp_dir) if any(n and n.is_full for n in fulls) else ""
    if spill:  # said once, before minutes of checks (only a full's accounts proof spills)
        print(f"snapshot-tracker verify: warning: {spill}", file=sys.stderr)
    failed = False
    for path in args.files:
        try:
            checked = check_file(path, prove_accounts=limits)
            problem = vouch_problem(path, checked, trust, args.attestation)
        except ArchiveInvalid as exc:
            problem = exc.reason
        except OSError as exc:
            problem = exc.strerror or str(exc)
        if problem is None:
            proof = checked.proof
            note = f" ({proof.note})" if proof.note else ""
            print(f"ok {proof.level.label} {checked.sha256} {path}{note}", flush=True)
            continue
        failed = True
        print(f"bad {path}: {problem}", flush=True)
    return EXIT_FAILURE if failed else EXIT_OK


def attest_main(args: argparse.Namespace) -> int:
    """``snapshot-tracker attest FILE... --key KEYFILE``: check each archive and sign what
    it proved beside it; one line per file; 0 when every file was signed, 1 when one was
    not, 2 for an unusable key file."""
    from tracker.proof.accounts.budget import AccountsLimits
    from tracker.proof.archive.archivecheck import check_file

    try:
        signer = load_key(args.key)
    except ValueError as exc:
        print(f"snapshot-tracker attest: --key: {exc}", file=sys.stderr)
        return EXIT_USAGE
    failed = False
    for path in args.files:
        try:
            checked = check_file(path, prove_accounts=AccountsLimits())  # the defaults
            written = sign_file(path, checked, signer, args.valid_for)
        except ArchiveInvalid as exc:
            failed = True
            print(f"bad {path}: {exc.reason}", flush=True)
        except (OSError, ValueError) as exc:
            failed = True
            print(f"bad {path}: {getattr(exc, 'strerror', None) or exc}", flush=True)
        else:
            level = checked.proof.level.label
            print(f"signed {level} {checked.sha256} {written}", flush=True)
    return EXIT_FAILURE if failed else EXIT_OK


def cluster_voter(rpcs: tuple[str, ...], client: httpx.AsyncClient) -> Voter:
    """Who asks ``fetch --rpc``'s votes: the daemon's own (docs/architecture.md, "The
    cluster level"), the first URL as ``rpc`` and the others as ``cluster_proof.also_rpc``,
    whose answers must agree, with the section's defaults (32 blocks, 30 s per archive)."""
    from tracker.config.schema import ClusterProof, Config
    from tracker.proof.cluster.clustervotes import ClusterVotes

    config = Config(rpc=rpcs[0], cluster_proof=ClusterProof(also_rpc=rpcs[1:]))
    return ClusterVotes(lambda: config, client)


def load(args: argparse.Namespace) -> Config:
    """Load the config file and apply the command-line overrides (raises ConfigError)."""
    from tracker.config.loading import load_config
    from tracker.config.overrides import with_overrides

    config = load_config(args.config)
    overrides = {
        "listen": getattr(args, "listen", None),
        "internal_listen": getattr(args, "internal_listen", None),
        "rpc": getattr(args, "rpc", None),
        "max_snapshot_age": getattr(args, "max_snapshot_age", None),
    }
    return with_overrides(config, **{k: v for k, v in overrides.items() if v is not None})


def warnings(config: Config) -> list[str]:
    """What is valid in ``config`` but probably unintended: ``Config.warnings`` and whether
    the other replicas would refuse this one's ``replica_url``."""
    # Imported here: the egress policy is the network layer's, above the config's.
    from tracker.objectstore.replicas import own_url_warning

    own = own_url_warning(config)
    return [*config.warnings, *([own] if own else [])]


def report(exc: ConfigError, path: str) -> int:
    """Print every config problem to stderr; the exit code for a config error (2), or for
    one whose every problem is a path that did not answer (75: the machine is not ready)."""
    ready = not isinstance(exc, ConfigNotReady)
    what = "invalid config" if ready else "not ready, a path it names did not answer"
    print(f"{path}: {what}:", file=sys.stderr)
    for problem in exc.problems:
        print(f"  {problem}", file=sys.stderr)
    return EXIT_USAGE if ready else EXIT_NOT_READY


#: The signals that end a command with one line, with SIGINT, unless they came ignored;
#: ``serve`` holds them while it starts, then its event loop takes them (:class:`StartingSignals`).
STOPPING = (signal.SIGTERM, signal.SIGHUP)
#: Seconds between the raises of a stop that was dropped (:func:`main`).
RAISE_AGAIN = 0.1


def unwinding() -> bool:
    """Whether an interruption is on its way up now: the exception being handled is one,
    holds one (a group, as trio raises it) or came from one (a generator closed, a ``with``
    block left on the way): :func:`tracker.errors.interruption_in`."""
    exc = sys.exc_info()[1]
    return exc is not None and interruption_in(exc) is not None


def in_event_loop() -> bool:
    """Whether trio runs now (``serve``'s daemon, ``fetch``): its own receivers take the
    signals there, and an interrupt raised into its machinery could break it."""
    trio = sys.modules.get("trio")  # never imported here: verify starts without it
    return trio is not None and bool(trio.lowlevel.in_trio_run())


def main(
    argv: Sequence[str] | None = None,
    original: Mapping[signal.Signals, Any] | None = None,
    received: list[int] | None = None,
) -> int:
    """Run the command line; returns the exit code: 128 + the signal's number when SIGINT,
    SIGTERM or SIGHUP ends a command (``serve``: before its event loop runs; one line on
    stderr, no traceback); 1 with one line when its output cannot be written (a full
    disk, a closed pipe: quietly, as other tools).

    ``original``: the handlers the process started with, and ``received``: the signals
    recorded so far, when :mod:`tracker.launch` holds the signals already (None: those in
    place now, none)."""
    received = [] if received is None else received
    alarm = signal.getsignal(signal.SIGALRM)
    alarm = signal.SIG_DFL if alarm is None else alarm  # None: set outside Python

    def stop(signum: int, frame: object) -> None:
        received.append(signum)
        # Raised inside a callback or a __del__ (a weakref's, numba's object cache's, an
        # import lock's), the interpreter drops it and the work goes on: a verify of 3,000
        # files ran to its end after SIGTERM. So it is raised again every RAISE_AGAIN
        # seconds until it lands, never while it is on its way up (its cleanups run whole)
        # nor into trio's event loop (``in_event_loop``).
        signal.signal(signal.SIGALRM, again)
        signal.setitimer(signal.ITIMER_REAL, RAISE_AGAIN, RAISE_AGAIN)
        raise KeyboardInterrupt

    def again(signum: int, frame: object) -> None:
        if received and not unwinding() and not in_event_loop():
            raise KeyboardInterrupt

    def quiet() -> None:  # the stop has landed: nothing is raised again
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, alarm)

    if original is None:
        original = {signum: signal.getsignal(signum) for signum in (*STOPPING, signal.SIGINT)}
    # SIGINT too (recorded, so that an interrupt a library swallowed still ends the command
    # as interrupted, below); one that came ignored stays ignored: SIGINT in a background
    # job of a script, SIGHUP under nohup
    watched = tuple(
        signum for signum in (*STOPPING, signal.SIGINT) if original[signum] is not signal.SIG_IGN
    )
    previous = {signum: original[signum] for signum in watched}

    def interrupted() -> int:
        for signum in watched:  # ending: a second signal changes nothing of what is said
            signal.signal(signum, signal.SIG_IGN)
        quiet()  # after: a signal meanwhile arms the raises again
        print("snapshot-tracker: interrupted", file=sys.stderr)
        return 128 + (received[0] if received else signal.SIGINT)

    given = argv if argv is not None else sys.argv[1:]
    serving = command_of(given) == "serve"
    try:
        for signum in watched:
            # serve's SIGHUP is a reload: until its config is read (StartingSignals holds it
            # from then on) it changes nothing; it ended serve while its command line parsed
            hold = serving and signum == signal.SIGHUP
            signal.signal(signum, _before_reading if hold else stop)
        code = _run(given, watched, stop, received)
        if sys.stdout is not None:  # None: started with stdout closed (print writes nothing)
            sys.stdout.flush()  # a write that fails is said here, not as a traceback at exit
        if received and code != 128 + received[0]:
            # its KeyboardInterrupt was dropped (``stop``) and the work ended before it was
            # raised again: the command was interrupted all the same (unless it said so
            # itself: fetch's ``fetch_interrupted`` line, its exit code 128 + the signal)
            return interrupted()
        return code
    except KeyboardInterrupt:
        return interrupted()
    except BrokenPipeError:
        _stdout_to_devnull()  # the reader left (``| head``): nothing more to say
        return EXIT_FAILURE
    except OSError as exc:
        _stdout_to_devnull()
        what = exc.strerror or str(exc)
        print(
            f"snapshot-tracker: {f'{exc.filename}: ' if exc.filename else ''}{what}",
            file=sys.stderr,
        )
        return EXIT_FAILURE
    finally:
        quiet()
        for signum, handler in previous.items():
            # the process itself ends now: a signal then changes nothing of what was done
            # or said (killed by it, the exit status lied and no line said why)
            signal.signal(signum, handler if argv is not None else signal.SIG_IGN)


def _before_reading(signum: int, frame: object) -> None:
    """``serve``'s SIGHUP before its config is read: a reload of a file not read yet is
    what the start does anyway."""


def _stdout_to_devnull() -> None:
    """Point stdout at /dev/null: what it still buffers cannot be written either, and the
    interpreter's last flush would print a traceback of its own."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass  # no stdout to point anywhere (closed, or None): nothing will be flushed to it


class StartingSignals:
    """``serve``'s signals until the daemon's own receiver takes them (its ``_signals``
    task, tracker/service.py): until its event loop runs, SIGINT and SIGTERM end the
    command as interrupted (``stop``: nothing is started that a stop would end); from then
    on every signal is held, and the daemon handles what it holds first, as if it came
    then (a stop is its graceful stop). A SIGHUP is held throughout: a reload of the file
    just read, which may have changed meanwhile. Once the daemon has stopped, what arrives
    is held and changes nothing (the process is ending)."""

    def __init__(self, stop: Callable[[int, object], None]) -> None:
        self._stop = stop
        #: The signals held, in the order they came.
        self.held: list[int] = []
        #: Set as the daemon's event loop starts.
        self.looping = False

    def __call__(self, signum: int, frame: object) -> None:
        # held first: a stop whose interrupt the interpreter drops (``main``) is the
        # daemon's first graceful stop, not lost
        self.held.append(signum)
        if signum != signal.SIGHUP and not self.looping:
            self._stop(signum, frame)


def _run(
    argv: Sequence[str],
    watched: Sequence[signal.Signals],
    stop: Callable[[int, object], None],
    received: list[int],
) -> int:
    parser = build_parser()
    whose, unknown = flag_error(parser, argv)
    if unknown:
        whose.error(unknown)
    flag = value_taken_away(argv)
    if flag:
        (parser.commands.get(command_of(argv)) or parser).error(
            f"argument {flag}: expected one argument"
        )
    args = parser.parse_args(argv)
    starting = StartingSignals(stop)
    if args.command == "serve":
        for signum in watched:  # the daemon stops gracefully, or reloads, on its own
            signal.signal(signum, starting)
    if args.command == "fetch":
        # Its usage errors print fetch's usage, not the top level's.
        voter_for = partial(cluster_voter, tuple(args.rpc)) if args.rpc else None
        return fetch_main(args, parser.commands["fetch"], voter_for, received)
    if args.command == "verify":
        return verify_main(args)
    if args.command == "attest":
        return attest_main(args)
    if args.command == "keygen":
        return keygen_main(args)
    if args.command == "pubkey":
        return pubkey_main(args)
    try:
        config = load(args)
    except ConfigError as exc:
        return report(exc, args.config)
    if args.command == "check-config":
        for warning in warnings(config):
            print(f"{args.config}: warning: {warning}", file=sys.stderr)
        from tracker.config.warnings import proof_settings

        settings = proof_settings(config)
        print(f"{args.config}: {f'{settings}: ' if settings else ''}OK")
        return EXIT_OK
    return serve(args, config, starting)


def _end_held_stop() -> None:
    """The stop, past its grace, is held by calls a hung mount holds (``stop_held`` logged):
    the log written out, the process ends with 0 as a stop does (what those calls left, a
    temp file, goes at the next start). A thread in such a call is no cancellation point,
    and the interpreter's exit would wait for it as long as the mount hangs."""
    logging.shutdown()
    os._exit(EXIT_OK)


def serve(args: argparse.Namespace, config: Config, starting: StartingSignals) -> int:
    """Run the tracker until it is stopped; 0, or 1 when it could not start (75: a path it
    reads at the start did not answer, retried by systemd). ``starting``
    holds the signals until the daemon takes them."""
    import trio

    from tracker.memory import freeze_startup_objects, limit_malloc_arenas

    store_debug = os.environ.get(STORE_DEBUG_ENV) == "1"
    setup_logging(args.log_level, args.log_format, store_debug=store_debug)
    limit_malloc_arenas()
    for warning in warnings(config):
        log_event(log, "warning", "config_warning", problem=warning)
    from tracker.config.warnings import proof_settings

    # what check-config shows: in a container, whether its limits sized the proofs
    settings = proof_settings(config)
    if settings:
        log_event(log, "info", "accounts_proofs", settings=settings)
    try:
        # Imported here: `fetch` and `check-config` start without the server's libraries.
        from tracker.service import run_tracker

        freeze_startup_objects()
        starting.looping = True
        trio.run(
            partial(
                run_tracker,
                config,
                partial(load, args),
                held=starting.held,
                stop_held=_end_held_stop,
            )
        )
    except OSError as exc:
        # Typically a listener that cannot be bound: one line, not a traceback.
        log_event(log, "error", "startup_failed", error=str(exc))
        return EXIT_FAILURE
    except ConfigNotReady as exc:
        # A path read again at the start did not answer (the cache directory's opening, the
        # signing key): the machine is not ready, and systemd retries (docs/configuration.md).
        log_event(log, "error", "startup_failed", error="; ".join(exc.problems))
        return EXIT_NOT_READY
    except ConfigError as exc:
        # The listeners systemd passed (LISTEN_FDS) cannot be used: a usage error, as the
        # config's are (a restart would meet it again).
        log_event(log, "error", "startup_failed", error="; ".join(exc.problems))
        return EXIT_USAGE
    return EXIT_OK
