"""Config values that name files and directories, checked when the config is loaded.

Relative paths are resolved against the config file's directory and stored absolute. Files
the tracker reads (TLS files, secrets) must be readable UTF-8 text now; a secret file's text
is kept (:attr:`FileChecks.secrets`) for the section that uses it
(:mod:`tracker.config.sections`).
"""

from __future__ import annotations

import enum
import os
import ssl
import stat
from functools import partial
from typing import TYPE_CHECKING

import attrs

from tracker.config import values
from tracker.config.bounded import LOOK_BOUND, answered, no_answer
from tracker.config.targetfile import is_host_port, read_target_file
from tracker.core.cachedirs import unusable_directory
from tracker.core.smallfiles import read_small, read_small_file
from tracker.errors import ConfigError, ConfigNotReady, ProbeError, StatementInvalid
from tracker.observability.redact import redact_url

if TYPE_CHECKING:
    from tracker.config.schema import Attest
    from tracker.proof.statements import Signer


class FileChecks:
    """The checks of one config file's paths; holds the secrets read on the way."""

    def __init__(self, base_dir: str) -> None:
        self.base_dir = base_dir
        #: Secret files' texts by absolute path (one trailing newline dropped).
        self.secrets: dict[str, str] = {}
        #: What each ``local_targets`` directory was found to be, once per load (the
        #: warnings and the checks across sections read it too: :class:`PathLooks`).
        self.looks = PathLooks()

    def resolve(self, value: object) -> str:
        """A string path, absolute (relative to the config's directory); ``""`` stays.
        ValueError for a leading ``~`` (not the home directory here), and for one no file
        system call can take (a NUL, a lone surrogate of a
        JSON escape): ``os.path.exists`` says False for it where ``open`` raises, so it
        passed every check here and broke the daemon at its first use."""
        text = values.string(value)
        if "\0" in text:
            raise ValueError("a path cannot hold a NUL character")
        try:
            os.fsencode(text)
        except UnicodeEncodeError:
            raise ValueError("a path must be text the file system can hold (UTF-8)") from None
        if text.startswith("~"):
            # Only a shell expands it: as a relative path, ``~/cache`` made a directory named
            # "~" beside the config file, and a targets file there was never found (a
            # missing one is only a warning: docs/configuration.md).
            raise ValueError(
                f"{text!r}: a leading '~' is not expanded (no shell reads this file): write"
                f" the path absolute, or './{text}' for a name that starts with '~'"
            )
        return os.path.abspath(os.path.join(self.base_dir, text)) if text else ""

    def readable_file(self, value: object) -> str:
        """A file the tracker reads (TLS): it must be readable UTF-8 text now."""
        path = self.resolve(value)
        if path:
            self._text(path)
        return path

    def secret_file(self, value: object) -> str:
        """A file holding a secret: read now, its text kept in :attr:`secrets`."""
        path = self.resolve(value)
        if path:
            text = self._text(path)
            # Editors end files with a newline that is not part of the secret: drop one.
            self.secrets[path] = text[:-2] if text.endswith("\r\n") else text.removesuffix("\n")
        return path

    def _text(self, path: str) -> str:
        """:func:`read_text` of ``path``, within the load's bound: a file on a hung mount is
        an error (a TLS file or a secret is needed now, and a reload refused keeps the one
        in force: docs/configuration.md, "Paths on a hung mount")."""
        text = answered(("read", path), partial(read_text, path), self.looks.bound)
        if text is None:
            raise ValueError(self.looks.no_answer(path))
        return text

    def signing_key(self, value: object) -> str:
        """``attest.key``: a Solana keypair file that signs statements (:func:`load_signer`),
        read within the load's bound (one on a hung mount is an error, as :meth:`_text`)."""
        path = self.resolve(value)
        if not path:
            raise ValueError("must not be empty")
        if answered(("key", path), partial(load_signer, path), self.looks.bound) is None:
            raise ValueError(self.looks.no_answer(path))
        return path

    def targets_file(self, value: object) -> str:
        """``file_targets.path``: may be missing or not answer (warnings), else must read as
        targets."""
        path = self.resolve(value)
        if not path:
            raise ValueError("must not be empty")
        # A missing file is only a warning (it is re-read every scrape and may appear later),
        # one on a hung mount too; one that exists must pass the scraper's own reader now, so
        # check-config catches it.
        error = self.looks.targets(path).error
        if error:
            raise ValueError(error)
        return path

    def known_source(self, value: object) -> str:
        """A target URL (as ``http_targets`` writes them), ``host:port`` (every target at that
        address) or a path (``local_targets``, resolved as they are)."""
        text = values.string(value)
        if text.startswith(("/", "./", "../")):
            return self.resolve(text)
        if "://" in text:
            return values.http_target(text)
        if not is_host_port(text):
            raise ValueError(
                "expected a target URL (http://host:port), host:port or a path (/..., ./...),"
                f" got {redact_url(text)!r}"
            )
        return text

    def directory(self, value: object) -> str:
        """A directory (``local_targets``): a directory now, or nothing there yet. A missing
        one is only a warning (:mod:`tracker.config.warnings`), as a missing targets file
        is: a ledger on a mount that comes up after the tracker at boot is listed every
        scrape and picked up once it appears, where a refusal (exit 2, which systemd's
        ``RestartPreventExitStatus=2`` never retries) left the fleet without a tracker until
        someone started it again. Something else at the path is an error."""
        path = self.resolve(value)
        if not path:
            raise ValueError("must not be empty")
        # Looked at in a thread within a bound (:func:`look_at`): a directory on a hung
        # mount is a warning too, where a stat held check-config, serve and every reload
        # (docs/configuration.md, the ``local_targets.paths`` row).
        if self.looks.look(path).kind is Seen.OTHER:
            raise ValueError(f"not a directory: {path!r}")
        return path

    def cache_dir(self, value: object) -> str:
        """The disk cache's directory (or the proofs' spill directory): may be missing when it
        can be created, must be writable, never something else. One that does not answer
        within the load's bound (a hung mount) is an error too: ``serve`` would wait for it
        at its start (its cache is opened there, on the event loop), and a reload refused
        keeps the directory in force (docs/configuration.md, "Paths on a hung mount")."""
        path = self.resolve(value)
        if not path:
            return path
        problem = answered(("usable", path), partial(unusable_directory, path), self.looks.bound)
        if problem is None:
            raise ValueError(self.looks.no_answer(path))
        if problem:
            raise ValueError(problem)
        return path


class Seen(enum.Enum):
    """What a path was found to be (:func:`look_at`)."""

    DIRECTORY = "directory"
    #: Nothing there (a link to nothing too), or not to be looked at (``os.path.exists``
    #: says False for both): a mount not up yet.
    MISSING = "missing"
    OTHER = "other"
    #: No answer within :data:`LOOK_BOUND` (a hung NFS or FUSE mount).
    HUNG = "hung"


@attrs.frozen
class Look:
    """What a path is, and its real path ("" unless it answered)."""

    kind: Seen
    real: str = ""


@attrs.frozen
class TargetsRead:
    """``file_targets.path`` as a load found it: the hosts it lists, or why none."""

    hosts: tuple[str, ...] = ()
    missing: bool = False
    #: No answer within the load's bound (a hung mount): not read.
    hung: bool = False
    #: Why it does not read as targets (the scrape's reader's one line).
    error: str = ""


def seen(mode: int | None) -> Seen:
    """What a path whose stat gave ``mode`` is (None: the stat failed, as for a path that
    is not there). Pure."""
    if mode is None:
        return Seen.MISSING
    return Seen.DIRECTORY if stat.S_ISDIR(mode) else Seen.OTHER


def _look(path: str) -> Look:
    mode: int | None = None
    try:
        try:
            mode = os.stat(path).st_mode
        except (OSError, ValueError):  # what makes ``os.path.exists`` say False
            mode = None
        # The real path walks the components the stat just walked (the kernel has them)
        # and is taken once here for the cache directory's check (sections.local_problems).
        return Look(seen(mode), os.path.realpath(path))
    except (OSError, ValueError):  # (realpath: a loop of links is an answer too)
        return Look(seen(mode))


def look_at(path: str, bound: float = LOOK_BOUND) -> Look:
    """What ``path`` is (one ``os.stat``, following links) and its real path, looked at in a
    daemon thread within ``bound`` seconds (:func:`~tracker.config.bounded.answered`: a path
    whose look still hangs from an earlier call answers at once); :attr:`Seen.HUNG` when it
    did not answer."""
    return answered(("look", path), partial(_look, path), bound) or Look(Seen.HUNG)


def _read_targets(path: str) -> TargetsRead:
    if not os.path.lexists(path):
        return TargetsRead(missing=True)
    try:
        return TargetsRead(hosts=tuple(read_target_file(path)))
    except ProbeError as exc:
        return TargetsRead(error=str(exc))


class PathLooks:
    """The looks of one load: each path looked at once (:func:`look_at`), whoever asks."""

    def __init__(self, bound: float = LOOK_BOUND) -> None:
        self.bound = bound
        self._seen: dict[str, Look] = {}
        self._targets: dict[str, TargetsRead] = {}
        #: The lines of the paths whose no answer is an error of this load (not a warning):
        #: a load refused for those only is not ready, not wrong (:func:`not_ready`).
        self.unanswered: set[str] = set()

    def no_answer(self, path: str) -> str:
        """The error line of ``path``, which did not answer within the bound, kept in
        :attr:`unanswered`."""
        line = no_answer(path, self.bound)
        self.unanswered.add(line)
        return line

    def look(self, path: str) -> Look:
        """What ``path`` is, looked at on the first ask of this load."""
        if path not in self._seen:
            self._seen[path] = look_at(path, self.bound)
        return self._seen[path]

    def targets(self, path: str) -> TargetsRead:
        """The ``file_targets`` file at ``path``, read on the first ask of this load within
        the bound (its check and the warnings share one read)."""
        if path not in self._targets:
            read = answered(("targets", path), partial(_read_targets, path), self.bound)
            self._targets[path] = read or TargetsRead(hung=True)
        return self._targets[path]


#: The largest file a config names that is read whole (a secret, a CA bundle of TLS).
MAX_NAMED_FILE = 4 * 1024 * 1024


def read_text(path: str) -> str:
    """The file's whole text, verbatim (secrets: no ``\r`` -> ``\n``). Raises ValueError
    saying why it cannot be read: a regular file only, opened without blocking (a FIFO at
    the path held ``check-config``, ``serve`` and a reload), at most :data:`MAX_NAMED_FILE`."""
    try:
        data = read_small(path, MAX_NAMED_FILE, follow=True)
    except OSError as exc:
        raise ValueError(f"cannot read {path!r}: {exc.strerror}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"cannot read {path!r}: not UTF-8 text") from None


#: The environment variable systemd sets to the directory of a service's credentials
#: (``LoadCredential=``; systemd/README.md, "The signing key under DynamicUser=").
CREDENTIALS_ENV = "CREDENTIALS_DIRECTORY"


def load_signer(path: str) -> Signer:
    """The signer of the keypair file at ``path``. Raises ValueError saying why not: not a
    regular file (no link followed, nothing that could block: :func:`read_small_file`),
    readable by others than its owner (a key must be mode 0600), not owned by this process's
    user (:func:`key_file_problem`: a credential systemd passed is judged by its rules), or
    not a keypair (the key's bytes are never shown)."""
    # Imported where a key is read: a tracker that signs nothing never loads cryptography.
    from tracker.proof.statements import MAX_KEYPAIR, Signer

    try:
        data, info = read_small_file(path, MAX_KEYPAIR)
    except OSError as exc:
        raise ValueError(f"cannot read {path!r}: {exc.strerror}") from None
    credentials = os.environ.get(CREDENTIALS_ENV, "")
    problem = key_file_problem(path, info.st_mode, info.st_uid, os.geteuid(), credentials)
    if problem:
        raise ValueError(problem)
    try:
        return Signer.from_keypair_json(data)
    except StatementInvalid as exc:
        raise ValueError(f"{path!r}: {str(exc).removeprefix('key file: ')}") from None


def key_file_problem(path: str, mode: int, uid: int, euid: int, credentials: str) -> str | None:
    """Why the key file at ``path`` (absolute; its ``mode`` and owner ``uid``) must not be
    used by a process running as ``euid``, None when it may. Pure.

    A key of the operator's own is mode 0600 (nothing for group and others) and owned by the
    user that reads it. A file directly in ``credentials`` (``$CREDENTIALS_DIRECTORY``: systemd
    passed it with ``LoadCredential=``) is held to systemd's rules instead: systemd copies it
    read-only to a file system only the service sees, mode 0400 owned by the service's user
    (ramfs), or owned by root with an ACL that lets that user read (tmpfs: the group bits
    then show the ACL's mask, 0440). So there the owner may also be root and the group may
    read, but nobody else may write or read: a key another user can change or read is
    refused there too."""
    perms = stat.S_IMODE(mode)
    in_credentials = bool(credentials) and os.path.dirname(path) == os.path.abspath(credentials)
    if in_credentials:
        if perms & 0o027:
            return (
                f"{path!r} has mode {perms:04o}; a credential holding a signing key must be "
                "0400 or 0440 (as systemd's LoadCredential= makes it)"
            )
        if uid not in (euid, 0):
            return f"{path!r} is owned by uid {uid}, not the tracker's user or root"
        return None
    if perms & 0o077:
        return f"{path!r} has mode {perms:04o}; a signing key must be 0600"
    if uid != euid:
        return f"{path!r} is owned by uid {uid}, not the tracker's user"
    return None


def signing(attest: Attest | None) -> tuple[Signer | None, float]:
    """The daemon's signer of ``attest`` (its key loaded now: at start and on every reload)
    and how long its statements hold; ``(None, 0)`` without ``attest``. ConfigError, naming
    ``attest.key``, when the key can no longer be read (changed since the config was
    checked) or does not answer within :data:`~tracker.config.bounded.LOOK_BOUND` (a hung
    mount; blocking meanwhile: call it in a worker thread where an event loop runs)."""
    if attest is None:
        return None, 0.0
    try:
        # within the load's bound, as the load read it: a key on a hung mount held the start,
        # and a reload (docs/configuration.md, "Paths on a hung mount")
        signer = answered(("key", attest.key), partial(load_signer, attest.key))
    except ValueError as exc:
        raise ConfigError([f"attest.key: {exc}"]) from None
    if signer is None:  # the machine is not ready, not the config (exit 75 at start)
        raise ConfigNotReady([f"attest.key: {no_answer(attest.key, LOOK_BOUND)}"])
    return signer, attest.valid_for


def tls_context(ca_file: str, cert_file: str, key_file: str, insecure: bool) -> ssl.SSLContext:
    """The client TLS context of a ``tls_config`` (the system's CAs without ``ca_file``). A
    key that needs a password is refused, never prompted for (a daemon has no terminal).
    Raises ssl.SSLError or OSError for files that do not load."""
    ctx = ssl.create_default_context(cafile=ca_file or None)
    if cert_file:
        ctx.load_cert_chain(cert_file, key_file or None, password=_no_password)
    if insecure:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def loaded_tls(
    ca_file: str, cert_file: str, key_file: str, looks: PathLooks | None = None
) -> ssl.SSLContext:
    """:func:`tls_context` of the config's check (verifying), built in a thread within the
    bound of ``looks`` (:data:`~tracker.config.bounded.LOOK_BOUND`; the ssl module opens the
    files with a plain, blocking ``open``): ValueError naming the first file when the files
    did not answer (a hung mount), kept in ``looks``' :attr:`PathLooks.unanswered`."""
    looks = looks if looks is not None else PathLooks()
    files = ("tls", ca_file, cert_file, key_file)
    built = answered(files, partial(tls_context, ca_file, cert_file, key_file, False), looks.bound)
    if built is None:
        raise ValueError(looks.no_answer(ca_file or cert_file))
    return built


def _no_password() -> str:
    raise ValueError("the key needs a password (not supported)")
